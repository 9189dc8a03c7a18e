"""The exit rule, in one place: the runtime, diagnostics and calibration all call this.

A sample exits after layer ``l`` when ``l >= min_layer``, ``l > patience`` and
``cos(p_l, p_{l - patience}) >= theta`` (LEAP paper, eq. 6 and Algorithm 1), where ``p`` is the
attention-masked mean-pooled hidden state. A sample that never satisfies it runs to full depth.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import numpy as np

from trt_runtime.errors import RuntimeInputError


@dataclass(frozen=True)
class ExitPolicy:
    theta: float = 0.95
    patience: int = 1
    min_layer: int = 1
    enabled: bool = True  # False: full depth for every sample (the comparison setting)

    def __post_init__(self) -> None:
        # numpy scalars are welcome (a theta computed with numpy is one) and stored as Python numbers:
        # a np.float64 theta would make ``scores >= theta`` compare in float64 where the runtime's own
        # test compares in the scores' float32, and the two could disagree on a score next to theta
        theta = self.theta
        if (
            isinstance(theta, bool | np.bool_)
            or not isinstance(theta, numbers.Real)
            or not 0.0 < float(theta) <= 1.0
        ):
            raise RuntimeInputError(f"theta must be a number in (0, 1], got {theta!r}")
        object.__setattr__(self, "theta", float(theta))
        for name, what in (("patience", "patience k"), ("min_layer", "min_layer")):
            value = getattr(self, name)
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral) or value < 1:
                raise RuntimeInputError(f"{what} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.enabled, bool | np.bool_):  # bool("false") is True
            raise RuntimeInputError(f"enabled must be True or False, got {self.enabled!r}")
        object.__setattr__(self, "enabled", bool(self.enabled))

    @classmethod
    def from_dict(cls, d: dict) -> ExitPolicy:
        unknown = sorted(set(d) - {"theta", "patience", "min_layer", "enabled"})
        if unknown:
            raise RuntimeInputError(
                f"unknown exit-policy keys {', '.join(map(repr, unknown))}; expected theta, patience, min_layer, enabled"
            )
        return cls(**{k: d[k] for k in ("theta", "patience", "min_layer", "enabled") if k in d})

    def to_dict(self) -> dict:
        return asdict(self)

    def may_exit_at(self, layer: int) -> bool:
        return self.enabled and layer >= self.min_layer and layer > self.patience

    def decide(self, layer: int, scores: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows whose convergence score lets them exit after ``layer``."""
        if not self.may_exit_at(layer):
            return np.zeros(scores.shape[0], dtype=bool)
        return scores >= self.theta

    def simulate(self, pooled: np.ndarray, layers: list[int] | None = None) -> np.ndarray:
        """Exit layer of every sample, given every layer's pooled vectors ``[L + 1, N, H]``.

        ``layers`` are the layers after which an exit is checked (a segment plan's boundaries);
        default: every layer. Samples that never exit get ``L``.
        """
        num_layers = pooled.shape[0] - 1
        exit_layer = np.full(pooled.shape[1], num_layers, dtype=np.int64)
        done = np.zeros(pooled.shape[1], dtype=bool)
        for layer in layers or range(1, num_layers + 1):
            if layer >= num_layers:
                break
            exits = self.decide(layer, convergence_scores(pooled, layer, self.patience)) & ~done
            exit_layer[exits] = layer
            done |= exits
        return exit_layer


def cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Row-wise cosine with torch.nn.functional.cosine_similarity's epsilon semantics."""
    na = np.maximum(np.linalg.norm(a, axis=-1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=-1), eps)
    return np.sum(a * b, axis=-1) / (na * nb)


def convergence_scores(pooled: np.ndarray, layer: int, patience: int) -> np.ndarray:
    """cos(p_layer, p_{layer - patience}) for every sample, from ``[L + 1, N, H]`` pooled vectors."""
    return cosine(pooled[layer], pooled[max(layer - patience, 0)])
