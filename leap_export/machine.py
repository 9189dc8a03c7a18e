"""What machine a measurement ran on: the CPU and the SIMD features that change ONNX Runtime's kernels.

ONNX Runtime picks its int8 (and some fp32) kernels by CPU feature: u8s8 int8 matrix products take the
VNNI instructions where the CPU has them (AVX-512 VNNI or AVX-VNNI) and a different, saturating path
where it has only AVX2. A figure measured on one CPU is therefore reported with the features it ran on.
"""

from __future__ import annotations

import platform
from typing import Any

# /proc/cpuinfo flags that select kernels, in the order they are reported
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_info() -> dict[str, Any]:
    """``model`` (the CPU's name), ``simd`` (the kernel-selecting flags it has), ``int8_path`` (VNNI or AVX2)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in SIMD_FLAGS if f in flags]
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return {
        "model": model,
        "simd": simd,
        "int8_path": "VNNI" if vnni else ("AVX2, no VNNI" if "avx2" in flags else "no AVX2"),
    }


def describe_cpu(info: dict[str, Any] | None = None) -> str:
    """One phrase naming a CPU for a report or a doc: ``AMD EPYC (AVX2, AVX-512, VNNI)``."""
    info = info or cpu_info()
    simd = info["simd"]
    parts = ["AVX2"] if "avx2" in simd else []
    if "avx512f" in simd:
        parts.append("AVX-512")
    parts.append("VNNI" if info["int8_path"] == "VNNI" else "no VNNI")
    return f"{info['model']} ({', '.join(parts)})"
