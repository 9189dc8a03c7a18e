"""Production statistics of an encoder (paper §5.2): exits per layer, mean convergence score per layer, E[layers].

One object per encoder, updated by every batch from any thread. A backend whose loop runs outside Python
(the C host loop) keeps its own counters and attaches a reader (:meth:`ExitStats.attach`), so no Python
runs per batch to record them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class ExitStats:
    """Production logging (paper §5.2): per-layer exit counts and mean convergence score per layer."""

    num_layers: int
    boundaries: list[int]
    exits: dict[int, int] = field(default_factory=dict)
    score_sum: dict[int, float] = field(default_factory=dict)
    score_count: dict[int, int] = field(default_factory=dict)
    # one encoder may serve several threads: each update is a read-modify-write of three dicts
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # counters kept elsewhere (the C loop's, kept in C): read(reset) -> rows of (layer, score sum, rows, exits)
    _sources: list = field(default_factory=list, repr=False, compare=False)

    def record(self, layer: int, score_sum: float, count: int, exited: int) -> None:
        """``count`` rows reached ``layer`` with convergence scores summing to ``score_sum``; ``exited`` left there."""
        with self._lock:
            self.score_sum[layer] = self.score_sum.get(layer, 0.0) + score_sum
            self.score_count[layer] = self.score_count.get(layer, 0) + count
            if exited:
                self.exits[layer] = self.exits.get(layer, 0) + exited

    def attach(self, read: Callable[[bool], Sequence[tuple[int, float, float, float]]]) -> None:
        """Counters kept outside this object (the C loop's) count in every figure and are reset with it."""
        self._sources.append(read)

    def _merged(self) -> tuple[dict, dict, dict]:
        with self._lock:
            exits, total, count = dict(self.exits), dict(self.score_sum), dict(self.score_count)
        for read in self._sources:
            for layer, s, c, e in read(False):
                if c:
                    total[layer] = total.get(layer, 0.0) + s
                    count[layer] = count.get(layer, 0) + int(c)
                if e:
                    exits[layer] = exits.get(layer, 0) + int(e)
        return exits, total, count

    @property
    def samples(self) -> int:
        return sum(self._merged()[0].values())

    def expected_layers(self) -> float:
        return self._expected(self._merged()[0])

    @staticmethod
    def _expected(exits: dict) -> float:
        n = sum(exits.values())
        return sum(layer * c for layer, c in exits.items()) / n if n else float("nan")

    def as_dict(self) -> dict:
        exits, total, count = self._merged()  # one snapshot for every figure
        n = sum(exits.values())
        layers = self.boundaries
        expected = self._expected(exits)
        return {
            "samples": n,
            "exit_counts": {str(layer): exits.get(layer, 0) for layer in layers},
            "exit_rate": {str(layer): (exits.get(layer, 0) / n if n else 0.0) for layer in layers},
            "mean_score": {str(layer): total[layer] / count[layer] for layer in layers if count.get(layer)},
            "expected_layers": expected if n else None,
            "layer_reduction": self.num_layers / expected if n else None,
        }

    def reset(self) -> None:
        with self._lock:
            self.exits.clear()
            self.score_sum.clear()
            self.score_count.clear()
            for read in self._sources:
                read(True)
