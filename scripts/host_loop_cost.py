"""What the runtime's host loop adds to the segment runs themselves, in microseconds per batch.

    python scripts/host_loop_cost.py ARTIFACTS [--sentences FILE] [--batch-sizes 1,8,32] [--rounds 6]

Two ways of running the same segments on the same ONNX Runtime sessions (exits off, full depth):

- ``bare chain``: ``InferenceSession.run`` per segment, passing the outputs straight on: what a user
  would write by hand with no exit test, statistics or compaction;
- ``host loop``: ``EarlyExitEncoder._run_padded``, the runtime's loop (exit test, statistics, results).

They share weights and sessions, so they are timed in alternation per batch (A B, then B A), which
cancels cache and clock drift; the report is the median of the paired differences. ``leap-export
bench`` cannot resolve a cost this small against the monolithic graph: two graphs with their own
weights evict each other from the cache, and the noise of that is larger than the loop itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _checks import check_inputs, positive_int, positive_ints  # scripts/, on sys.path when run as a script

from trt_runtime.encoder import CARRIED, EarlyExitEncoder


def segment_chain(enc: EarlyExitEncoder, run_segment):
    """Full depth through the segments; ``run_segment(index, feeds)`` returns that segment's outputs by name."""
    segments = enc.segments
    needed = enc._refs_needed  # (segment, output) pairs a later segment takes as ref_pooled

    def run(input_ids: np.ndarray, mask: np.ndarray):
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        carried, refs = {}, {}
        for seg in segments:
            if seg.ref_from is not None:
                feeds["ref_pooled"] = refs[(seg.ref_from, seg.ref_output)]
            res = run_segment(seg.index, feeds)
            if "hidden_out" not in res:
                return res["pooled"]
            if seg.index == 0:
                carried = {name: res[name] for name in CARRIED}
            for key in needed:
                if key[0] == seg.index:
                    refs[key] = res[key[1]]
            feeds = {"hidden_in": res["hidden_out"], **carried}
        raise AssertionError("the last segment has no hidden_out")

    return run


def bare_chain(enc: EarlyExitEncoder):
    """``InferenceSession.run`` per segment, outputs passed straight on."""
    sessions = [r.session for r in enc.runners]
    names = [r.output_names for r in enc.runners]
    return segment_chain(
        enc, lambda i, feeds: dict(zip(names[i], sessions[i].run(names[i], feeds), strict=True))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts")
    ap.add_argument(
        "--sentences", help="UTF-8 file, one sentence per line (default: the built-in sample set)"
    )
    ap.add_argument("--batch-sizes", type=positive_ints, default="1,8,32")
    ap.add_argument(
        "--rounds", type=positive_int, default=6, help="passes over the batches (the first is warm-up)"
    )
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2: the first pass is warm-up and not timed")
    sentences = check_inputs(ap, args.artifacts, sentences=args.sentences)
    if max(args.batch_sizes) > len(sentences):
        ap.error(
            f"batch size {max(args.batch_sizes)} is larger than the {len(sentences)} sentences; pass more "
            "--sentences or smaller --batch-sizes"
        )
    # the Python loop, against bare binding calls (check_inputs hashed the files)
    enc = EarlyExitEncoder(args.artifacts, exits=False, check_files=False, loop="python")
    chain = bare_chain(enc)
    ids = enc.tokenizer.encode(sentences)
    clock = time.perf_counter
    print(f"{Path(args.artifacts).name}: {len(enc.segments)} segments, {len(sentences)} sentences, exits off")
    print("| batch | bare chain p50 us | host loop p50 us | host loop - bare chain, p50 of pairs |")
    print("|---|---|---|---|")
    for bs in args.batch_sizes:
        batches = [enc.tokenizer.pad(ids[i : i + bs]) for i in range(0, len(ids) - bs + 1, bs)][:256]
        a, b = [], []
        for r in range(args.rounds):
            for i, (input_ids, mask) in enumerate(batches):
                first_bare = i % 2 == 0
                t0 = clock()
                chain(input_ids, mask) if first_bare else enc._run_padded(input_ids, mask)
                t1 = clock()
                enc._run_padded(input_ids, mask) if first_bare else chain(input_ids, mask)
                t2 = clock()
                if r:
                    a.append(t1 - t0 if first_bare else t2 - t1)
                    b.append(t2 - t1 if first_bare else t1 - t0)
        a, b = np.asarray(a) * 1e6, np.asarray(b) * 1e6
        print(f"| {bs} | {np.median(a):.0f} | {np.median(b):.0f} | {np.median(b - a):+.1f} |")


if __name__ == "__main__":
    main()
