"""The early-exit loop, once for every backend: segment runners composed with the exit policy.

Per padded batch::

    active = every row
    for segment in segments:
        outputs = runner[segment].infer(inputs of the active rows)
        exited  = score >= theta, where the policy lets a row exit after this segment
        write the pooled vector of exited rows to their original rows; record their exit layer
        active  = active without exited        # later segments see fewer rows, trimmed to their longest
    rows still active take the last segment's pooled vector (full depth)

The loop owns the exit decision, the statistics and the scatter back to input order; the backend's
:class:`~trt_runtime.backends.base.TensorOps` own where tensors live and the gather that compaction needs. The
scores are the only tensors read on the host every segment; pooled vectors only once some row exits.

Written for the batch-1 latency it adds on a CPU, where every hand-off runs with caches full of the
weights the segment just streamed: scores are read once (``tolist``) and the exit test, the statistics and
the "nothing exited" fast path are plain Python; output arrays are only allocated once some row leaves
before the others (for a batch that leaves together, the segment's own pooled output is the result).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from trt_runtime.contract import CARRIED
from trt_runtime.manifest import SegmentSpec
from trt_runtime.stats import ExitStats


class SegmentTrace(NamedTuple):
    """What one segment run gave (``on_segment``): ``rows`` index the batch as given."""

    layer: int  # the segment's last layer
    rows: np.ndarray  # [R] int: the rows of the batch this segment ran (survivors of earlier exits)
    pooled: np.ndarray  # [R, H] float32: masked-mean pooled hidden state after ``layer``, not normalised
    score: np.ndarray  # [R] float32: the convergence score the graph computed


# a rule, as the encoder swaps it in one assignment: (theta as float32 in a Python float, may a row exit after
# segment k, the policy's fields (theta, min_layer, patience, enabled) for the C loop, which decides from them)
Rule = tuple[float, tuple[bool, ...], tuple[float, int, int, bool]]


class SegmentChain:
    """``segments`` (the manifest's, in order) run by ``runners`` (one each), compacted with ``ops``."""

    def __init__(self, segments: Sequence[SegmentSpec], runners: Sequence, ops, stats: ExitStats) -> None:
        if len(segments) != len(runners):
            raise ValueError(f"{len(segments)} segments but {len(runners)} runners")
        self.segments = list(segments)
        self.runners = list(runners)
        self.ops = ops
        self.stats = stats
        # (segment, output) pairs a later segment takes as its reference pooled vector
        self._refs_needed = {(s.ref_from, s.ref_output) for s in self.segments if s.ref_from is not None}
        self._uniform: dict[tuple[int, int], np.ndarray] = {}

    def run(
        self,
        input_ids: np.ndarray,
        mask: np.ndarray,
        rule: Rule,
        on_segment: Callable[[SegmentTrace], object] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One padded batch (host int32 ``[B, S]`` ids and mask): (pooled vector at each row's exit ``[B, H]``,
        exit layers ``[B]``), both host arrays."""
        ops, stats = self.ops, self.stats
        theta, can_exit, _ = rule
        batch = input_ids.shape[0]
        feeds = {"input_ids": ops.from_host(input_ids), "attention_mask": ops.from_host(mask)}
        carried: dict = {}  # mask_bias, pool_weights: from the first segment on
        refs: dict[tuple[int, str], object] = {}
        active = None  # rows still running (indices into the batch); None: every row, nothing has exited
        out = exit_layer = None  # allocated at the first exit that leaves other rows behind
        last = len(self.segments) - 1
        for seg, runner in zip(self.segments, self.runners, strict=True):
            if seg.ref_from is not None:
                feeds["ref_pooled"] = refs[(seg.ref_from, seg.ref_output)]
            res = runner.infer(feeds)
            pooled, score = res["pooled"], ops.to_host(res["score"])  # the one synchronisation per segment
            scores = score.tolist()
            rows = len(scores)
            if on_segment is not None:
                on_segment(
                    SegmentTrace(
                        seg.end,
                        np.arange(batch) if active is None else active.copy(),
                        ops.to_host(pooled),
                        score,
                    )
                )
            if seg.index == last:
                n_exit = rows
            elif can_exit[seg.index]:
                n_exit = sum(s >= theta for s in scores)
            else:
                n_exit = 0
            stats.record(seg.end, sum(scores), rows, n_exit)
            if n_exit == rows:  # every remaining row leaves here
                if active is None:
                    return ops.to_host(pooled), self._uniform_exit(batch, seg.end)
                out[active] = ops.to_host(pooled)
                exit_layer[active] = seg.end
                return out, exit_layer
            if seg.index == 0:  # the mask-derived tensors every later segment takes (computed once, in-graph)
                carried = {name: res[name] for name in CARRIED}
            hidden = res["hidden_out"]
            for key in self._refs_needed:
                if key[0] == seg.index:
                    refs[key] = res[key[1]]
            if n_exit:
                exited = score >= np.float32(theta)  # the same float32 comparison as the test above
                pooled = ops.to_host(pooled)
                if active is None:
                    active = np.arange(batch)
                    out = np.empty((batch, pooled.shape[1]), dtype=np.float32)
                    exit_layer = np.empty(batch, dtype=np.int64)
                out[active[exited]] = pooled[exited]
                exit_layer[active[exited]] = seg.end
                keep = np.flatnonzero(~exited)
                active = active[keep]
                mask = mask[keep]
                width = int(mask.sum(axis=1).max())  # trim padding no survivor needs
                mask = mask[:, :width]
                # every carried tensor has batch first and sequence last; hidden states [B, S, H]
                carried = {name: ops.compact(v, keep, -1, width) for name, v in carried.items()}
                hidden = ops.compact(hidden, keep, 1, width)
                refs = {k: ops.compact(v, keep, None, 0) for k, v in refs.items()}
            feeds = {"hidden_in": hidden, **carried}
        raise AssertionError("unreachable: the last segment returns")

    def _uniform_exit(self, batch: int, layer: int) -> np.ndarray:
        """A read-only ``[batch]`` array of ``layer`` (cached: the common result, built once)."""
        key = (batch, layer)
        arr = self._uniform.get(key)
        if arr is None:
            arr = np.full(batch, layer, dtype=np.int64)
            arr.setflags(write=False)
            if len(self._uniform) < 256:
                self._uniform[key] = arr
        return arr


class NumpyOps:
    """Tensors on the host, as numpy arrays (the ONNX Runtime CPU backend)."""

    @staticmethod
    def from_host(array: np.ndarray) -> np.ndarray:
        return array

    @staticmethod
    def to_host(tensor: np.ndarray) -> np.ndarray:
        return tensor

    @staticmethod
    def compact(tensor: np.ndarray, rows: np.ndarray, seq_axis: int | None, width: int) -> np.ndarray:
        kept = tensor[rows]
        if seq_axis is not None:
            index = [slice(None)] * kept.ndim
            index[seq_axis] = slice(0, width)
            kept = kept[tuple(index)]
        return np.ascontiguousarray(kept)
