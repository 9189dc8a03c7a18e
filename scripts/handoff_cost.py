"""What a hand-off between segment runs costs at batch 1, with warm caches and with the L2 flushed.

    python scripts/handoff_cost.py ARTIFACTS [--sentences FILE] [--rows 300] [--rounds 3] [--flush-mb 8]
                                  [--variant int8] [--json F]

At batch 1 each layer of a real model streams more weights than the L2 cache holds (MiniLM: 7 MB per
layer), so every ONNX Runtime run after the first starts with the caches full of weights. This script
asks what that does to the segment chain, sentence by sentence, in four configurations timed in
alternation (the order reversed every other sentence):

- ``monolithic`` and ``chain``: the monolithic graph, and the segments run one after another (exits off,
  ``InferenceSession``'s binding called directly, as the runtime does);
- ``monolithic, flushed`` and ``chain, flushed``: the same, but before each run (each segment's run in
  the chain) the script reads ``--flush-mb`` of memory, untimed, evicting the L2 as a layer's weights do.

``chain - monolithic`` is what the hand-offs cost. On a model with next to no weights (a hidden size of
16) the warm figure is ONNX Runtime's per-run dispatch; the flushed figure is that dispatch as a real
model pays it. On MiniLM the warm figure is already about that flushed one: its weights flush the cache
on their own (docs/RESULTS.md, "What a hand-off is made of").
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from _checks import check_inputs, positive_int  # scripts/, on sys.path when run as a script
from host_loop_cost import segment_chain  # scripts/, on sys.path when run as a script

from trt_runtime.encoder import EarlyExitEncoder
from trt_runtime.fileio import write_json_atomic
from trt_runtime.runners import OrtRunner


def chain_runner(enc: EarlyExitEncoder, before_run):
    """The segments at full depth (the binding called directly, as the runtime does); returns the seconds
    spent inside the segment runs, ``before_run`` excluded."""
    raws = [r.session._sess for r in enc.runners]
    names = [r.output_names for r in enc.runners]
    clock = time.perf_counter
    spent = [0.0]

    def run_segment(i: int, feeds: dict) -> dict:
        before_run()
        t0 = clock()
        values = raws[i].run(names[i], feeds, None)
        spent[0] += clock() - t0
        return dict(zip(names[i], values, strict=True))

    chain = segment_chain(enc, run_segment)

    def run(input_ids: np.ndarray, mask: np.ndarray) -> float:
        spent[0] = 0.0
        chain(input_ids, mask)
        return spent[0]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts")
    ap.add_argument(
        "--sentences", help="UTF-8 file, one sentence per line (default: the built-in sample set)"
    )
    ap.add_argument("--rows", type=positive_int, default=300, help="sentences per round")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the sentences (the first is warm-up)")
    ap.add_argument("--flush-mb", type=float, default=8.0, help="memory read before each flushed run (MB)")
    ap.add_argument("--threads", type=positive_int, default=None)
    ap.add_argument(
        "--variant", default=None, help="a build variant of the folder, e.g. int8 (default: fp32)"
    )
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    if args.rounds < 2 or args.rows < 1 or args.flush_mb <= 0:
        ap.error("need --rounds >= 2, --rows >= 1 and --flush-mb > 0")
    texts = check_inputs(
        ap, args.artifacts, sentences=args.sentences, json_out=args.json, variant=args.variant
    )
    # the segments' sessions in the Python binding, as the monolithic graph's (check_inputs hashed the files)
    enc = EarlyExitEncoder(
        args.artifacts,
        exits=False,
        threads=args.threads,
        variant=args.variant,
        check_files=False,
        loop="python",
    )
    mono = OrtRunner(enc.manifest.full_path(args.variant), threads=args.threads)
    mono.activate()
    mono_raw, mono_outs = mono.session._sess, mono.output_names
    padded = [enc.tokenizer.pad([x]) for x in enc.tokenizer.encode(texts[: args.rows])]
    flush_buf = np.ones(max(1, int(args.flush_mb * 2**20 / 8)))
    clock = time.perf_counter

    def flush() -> None:
        flush_buf.sum()

    def nothing() -> None:
        pass

    def mono_runner(before_run):
        def run(input_ids, mask) -> float:
            before_run()
            t0 = clock()
            mono_raw.run(mono_outs, {"input_ids": input_ids, "attention_mask": mask}, None)
            return clock() - t0

        return run

    configs = {
        "monolithic": mono_runner(nothing),
        "chain": chain_runner(enc, nothing),
        "monolithic, flushed": mono_runner(flush),
        "chain, flushed": chain_runner(enc, flush),
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    order = list(configs.items())
    for rnd in range(args.rounds):
        for i, (ids, mask) in enumerate(padded):
            for name, fn in order if i % 2 == 0 else order[::-1]:
                t = fn(ids, mask)
                if rnd > 0:
                    times[name].append(t)
    us = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    handoffs = len(enc.segments) - 1
    result = {
        "artifacts": str(args.artifacts),
        "variant": args.variant or "fp32",
        "rows": len(padded),
        "flush_mb": args.flush_mb,
        "handoffs": handoffs,
        "median_us": us,
        "handoffs_us": {
            "warm": us["chain"] - us["monolithic"],
            "flushed": us["chain, flushed"] - us["monolithic, flushed"],
        },
    }
    print("| configuration | median us per sentence |")
    print("|---|---|")
    for k, v in us.items():
        print(f"| {k} | {v:.1f} |")
    h = result["handoffs_us"]
    print(
        f"\n{handoffs} hand-offs: {h['warm']:+.1f} us warm, {h['flushed']:+.1f} us with {args.flush_mb:g} MB "
        f"read before each run ({h['warm'] / max(handoffs, 1):+.1f} / {h['flushed'] / max(handoffs, 1):+.1f} "
        "us per hand-off)"
    )
    if args.json:
        write_json_atomic(Path(args.json), result)


if __name__ == "__main__":
    main()
