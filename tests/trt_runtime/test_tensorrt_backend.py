"""The TensorRT backend: which engines it picks, which it refuses (pure logic, on manifest records), that it is
refused here with its reason, and (``gpu``) that engines built on a GPU give the ONNX Runtime results."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from trt_runtime.backends import choose
from trt_runtime.backends.tensorrt import (
    TensorRT,
    engine_mismatch,
    format_compute_capability,
    gpu_info,
    parse_compute_capability,
    select_engines,
    variant_name,
)
from trt_runtime.errors import RuntimeInputError
from trt_runtime.manifest import load_manifest


def record(version="10.16.1.11", cc="9.0", gpu="NVIDIA H100 80GB HBM3", level="NONE") -> dict:
    return {
        "backend": "tensorrt",
        "tensorrt": {
            "version": version,
            "gpu": gpu,
            "compute_capability": cc,
            "hardware_compatibility_level": level,
            "version_compatible": False,
        },
    }


def check(rec, version="10.16.1.11", cc=(9, 0)):
    return engine_mismatch(rec, trt_version=version, compute_capability=cc, root="ART", name="tensorrt-sm90")


def test_variant_names_and_compute_capabilities():
    assert variant_name((9, 0)) == "tensorrt-sm90"
    assert variant_name((8, 6)) == "tensorrt-sm86"
    assert variant_name((12, 0)) == "tensorrt-sm120"
    for cc in ((9, 0), (8, 9), (10, 3), (12, 1)):
        assert parse_compute_capability(format_compute_capability(cc)) == cc


def test_engines_run_only_where_they_were_built():
    assert check(record()) is None
    version = check(record(), version="10.16.0.72")
    assert "TensorRT 10.16.1.11, and this process has TensorRT 10.16.0.72" in version
    assert "Rebuild them here with `leap-export build ART --out ART --backend tensorrt --force`" in version
    gpu = check(record(), cc=(8, 9))
    assert "compute capability 9.0 (NVIDIA H100 80GB HBM3), and this GPU is 8.9" in gpu
    assert "--backend tensorrt --force" in gpu
    both = check(record(), version="11.4.0.106", cc=(8, 0))
    assert "TensorRT 11.4.0.106" in both and "this GPU is 8.0" in both
    assert check(record(level="AMPERE_PLUS"), cc=(8, 6)) is None
    assert "8.0 and later" in check(record(level="AMPERE_PLUS"), cc=(7, 5))
    assert "has no TensorRT build record" in check({"backend": "tensorrt"})


def test_version_compatible_records_still_need_the_same_version():
    rec = record()
    rec["tensorrt"]["version_compatible"] = (
        True  # leap-export never builds one; a record saying so is not trusted
    )
    assert "this process has TensorRT 10.16.2.1" in check(rec, version="10.16.2.1")


def _with_engines(tiny_artifacts, tmp_path, **variants):
    folder = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], folder)
    manifest = load_manifest(folder)
    fp32 = manifest.variant("fp32")
    for name, rec in variants.items():
        manifest.data["variants"][name] = {**fp32, **rec}
    manifest.save()
    return load_manifest(folder)


def test_pick_takes_this_gpus_engines_and_names_the_others(tiny_artifacts, tmp_path):
    manifest = _with_engines(
        tiny_artifacts,
        tmp_path,
        **{"tensorrt-sm90": record(), "tensorrt-sm89": record(cc="8.9", gpu="NVIDIA L4")},
    )
    assert select_engines(manifest, (9, 0)).name == "tensorrt-sm90"
    assert select_engines(manifest, (8, 9)).name == "tensorrt-sm89"
    with pytest.raises(RuntimeInputError) as e:
        select_engines(manifest, (8, 0))
    message = str(e.value)
    assert "has TensorRT engines only for other GPUs" in message
    assert "tensorrt-sm90 (NVIDIA H100 80GB HBM3, compute capability 9.0)" in message
    assert "this GPU has compute capability 8.0" in message
    assert f"`leap-export build {manifest.root} --out {manifest.root} --backend tensorrt`" in message


def test_pick_without_engines_says_how_to_build_them(tiny_artifacts):
    manifest = load_manifest(tiny_artifacts["bert"])
    with pytest.raises(RuntimeInputError, match="has no TensorRT engines. Build engines on the GPU"):
        select_engines(manifest, (9, 0))
    # an ONNX variant is never TensorRT's to run
    assert "tensorrt runs tensorrt builds" in TensorRT.cannot_run(manifest, manifest.variant_spec("fp32"))


def test_named_tensorrt_is_refused_here_and_auto_passes_over_it(tiny_artifacts, tmp_path):
    manifest = _with_engines(tiny_artifacts, tmp_path, **{"tensorrt-sm90": record()})
    why = TensorRT.unavailable()
    assert why and "TensorRT is not installed" in why  # this machine: no TensorRT, no CuPy, no GPU
    with pytest.raises(RuntimeInputError) as e:
        choose(manifest, None, "tensorrt")
    assert str(e.value).startswith("backend 'tensorrt' cannot run here: TensorRT is not installed")
    cls, spec, reason = choose(manifest, None, "auto")
    assert (cls.name, spec.name) == ("onnxruntime-cpu", "fp32")
    assert "not tensorrt: TensorRT is not installed" in reason


def test_module_imports_without_tensorrt_or_cupy():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorrt', 'cupy', 'polygraphy', 'torch'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import trt_runtime.backends.tensorrt as t\n"
        "import leap_export.tensorrt_build\n"
        "print(t.TensorRT.unavailable())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TensorRT" in proc.stdout


# -- on a GPU with TensorRT (skipped here) ---------------------------------------------------------------------


@pytest.fixture
def gpu_engines(tiny_artifacts, tmp_path):
    """Engines of the tiny BERT build, built on this GPU from its fp32 graphs (the fp16 variant may not exist)."""
    why = TensorRT.unavailable()
    if why:
        pytest.skip(f"needs TensorRT, CuPy and an NVIDIA GPU: {why}")
    pytest.importorskip("polygraphy", reason="needs Polygraphy (pip install 'leap-export[gpu]')")
    from leap_export.tensorrt_build import build_engines

    folder = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], folder)
    build_engines(
        folder,
        source_variant="fp32",
        profiles={"max_batch": 16, "opt_batch": 4},
        engine_cache=tmp_path / "engines",
        progress=False,
    )
    return folder


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_engines_match_onnx_runtime(gpu_engines, sentences, cuda_graphs):
    from trt_runtime import EarlyExitEncoder

    cpu = EarlyExitEncoder(gpu_engines, backend="onnxruntime-cpu", theta=0.5)
    trt = EarlyExitEncoder(
        gpu_engines, backend="tensorrt", theta=0.5, backend_options={"cuda_graphs": cuda_graphs}
    )
    assert trt.backend == "tensorrt" and trt.variant.startswith("tensorrt-sm")
    for _ in range(2):  # the second pass replays the CUDA graphs
        a = cpu.encode_with_exits(sentences, batch_size=4)
        b = trt.encode_with_exits(sentences, batch_size=4)
        assert (np.sum(a.embeddings * b.embeddings, axis=1) > 0.999).all()
        # a score at theta may round the other way in another kernel
        assert (np.asarray(a.exit_layers) == np.asarray(b.exit_layers)).mean() >= 0.9
    full = trt.monolithic_runner()
    ids = np.array([[101, 2023, 102, 0]], dtype=np.int32)
    mask = np.array([[1, 1, 1, 0]], dtype=np.int32)
    pooled = full.infer({"input_ids": ids, "attention_mask": mask})["pooled"]
    ref = cpu.monolithic_runner().infer({"input_ids": ids, "attention_mask": mask})["pooled"]
    assert np.allclose(pooled, ref, atol=1e-3)
    # encode cuts its batches to the engines' largest batch (16 here); a padded batch beyond the profile
    # given to the runner directly is refused
    assert len(trt.encode(sentences * 2, batch_size=24)) == 2 * len(sentences)
    big = np.ones((24, 4), dtype=np.int32)
    with pytest.raises(RuntimeInputError, match="outside the engine's optimisation profile"):
        full.infer({"input_ids": big, "attention_mask": big})


@pytest.mark.gpu
def test_device_compaction_matches_numpy():
    """CuPy and a GPU are enough (no TensorRT): the compaction the TensorRT backend runs between engines."""
    from trt_runtime.backends.cuda_events import cupy_missing

    why = cupy_missing() or gpu_info(0)[1]
    if why:
        pytest.skip(f"needs CuPy and an NVIDIA GPU: {why}")
    import cupy

    from trt_runtime.backends.tensorrt import CupyOps
    from trt_runtime.chain import NumpyOps

    ops = CupyOps(cupy.cuda.Stream(non_blocking=True))
    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    rows = np.array([0, 2, 4])
    got = ops.to_host(ops.compact(ops.from_host(x), rows, 1, 4))
    assert np.array_equal(got, NumpyOps.compact(x, rows, 1, 4))
    bias = x[:, None, None, :, 0]
    got = ops.to_host(ops.compact(ops.from_host(bias), rows, -1, 4))
    assert np.array_equal(got, NumpyOps.compact(bias, rows, -1, 4))
