"""How accurate and how fast each way of quantising a build's full graph to int8 is, on this CPU.

    python benchmarks/int8_options.py ARTIFACTS --work DIR [--options a,b,...] [--no-timing]
        [--save DIR] [--compare DIR] [--json OUT.json]

ONNX Runtime's int8 kernels take different paths on CPUs with and without VNNI: without it, the u8 x s8
product adds pairs of products in int16 with saturation, so a quantised graph can give different results
on two x86-64 CPUs. This script quantises ``full.onnx`` of an fp32 build each way in ``--options`` (into
``--work``), embeds the probe set (the built-in sample sentences and two truncated long texts) and the 318
diagnose sentences at batch 1 and batch 16, and prints per option the minimum cosine to the fp32 graph at
batch 1 (``b1``), at batch 16 (``b16``: dynamic activation scales are per batch), between its own batch-1
and batch-16 results (``b1~b16``), and, unless ``--no-timing``, its batch-1 and batch-32 latency as a ratio to
fp32 (medians over round-robin repeats in this process).

To compare CPUs, run it with ``--save DIR`` on one machine (or under an emulated CPU, e.g.
``qemu-x86_64 -cpu EPYC-Rome``, with ``--no-timing``) and with ``--compare DIR`` on another: the
``same`` column is the largest absolute difference of the embeddings between the two.

The options (``shipped`` is what ``leap-export build --precision int8`` does):
``s8``: QInt8 per-channel weights (the shipped option before it changed); ``s8_rr``: the same with
``reduce_range`` (7-bit weights); ``u8``: QUInt8 per-channel weights; ``s8_pt``: QInt8 per-tensor weights;
``s8_xdown``: ``s8`` with the feed-forward down-projections kept float32; ``shipped``: ``s8_rr`` with the
down-projections kept float32; ``u8_xdown``: ``u8`` with them kept float32; ``qdq``: static S8S8 QDQ
(weights per channel, activations calibrated on the diagnose sentences).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _checks import check_inputs  # benchmarks/, on sys.path when run as a script

DYNAMIC = {
    "s8": {"weight_type": "QInt8", "per_channel": True},
    "s8_rr": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
    "u8": {"weight_type": "QUInt8", "per_channel": True},
    "s8_pt": {"weight_type": "QInt8", "per_channel": False},
    "s8_xdown": {"weight_type": "QInt8", "per_channel": True, "exclude_down": True},
    "u8_xdown": {"weight_type": "QUInt8", "per_channel": True, "exclude_down": True},
}
OPTIONS = ("fp32", "s8", "s8_rr", "u8", "s8_pt", "s8_xdown", "shipped", "u8_xdown", "qdq")


def texts(max_length: int) -> dict[str, list[str]]:
    from importlib.resources import files

    from leap_export.textio import sample_sentences
    from leap_export.verify import long_probes

    diag = (files("leap_export.resources") / "diagnose_sentences.txt").read_text(encoding="utf-8")
    return {
        "probe": sample_sentences() + long_probes(max_length),
        "diag": [line for line in diag.splitlines() if line.strip()],
    }


def quantise(option: str, src: Path, dst: Path, calibration) -> None:
    import logging

    from leap_export.export import down_projections, quantize_int8  # the shipped recipe, not a copy

    if option == "shipped":
        quantize_int8(src, dst)
        return
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice, once per graph
    if option == "qdq":
        quantize_static(
            src,
            dst,
            calibration,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
        )
        return
    kw = dict(DYNAMIC[option])
    exclude = down_projections(src) if kw.pop("exclude_down", False) else []
    kw["weight_type"] = getattr(QuantType, kw["weight_type"])
    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude,
        extra_options={"MatMulConstBOnly": True},
        **kw,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts")
    ap.add_argument("--work", required=True, help="folder for the quantised graphs (created if missing)")
    ap.add_argument(
        "--options", default=",".join(OPTIONS[1:]), help=f"comma-separated, of {', '.join(OPTIONS[1:])}"
    )
    ap.add_argument("--no-timing", action="store_true", help="accuracy only (e.g. under an emulated CPU)")
    ap.add_argument("--save", help="write each option's embeddings to this folder (.npz)")
    ap.add_argument("--compare", help="a --save folder from another CPU: report the largest difference")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        ap.error(f"--options: unknown {', '.join(unknown)}; choose from {', '.join(OPTIONS[1:])}")
    check_inputs(ap, args.artifacts, json_out=args.json_out)

    import numpy as np
    import onnxruntime as ort

    from leap_export.machine import describe_cpu
    from trt_runtime.encoder import EarlyExitEncoder

    enc = EarlyExitEncoder(args.artifacts, exits=False, warn_exit_check=False)
    full = Path(args.artifacts) / enc.manifest.variant_spec("fp32").full.file
    sets = texts(enc.tokenizer.max_length)
    batches = {
        name: {bs: [enc.tokenizer.pad(ids[i : i + bs]) for i in range(0, len(ids), bs)] for bs in (1, 16)}
        for name, ids in ((n, enc.tokenizer.encode(t)) for n, t in sets.items())
    }
    work = Path(args.work)
    work.mkdir(exist_ok=True)

    class Calibration:  # quantize_static's CalibrationDataReader: the diagnose sentences, one at a time
        def __init__(self) -> None:
            self.rows = iter(batches["diag"][1])

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"input_ids": row[0], "attention_mask": row[1]}

    def session(path: Path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def embed(sess, padded) -> np.ndarray:
        out = [sess.run(["pooled"], {"input_ids": a, "attention_mask": m})[0] for a, m in padded]
        x = np.concatenate(out)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    sessions = {"fp32": session(full)}
    for option in options:
        path = work / f"{option}.onnx"
        t = time.perf_counter()
        quantise(option, full, path, Calibration())
        print(f"{option}: quantised in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        sessions[option] = session(path)

    emb = {
        o: {f"{s}_b{bs}": embed(sess, batches[s][bs]) for s in sets for bs in (1, 16)}
        for o, sess in sessions.items()
    }
    if args.save:
        Path(args.save).mkdir(exist_ok=True)
        for o, e in emb.items():
            np.savez(Path(args.save) / f"{o}.npz", **e)

    def cos_min(a, b) -> float:
        return float(np.sum(a * b, axis=1).min())

    timing = {}
    if not args.no_timing:
        one = [p for p in batches["probe"][1][:36]]
        b32 = enc.tokenizer.pad(enc.tokenizer.encode(sets["diag"][:32]))
        for _ in range(3):  # round-robin: every option sees the same machine state
            for o, sess in sessions.items():
                t = time.perf_counter()
                for a, m in one:
                    sess.run(["pooled"], {"input_ids": a, "attention_mask": m})
                t1 = (time.perf_counter() - t) / len(one)
                t = time.perf_counter()
                sess.run(["pooled"], {"input_ids": b32[0], "attention_mask": b32[1]})
                timing.setdefault(o, []).append((t1, time.perf_counter() - t))
    rows = []
    for o in options:
        e, f = emb[o], emb["fp32"]
        row = {"option": o}
        for s in sets:
            row[f"{s}_b1"] = cos_min(e[f"{s}_b1"], f[f"{s}_b1"])
            row[f"{s}_b16"] = cos_min(e[f"{s}_b16"], f[f"{s}_b1"])
            row[f"{s}_b1~b16"] = cos_min(e[f"{s}_b1"], e[f"{s}_b16"])
        if timing:
            for i, bs in ((0, 1), (1, 32)):
                row[f"time_b{bs}"] = statistics.median(x[i] for x in timing[o]) / statistics.median(
                    x[i] for x in timing["fp32"]
                )
        if args.compare:
            other = np.load(Path(args.compare) / f"{o}.npz")
            row["same"] = max(float(np.abs(e[k] - other[k]).max()) for k in e)
        rows.append(row)
    cols = [k for k in rows[0] if k != "option"]
    print(
        f"int8 options on {describe_cpu()} ({len(sets['probe'])} probe, {len(sets['diag'])} diagnose texts)"
    )
    print("| option | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for row in rows:
        print(f"| {row['option']} | " + " | ".join(f"{row[c]:.4g}" for c in cols) + " |")
    if args.json_out:
        from trt_runtime.fileio import write_json_atomic

        write_json_atomic(args.json_out, {"cpu": describe_cpu(), "rows": rows})


if __name__ == "__main__":
    main()
