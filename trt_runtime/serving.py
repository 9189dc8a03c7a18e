"""Serving many requests at once: the logic of the Triton model (``leap-export triton``), free of Triton.

A server hands its model a list of requests, each a few texts with its own parameters. :class:`ServedEncoder`
runs them as ONE early-exit batch with compaction (:meth:`EarlyExitEncoder.run_ids`): every text of every
request in one padded batch, whatever their lengths, so a short text leaves after the first segment while a
long one runs on, and the rows still running are trimmed to their longest. Each request gets its own rows
back, in its own order.

Per-request parameters (``theta``, ``min_layer``, ``full_depth``) override the encoder's policy for that
request only. Requests asking for the same policy share a batch; a request that asks for another one runs in
the batch of the requests asking for that one (a batch runs one rule). They are checked as the CLI checks
``--theta`` / ``--min-layer`` / ``--full-depth`` and as the encoder checks a policy; a bad one fails that
request alone, with a one-line message, and the others are served.

What the monitoring needs is reported to a :class:`MetricsSink` (the Triton model's writes Prometheus
metrics): every text's exit layer, every convergence score per layer, and, for a sampled fraction
(``shadow_rate``), the cosine between the served embedding and the same text's full-depth embedding, the
production monitor of exit quality (LEAP paper §5.2): if it drifts down, exits have become unsafe.

Only numpy and the runtime are imported here: the Triton model runs in an environment with numpy < 2.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from trt_runtime.errors import RuntimeInputError
from trt_runtime.policy import ExitPolicy

PARAMETERS = ("theta", "min_layer", "full_depth")


@dataclass(frozen=True)
class Overrides:
    """One request's policy parameters; None: the served policy's value."""

    theta: float | None = None
    min_layer: int | None = None
    full_depth: bool = False

    @classmethod
    def parse(cls, params: Mapping | None) -> Overrides:
        """Check a request's parameters (a JSON object: numbers, booleans, or strings of them, as gRPC and
        HTTP clients send) the way the CLI checks its options; unknown names are refused, not ignored."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise RuntimeInputError(
                f"unknown request parameter {', '.join(map(repr, unknown))}; this model takes "
                f"{', '.join(PARAMETERS)}"
            )
        theta = _number(params.get("theta"), "theta")
        if theta is not None and not (math.isfinite(theta) and 0.0 < theta <= 1.0):
            raise RuntimeInputError(f"parameter theta must be a number in (0, 1], got {params['theta']!r}")
        min_layer = _integer(params.get("min_layer"), "min_layer")
        if min_layer is not None and min_layer < 1:
            raise RuntimeInputError(
                f"parameter min_layer must be an integer >= 1, got {params['min_layer']!r}"
            )
        full_depth = _boolean(params.get("full_depth"), "full_depth")
        if full_depth and (theta is not None or min_layer is not None):
            raise RuntimeInputError(
                "parameter full_depth runs every layer for every text: theta and min_layer would be ignored; "
                "drop them, or drop full_depth"
            )
        return cls(theta, min_layer, bool(full_depth))

    def policy_change(self) -> dict | None:
        """What to assign to ``encoder.policy`` (a dict of the fields named), or None for the served policy."""
        if self.full_depth:
            return {"enabled": False}
        change = {k: v for k, v in (("theta", self.theta), ("min_layer", self.min_layer)) if v is not None}
        return change or None


def _number(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise RuntimeInputError(f"parameter {name} must be a number, got {value!r}")


def _integer(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise RuntimeInputError(f"parameter {name} must be an integer, got {value!r}")


def _boolean(value, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RuntimeInputError(f"parameter {name} must be true or false, got {value!r}")


def decode_texts(items: Sequence) -> list[str]:
    """Texts from a BYTES tensor's items (``bytes``; ``str`` accepted); invalid UTF-8 is refused, not replaced."""
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            continue
        try:
            texts.append(bytes(item).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RuntimeInputError(
                f"text #{i} is not valid UTF-8 (byte 0x{bytes(item)[e.start]:02x} at offset {e.start}); "
                "send UTF-8 encoded text"
            ) from None
        except TypeError:
            raise RuntimeInputError(f"text #{i} is not a byte string, got {type(item).__name__}") from None
    return texts


class MetricsSink(Protocol):
    """Where a batch's monitoring figures go (the Triton model: Prometheus metrics)."""

    def exits(self, layer: int, count: int) -> None:
        """``count`` texts left after ``layer`` (their embedding is that layer's)."""

    def scores(self, layer: int, scores: np.ndarray) -> None:
        """The convergence scores of the texts that ran ``layer`` (``[R]`` float32)."""

    def shadow(self, cosines: np.ndarray) -> None:
        """cosine(served embedding, full-depth embedding) of the texts sampled for a shadow run."""


@dataclass
class CountingSink:
    """A :class:`MetricsSink` that keeps everything (tests; a quick look without Prometheus)."""

    exit_counts: dict[int, int] = field(default_factory=dict)
    score_values: dict[int, list[float]] = field(default_factory=dict)
    shadow_cosines: list[float] = field(default_factory=list)

    def exits(self, layer: int, count: int) -> None:
        self.exit_counts[layer] = self.exit_counts.get(layer, 0) + count

    def scores(self, layer: int, scores: np.ndarray) -> None:
        self.score_values.setdefault(layer, []).extend(np.asarray(scores, dtype=float).tolist())

    def shadow(self, cosines: np.ndarray) -> None:
        self.shadow_cosines.extend(np.asarray(cosines, dtype=float).tolist())


@dataclass
class Served:
    """One request's answer: its rows, in its order, or the one-line reason it was refused."""

    embeddings: np.ndarray | None = None  # [n, H] float32, L2-normalised
    exit_layers: np.ndarray | None = None  # [n] int32
    error: str | None = None


class ServedEncoder:
    """Serve lists of requests with one encoder (one per model instance; not for concurrent calls).

    ``encoder``: a :class:`trt_runtime.EarlyExitEncoder`; its policy when this object is made is the served
    one. ``shadow_rate``: the fraction of texts re-run at full depth for the exit-quality monitor (0: none,
    1: every text); ``seed`` makes the sample reproducible.
    """

    def __init__(self, encoder, *, sink: MetricsSink | None = None, shadow_rate: float = 0.0, seed=None):
        if isinstance(shadow_rate, bool) or not isinstance(shadow_rate, numbers.Real):
            raise RuntimeInputError(f"shadow_rate must be a number in [0, 1], got {shadow_rate!r}")
        if not 0.0 <= float(shadow_rate) <= 1.0:
            raise RuntimeInputError(f"shadow_rate must be a number in [0, 1], got {shadow_rate!r}")
        self.encoder = encoder
        self.policy: ExitPolicy = encoder.policy
        self.sink = sink or CountingSink()
        self.shadow_rate = float(shadow_rate)
        self._random = random.Random(seed)

    def serve(self, requests: Sequence[tuple[Sequence, Mapping | None]]) -> list[Served]:
        """``requests``: (texts as bytes or str, parameters) per request; one :class:`Served` each, in order."""
        answers: list[Served | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[str]]]] = {}
        for i, (items, params) in enumerate(requests):
            try:
                overrides = Overrides.parse(params)
                texts = decode_texts(items)
            except RuntimeInputError as e:
                answers[i] = Served(error=str(e))
                continue
            groups.setdefault(_key(overrides), []).append((i, texts))
        for key, members in groups.items():
            try:
                results = self._run_group(dict(key) if key else None, [t for _, t in members])
            except RuntimeInputError as e:
                results = [Served(error=str(e))] * len(members)
            for (i, _), served in zip(members, results, strict=True):
                answers[i] = served
        return answers  # type: ignore[return-value]

    def _run_group(self, change: dict | None, texts_per_request: list[list[str]]) -> list[Served]:
        """One early-exit batch for every text of these requests (one policy), split back per request."""
        encoder = self.encoder
        texts = [t for texts in texts_per_request for t in texts]
        dim = encoder.manifest.hidden_size
        if not texts:
            return [Served(np.zeros((0, dim), np.float32), np.zeros(0, np.int32)) for _ in texts_per_request]
        if change is not None:
            encoder.policy = (
                change  # checked as the encoder checks any policy (min_layer beyond the model...)
            )
        try:
            ids = token_ids(encoder.tokenizer, texts)
            pooled, layers = encoder.run_ids(ids, on_segment=self._record_scores)
            shadow = self._shadow_rows(len(texts))
            full = None
            if len(shadow):
                encoder.policy = {"enabled": False}
                full, _ = encoder.run_ids([ids[i] for i in shadow])
        finally:
            if change is not None or self.shadow_rate:
                encoder.policy = self.policy
        embeddings = _normalised(pooled)
        layers = np.asarray(layers, dtype=np.int32)
        for layer, count in zip(*np.unique(layers, return_counts=True), strict=True):
            self.sink.exits(int(layer), int(count))
        if full is not None:
            self.sink.shadow(np.sum(embeddings[shadow] * _normalised(full), axis=1))
        out, start = [], 0
        for request in texts_per_request:
            end = start + len(request)
            out.append(Served(embeddings[start:end], layers[start:end]))
            start = end
        return out

    def _record_scores(self, trace) -> None:
        self.sink.scores(trace.layer, trace.score)

    def _shadow_rows(self, n: int) -> np.ndarray:
        if self.shadow_rate <= 0.0:
            return np.zeros(0, dtype=np.int64)
        rows = [i for i in range(n) if self._random.random() < self.shadow_rate]
        return np.asarray(rows, dtype=np.int64)


def token_ids(batcher, texts: Sequence[str], chars_per_token: int = 64) -> list[np.ndarray]:
    """``batcher.encode(texts)`` (a :class:`trt_runtime.tokenize.TokenBatcher`) in time and memory bounded by
    ``max_length``, not by the texts' lengths: a 10 MB text otherwise costs seconds and hundreds of MB to
    tokenise, all but the first ``max_length`` tokens thrown away.

    A text longer than ``max_length * chars_per_token`` characters is tokenised up to its last whitespace
    before that many characters. Tokenizers split words at whitespace before anything else, so those are the
    text's own first tokens; when they fill ``max_length`` (the encoding overflows) they are exactly the
    truncated ids of the whole text. When they do not (whitespace runs, a giant word), the whole text is
    tokenised after all. Same ids either way.
    """
    limit = batcher.max_length * chars_per_token
    cut = [_prefix(t, limit) for t in texts]
    encoded = batcher.tokenizer.encode_batch(cut)
    redo = [
        i
        for i, (t, c, e) in enumerate(zip(texts, cut, encoded, strict=True))
        if c is not t and not e.overflowing
    ]
    if redo:
        for i, e in zip(redo, batcher.tokenizer.encode_batch([texts[i] for i in redo]), strict=True):
            encoded[i] = e
    return [np.asarray(e.ids, dtype=np.int32) for e in encoded]


def _prefix(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = max(head.rfind(c) for c in " \t\n\r")
    return head[:end] if end > 0 else text


def _key(overrides: Overrides) -> tuple:
    change = overrides.policy_change()
    return tuple(sorted(change.items())) if change else ()


def _normalised(pooled: np.ndarray) -> np.ndarray:
    pooled = np.asarray(pooled, dtype=np.float32)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
