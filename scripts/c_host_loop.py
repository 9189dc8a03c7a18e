"""Is the Python host the batch-1 overhead? The segment chain driven from C, against the runtime, paired.

    python scripts/c_host_loop.py ARTIFACTS [--sentences FILE] [--rounds 8] [--blocks 5] [--rows 300]
        [--threads N] [--json OUT.json]

``scripts/c_host_loop.c`` runs the same graphs through ONNX Runtime's C API (the ``libonnxruntime.so``
that the onnxruntime wheel ships beside its Python module), with the runtime's settings (one shared
thread pool with spinning, one shared arena) and no Python between segment runs: tensors pass from one
segment to the next as OrtValues, without copies. It times the monolithic graph against the chain
(exits off) exactly as ``scripts/overhead_spread.py``'s worker does (per sentence in alternation, 50
untimed sentences per block). Each round runs one fresh Python process (that worker) and one fresh C
process, one after the other, so the two hosts are compared in the same state of the machine.

Before timing, the C chain's exit scores are checked against the runtime's on every sentence (they must
agree within 1e-4). Needs gcc; the C program is compiled into a temporary folder on each run.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _checks import check_inputs, positive_int  # scripts/, on sys.path when run as a script
from overhead_spread import run_worker, summarize, worker_command  # scripts/, likewise

from trt_runtime.fileio import write_json_atomic

HERE = Path(__file__).resolve().parent


def find_libonnxruntime() -> str:
    import onnxruntime

    libs = sorted(glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so*")))
    if not libs:
        sys.exit(
            f"c_host_loop: this onnxruntime wheel ({onnxruntime.__version__}) ships no libonnxruntime.so "
            "beside its Python module; install onnxruntime >= 1.22"
        )
    return libs[0]


def compile_c(tmp: Path) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("c_host_loop: needs a C compiler (gcc); install it, e.g. apt-get install gcc")
    exe = tmp / "c_host_loop"
    res = subprocess.run(
        [
            cc,
            "-O2",
            "-std=c11",
            "-Wall",
            f"-I{HERE.parent / 'trt_runtime' / '_native'}",
            "-o",
            str(exe),
            str(HERE / "c_host_loop.c"),
            "-ldl",
        ],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        sys.exit(f"c_host_loop: compiling scripts/c_host_loop.c failed:\n{res.stderr}")
    return exe


def write_inputs(artifacts: str, texts: list[str], tmp: Path) -> tuple[Path, Path, list[list[float]]]:
    """The plan (graphs and where each segment input comes from), the token ids, and the runtime's own
    exit scores for every sentence (exits off), for the parity check."""
    import numpy as np

    from trt_runtime.encoder import EarlyExitEncoder

    # the Python loop: it traces each segment's scores (check_inputs hashed the files)
    enc = EarlyExitEncoder(artifacts, exits=False, check_files=False, loop="python")
    m = enc.manifest
    lines = [f"full {m.full_path()}"]
    outputs = [list(s.outputs) for s in m.segments]
    for k, (seg, path) in enumerate(zip(m.segments, m.segment_paths(), strict=True)):
        names = list(seg.inputs)
        lines.append(f"seg {path} {len(names)} {len(outputs[k])} {outputs[k].index('score')}")
        for name in names:
            if seg.takes_ids:
                src = {"input_ids": "ids", "attention_mask": "mask"}[name]
            elif name == "hidden_in":
                src = f"{k - 1}:{outputs[k - 1].index('hidden_out')}"
            elif name == "ref_pooled":
                src = f"{seg.ref_from}:{outputs[seg.ref_from].index(seg.ref_output)}"
            else:  # computed once by the first segment (mask_bias, pool_weights)
                src = f"0:{outputs[0].index(name)}"
            lines.append(f"in {name} {src}")
        lines += [f"out {name}" for name in outputs[k]]
    plan = tmp / "plan.txt"
    plan.write_text("\n".join(lines) + "\n")
    tokens, scores = [], []
    for enc_ids in enc.tokenizer.encode(texts):
        ids, mask = enc.tokenizer.pad([enc_ids])
        tokens.append(" ".join(map(str, ids[0].tolist())))
        trace: list = []
        enc._run_padded(ids, mask, trace=trace)
        scores.append([float(t[3][0]) for t in trace])
        assert int(np.asarray(mask).sum()) == ids.shape[1]  # batch 1: no padding, the C side passes all ones
    tok = tmp / "tokens.txt"
    tok.write_text("\n".join(tokens) + "\n")
    return plan, tok, scores


def run_c(exe: Path, lib: str, plan: Path, tok: Path, threads: int, blocks: int, mode: str) -> str:
    res = subprocess.run(
        [str(exe), lib, str(plan), str(tok), str(threads), str(blocks), mode], capture_output=True, text=True
    )
    if res.returncode != 0:
        sys.exit(f"c_host_loop: the C program failed:\n{res.stderr.strip()}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts")
    ap.add_argument(
        "--sentences", help="UTF-8 file, one sentence per line (default: the built-in sample set)"
    )
    ap.add_argument(
        "--rounds", type=positive_int, default=8, help="pairs of fresh processes (Python, then C)"
    )
    ap.add_argument("--blocks", type=positive_int, default=5)
    ap.add_argument("--rows", type=positive_int, default=300, help="sentences per block (batch 1)")
    ap.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="intra-op threads for both hosts (default: the CPUs this process may use)",
    )
    ap.add_argument("--json", help="also write every round's blocks here")
    args = ap.parse_args()
    texts = check_inputs(ap, args.artifacts, sentences=args.sentences, json_out=args.json)[: args.rows]

    from trt_runtime.runners import default_threads

    threads = args.threads or default_threads()
    lib = find_libonnxruntime()
    with tempfile.TemporaryDirectory(prefix="c_host_loop-") as tmp_name:
        tmp = Path(tmp_name)
        exe = compile_c(tmp)
        plan, tok, py_scores = write_inputs(args.artifacts, texts, tmp)
        c_scores = [
            [float(x) for x in line.split()]
            for line in run_c(exe, lib, plan, tok, threads, 1, "scores").splitlines()
        ]
        worst = max(
            abs(a - b)
            for pr, cr in zip(py_scores, c_scores, strict=True)
            for a, b in zip(pr, cr, strict=True)
        )
        if worst > 1e-4:
            sys.exit(
                f"c_host_loop: the C chain's exit scores differ from the runtime's by up to {worst:.2e}; "
                "not timing two different computations"
            )
        print(
            f"parity: the C chain's exit scores match the runtime's on {len(texts)} sentences "
            f"(max abs diff {worst:.1e})"
        )
        # the runtime's Python loop (its C loop, trt_runtime/native.py, grew out of this script)
        py_cmd = worker_command(
            args.artifacts,
            blocks=args.blocks,
            rows=args.rows,
            sentences=args.sentences,
            threads=threads,
            loop="python",
        )
        rounds = []
        print(f"\n{len(texts)} sentences per block, {args.blocks} blocks per process, {threads} threads\n")
        print(
            "| round | Python host: overhead (monolithic ms) | C host: overhead (monolithic ms) | C - Python |"
        )
        print("|---|---|---|---|")
        for r in range(args.rounds):
            py = run_worker(py_cmd, "c_host_loop: the Python worker")
            c = json.loads(run_c(exe, lib, plan, tok, threads, args.blocks, "time"))
            row = {"python": py, "c": c}
            for host in ("python", "c"):
                row[host]["median"] = statistics.median(row[host]["ratios"]) - 1
            rounds.append(row)
            print(
                f"| {r + 1} | {py['median']:+.1%} ({statistics.mean(py['monolithic_ms']):.2f}) "
                f"| {c['median']:+.1%} ({statistics.mean(c['monolithic_ms']):.2f}) "
                f"| {(c['median'] - py['median']) * 100:+.1f} points |",
                flush=True,
            )
    summary = {host: summarize([r[host]["median"] for r in rounds]) for host in ("python", "c")}
    lower = sum(r["c"]["median"] < r["python"]["median"] for r in rounds)
    for host, label in (("python", "Python host"), ("c", "C host")):
        s = summary[host]
        print(
            f"\n{label}: median {s['median']:+.1%}, range {s['min']:+.1%} .. {s['max']:+.1%}; "
            f"<= 3 % in {s['at_most_3pct']} of {len(rounds)}",
            end="",
        )
    print(f"\nC lower than Python in {lower} of {len(rounds)} rounds")
    if args.json:
        write_json_atomic(
            args.json,
            {
                "threads": threads,
                "rows": len(texts),
                "blocks": args.blocks,
                "summary": summary,
                "c_lower_in": lower,
                "rounds": rounds,
            },
        )


if __name__ == "__main__":
    main()
