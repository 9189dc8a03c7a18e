"""EarlyExitEncoder: tokenize -> segments -> exit policy -> compaction -> embeddings + exit layers.

Sentences are sorted by token length before batching (sentence-transformers sorts by characters) so
padding does not dominate, and results are returned in input order. Each batch runs through a backend
(:mod:`trt_runtime.backends`: ONNX Runtime on the CPU or on CUDA, TensorRT) composed with the exit policy by
one loop, :class:`trt_runtime.chain.SegmentChain`, or by the backend's own fast path where it has one (the C
host loop of the CPU backend), with the same results. A traced batch (``on_segment``) always runs the loop.
"""

from __future__ import annotations

import logging
import numbers
import os
import threading
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_runtime.backends import choose
from trt_runtime.chain import SegmentChain, SegmentTrace
from trt_runtime.errors import RuntimeInputError
from trt_runtime.manifest import Manifest, load_manifest
from trt_runtime.policy import ExitPolicy
from trt_runtime.runners import check_threads
from trt_runtime.stats import ExitStats
from trt_runtime.tokenize import TokenBatcher

log = logging.getLogger(__name__)

__all__ = ["EarlyExitEncoder", "EncodeResult", "ExitStats", "SegmentTrace"]


@dataclass
class EncodeResult:
    embeddings: np.ndarray  # [N, H] float32, input order
    exit_layers: np.ndarray  # [N] int64: the layer whose pooled vector each row returns


class EarlyExitEncoder:
    """Early-exit sentence encoder over a leap-export artifact folder.

    ``policy`` defaults to the manifest's (a dict overrides the fields it names); ``theta`` /
    ``min_layer`` override it; ``exits=False`` runs every sample to full depth through the same segments
    (the comparison setting). A build whose model failed its exit-compatibility check has exits off in
    its manifest (``leap-export build``): ``exits=True`` or an explicit ``theta`` / ``min_layer`` turns them on,
    and the first such encoder of the process logs one warning naming the failed checks
    (``warn_exit_check=False`` silences it, for tools that measure the exits themselves).

    ``backend``: ``"auto"`` (the default) takes TensorRT where engines for this GPU were built, else ONNX
    Runtime on CUDA where onnxruntime-gpu and a GPU are there, else ONNX Runtime on the CPU;
    ``encoder.backend`` says which runs and ``encoder.backend_reason`` why. A backend named here that cannot
    run is an error naming what is missing (:mod:`trt_runtime.backends`). ``variant`` picks the build
    (fp32, int8, fp16, a TensorRT engine set); None: the manifest's default (for TensorRT: this GPU's engines).

    Options of the ONNX Runtime CPU backend. ``loop``: ``"auto"`` runs each batch through the C host loop
    (``trt_runtime.native``) where its extension was built at install, else through the Python loop;
    ``"native"`` insists on the C loop, ``"python"`` takes the Python loop; ``TRT_RUNTIME_LOOP`` (auto /
    native / python) overrides ``"auto"``. ``encoder.loop`` says which runs and ``encoder.loop_reason`` why;
    both give the same results to the last bit. ``shared_pool=True`` (the default) runs every segment on ONE
    process-wide ONNX Runtime thread pool (``trt_runtime.runners``; all segments allocate from one
    process-wide CPU arena either way). The C loop keeps that pool in its own copy of ONNX Runtime (the C
    library the onnxruntime wheel ships), so other libraries' sessions in the process are unaffected. The
    Python loop keeps it in the Python binding's ONNX Runtime, which then requires every later session in
    the process to opt into that pool: a library that creates its own session with default options fails
    with "use_per_session_threads must be false when using a global thread pool". Give such sessions
    ``trt_runtime.ort_session_options()``, or pass ``shared_pool=False``: per-session pools without
    spinning in the Python binding, slower at small batches. The pool's size belongs to the first encoder
    of the process: a later encoder asking for other ``threads`` joins it, with a warning.
    """

    def __init__(
        self,
        artifacts: str | os.PathLike,
        *,
        policy: ExitPolicy | Mapping | None = None,
        theta: float | None = None,
        min_layer: int | None = None,
        patience: int | None = None,
        exits: bool | None = None,
        variant: str | None = None,
        backend: str = "auto",
        threads: int | None = None,
        check_files: bool = True,
        shared_pool: bool = True,
        loop: str = "auto",
        warn_exit_check: bool = True,
        backend_options: Mapping | None = None,
    ) -> None:
        threads = check_threads(threads)  # before any work, whichever backend runs
        self.manifest: Manifest = load_manifest(artifacts, check_files=False)
        backend_cls, spec, self.backend_reason = choose(self.manifest, variant, backend)
        if check_files:
            self.manifest.check_files(spec.name)
        self.variant = spec.name
        self.segments = self.manifest.segments
        self._warn_exit_check = warn_exit_check
        self._apply_policy(self._policy(policy, theta, min_layer, patience, exits))
        options = {"shared_pool": shared_pool, "loop": loop, **(backend_options or {})}
        self._backend = backend_cls(self.manifest, spec, threads=threads, options=options)
        self.backend = backend_cls.name
        self.loop, self.loop_reason = self._backend.loop
        tok = self.manifest.tokenizer
        self.tokenizer = TokenBatcher(
            self.manifest.tokenizer_path(), max_length=tok.max_length, pad_id=tok.pad_id
        )
        self.stats = ExitStats(self.manifest.num_layers, self.manifest.boundaries)
        self._fast = self._backend.fast_path()
        if (
            self._fast is not None
        ):  # a fast path counts in its own loop (no Python per batch for the statistics)
            ends = [s.end for s in self.segments]
            fast = self._fast
            self.stats.attach(
                lambda reset: [
                    (end, *row) for end, row in zip(ends, fast.totals(reset).tolist(), strict=True)
                ]
            )
        self._chain: SegmentChain | None = None
        if self._fast is None:
            self._loop_chain()  # sessions now, not at the first batch
        self._pid = os.getpid()  # a call from another process: this encoder crossed a fork

    def _loop_chain(self) -> SegmentChain:
        """The generic loop over the backend's runners (with a fast path, made at the first traced batch)."""
        if self._chain is None:
            self._chain = SegmentChain(
                self.segments, self._backend.segment_runners(), self._backend.ops, self.stats
            )
        return self._chain

    @property
    def policy(self) -> ExitPolicy:
        return self._exit_policy

    @policy.setter
    def policy(self, value: ExitPolicy | Mapping) -> None:
        """A new policy for later calls, checked as the constructor checks one (a dict overrides the fields it names)."""
        self._apply_policy(self._policy(value, None, None, None, None))

    def _apply_policy(self, policy: ExitPolicy) -> None:
        # the loop reads this rule, not the policy: assigning ``encoder.policy`` must update it too. One
        # tuple, swapped in one assignment and read once per batch, so a call running in another thread
        # sees the old rule or the new one, never half of each.
        # theta as the float32 the graphs' scores are compared in (numpy compares float32 with a float in
        # float32), so the plain-Python exit test in the loop decides exactly as ``score >= theta`` does;
        # per segment: may a sample exit after it? (decided once, not per batch); the C loop takes the policy's
        # fields and decides the same from them (leap_run)
        if policy.enabled and self._warn_exit_check:
            _warn_failed_exit_check(self.manifest, policy)
        can_exit = tuple(
            policy.may_exit_at(s.end) and s.end < self.manifest.num_layers for s in self.segments
        )
        self._exit_policy = policy
        theta = float(np.float32(policy.theta))
        self._rule = (theta, can_exit, (theta, policy.min_layer, policy.patience, policy.enabled))

    @property
    def runners(self):
        """The backend's segment runners, one per segment, as the generic loop runs them."""
        return self._loop_chain().runners

    def monolithic_runner(self):
        """The build's monolithic full-depth graph in the same runtime and settings as this encoder's segments
        (with the C loop, the C library's copy of ONNX Runtime): the baseline a comparison must time.
        ``infer({"input_ids", "attention_mask"})`` takes host arrays and returns ``{"pooled": host array}``."""
        return self._backend.monolithic_runner()

    def event_timer(self):
        """(timer, why) for timing calls on the device's clock: on a GPU backend a CUDA-event timer,
        ``timer(fn, x)`` -> seconds ``fn(x)`` took (``trt_runtime.backends.cuda_events``); on the CPU None, and
        why. ``leap-export bench`` times with it where there is one."""
        return self._backend.event_timer()

    def close(self) -> None:
        """Release the backend's sessions, engines and device memory now rather than at collection."""
        self._backend.close()
        self._chain = None
        self._fast = None

    @property
    def root(self) -> Path:
        return self.manifest.root

    @property
    def embedding_dim(self) -> int:
        return self.manifest.hidden_size

    def _policy(self, policy, theta, min_layer, patience, exits) -> ExitPolicy:
        """The policy the loop runs: the manifest's, overridden by what the caller names.

        Exits are on where the manifest's policy has them on, or where the caller asks for them knowingly:
        ``exits=True``, an explicit ``theta`` or ``min_layer`` (arguments, or keys of a ``policy`` dict), or
        an :class:`ExitPolicy` object (its own ``enabled``). ``exits=False`` always runs full depth.
        """
        if exits is not None and not isinstance(exits, bool | np.bool_):
            raise RuntimeInputError(
                f"exits must be True, False or None (the manifest's default), got {exits!r}"
            )
        default = self.manifest.default_policy
        if isinstance(policy, Mapping):
            # the fields it names override the manifest's policy; the rest (patience k, min_layer) stay the
            # build's, not ExitPolicy's defaults (k=1 would be refused on a k=2 build, min_layer 1 would act
            # on checks the build planned no exit at). A theta named there is a request for exits
            asked = {"enabled": True} if "theta" in policy or "min_layer" in policy else {}
            policy = ExitPolicy.from_dict({**default.to_dict(), **asked, **policy})
        elif policy is not None and not isinstance(policy, ExitPolicy):
            raise RuntimeInputError(
                f"policy must be a trt_runtime.ExitPolicy or a dict of its fields, got {type(policy).__name__}"
            )
        base = policy or default
        enabled = base.enabled
        if exits is not None:
            enabled = bool(exits)
        elif theta is not None or min_layer is not None:
            enabled = True
        policy = ExitPolicy(
            theta=base.theta if theta is None else theta,
            patience=base.patience if patience is None else patience,
            min_layer=base.min_layer if min_layer is None else min_layer,
            enabled=enabled,
        )
        if policy.min_layer > self.manifest.num_layers:
            raise RuntimeInputError(
                f"min_layer {policy.min_layer} exceeds the model's {self.manifest.num_layers} layers; "
                f"pass a value from 1 to {self.manifest.num_layers}"
            )
        if policy.patience != self.manifest.patience:
            raise RuntimeInputError(
                f"these artifacts compute convergence scores with patience k={self.manifest.patience} inside "
                f"the graphs; k={policy.patience} needs a rebuild: `leap-export build ... --patience {policy.patience}`"
            )
        # a segment built as one no sample could exit after scores cos(p_b, p_a) when b - k < a (k > 1):
        # a lower min_layer at run time must not act on a score that is not the rule's
        wrong = [
            s.end
            for s in self.manifest.segments
            if policy.may_exit_at(s.end)
            and s.end < self.manifest.num_layers
            and s.ref_layer != s.end - policy.patience
        ]
        if wrong:
            raise RuntimeInputError(
                f"min_layer {policy.min_layer} allows exits after layer {', '.join(map(str, wrong))}, where these "
                f"artifacts' graphs compare with another layer than l - {policy.patience} (the build planned no "
                f"exit there); pass a min_layer above {max(wrong)}, or rebuild with --min-layer {policy.min_layer}"
            )
        checks = [s.end for s in self.manifest.segments[:-1]]
        if min_layer is not None and policy.enabled and min_layer not in checks:
            later = [b for b in checks if b > min_layer]
            log.warning(
                "min_layer %d: these artifacts check for exits only after layer %s, so it acts as %s; a check "
                "after layer %d needs a rebuild with --boundaries",
                min_layer,
                ", ".join(map(str, checks)) or "-",
                f"min_layer {later[0]}" if later else "full depth (no exit)",
                min_layer,
            )
        return policy

    # -- public API -----------------------------------------------------------------------------------

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = True,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        """Like ``SentenceTransformer.encode``: ``[N, H]`` float32 (``[H]`` for a single string).

        Embeddings are L2-normalised when ``normalize_embeddings`` is true (the default here;
        sentence-transformers defaults to False) or the model itself ends in a Normalize module. Pass
        ``normalize_embeddings=False`` for sentence-transformers' raw pooled vectors of a model without
        one. Only numpy output exists: ``convert_to_numpy=False`` is refused, and sentence-transformers'
        other keywords (``convert_to_tensor``, ``output_value``, ``precision``, ``device``, prompts) are
        not accepted.
        """
        if not convert_to_numpy:
            raise RuntimeInputError(
                "convert_to_numpy=False is not supported: trt_runtime returns numpy arrays only (it does not "
                "need torch); convert with torch.from_numpy(...) if you need tensors"
            )
        single = isinstance(sentences, str)
        result = self.encode_with_exits(
            [sentences] if single else sentences,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            normalize_embeddings=normalize_embeddings,
        )
        return result.embeddings[0] if single else result.embeddings

    def encode_with_exits(
        self,
        sentences: Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = True,
        *,
        on_batch: Callable[[int], object] | None = None,
    ) -> EncodeResult:
        """``encode`` that also returns each sentence's exit layer.

        ``on_batch``: called after every batch with the number of sentences it held, to drive a caller's
        own progress bar across several calls (``on_batch=bar.update``).
        """
        texts = _check_sentences(sentences)
        if os.getpid() != self._pid:
            self._crossed_a_fork()
        if (
            isinstance(batch_size, bool | np.bool_)
            or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1
        ):
            raise RuntimeInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        if self._backend.max_batch is not None:  # engines built for at most this many rows per run
            batch_size = min(batch_size, self._backend.max_batch)
        n, hidden = len(texts), self.manifest.hidden_size
        embeddings = np.zeros((n, hidden), dtype=np.float32)
        exit_layers = np.zeros(n, dtype=np.int64)
        if n == 0:
            return EncodeResult(embeddings, exit_layers)
        ids = self.tokenizer.encode(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        starts = range(0, n, batch_size)
        if show_progress_bar or (show_progress_bar is None and n > 4 * batch_size and _interactive()):
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        for start in starts:
            rows = order[start : start + batch_size]
            pooled, layers = self.run_ids([ids[i] for i in rows])
            embeddings[rows] = pooled
            exit_layers[rows] = layers
            if on_batch is not None:
                on_batch(len(rows))
        if normalize_embeddings or self.manifest.normalize:
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            embeddings /= np.maximum(norms, 1e-12)
        return EncodeResult(embeddings, exit_layers)

    def _crossed_a_fork(self) -> None:
        """Warn once per process: ONNX Runtime's pool threads do not survive a fork (docs/runtime.md)."""
        log.warning(
            "this encoder was created in process %d and is used in process %d, after a fork: ONNX Runtime's "
            "pool threads do not survive it, so every run here uses one core, and a fork while another thread "
            "was encoding can hang it. Create the encoder after the fork (in each worker)",
            self._pid,
            os.getpid(),
        )
        self._pid = os.getpid()

    # -- the loop -------------------------------------------------------------------------------------

    def run_ids(
        self, ids: Sequence[np.ndarray], *, on_segment: Callable[[SegmentTrace], object] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One batch of token ids (``encoder.tokenizer.encode`` output), padded to its longest row and run as
        it is: (each row's pooled vector at its exit ``[B, H]``, not normalised; exit layers ``[B]``).

        ``on_segment``: the tracing hook. Called after every segment run with a :class:`SegmentTrace` (the
        rows it ran and its pooled vectors and scores); a traced batch runs the Python loop, whose results
        equal the C loop's to the last bit.
        """
        input_ids, mask = self.tokenizer.pad(list(ids))
        return self.run_padded(input_ids, mask, on_segment=on_segment)

    def run_padded(
        self,
        input_ids: np.ndarray,
        mask: np.ndarray,
        *,
        on_segment: Callable[[SegmentTrace], object] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``run_ids`` for a batch already padded: ``input_ids`` and ``mask`` int32 ``[B, S]``."""
        rule = self._rule
        if self._fast is not None and on_segment is None:
            return self._fast.run(input_ids, mask, rule[2])  # the statistics are counted there
        return self._loop_chain().run(input_ids, mask, rule, on_segment)


_exit_check_warned: set[str] = set()  # artifact folders already warned about in this process
_exit_check_lock = threading.Lock()


def _warn_failed_exit_check(manifest: Manifest, policy: ExitPolicy) -> None:
    """Exits on for a build that failed its exit-compatibility check: one warning per folder and process."""
    check = manifest.exit_check
    if not check or check.get("passed", True):
        return
    key = os.path.realpath(manifest.root)
    with _exit_check_lock:
        if key in _exit_check_warned:
            return
        _exit_check_warned.add(key)
    failed = "; ".join(check.get("failed") or []) or "see its manifest's exit_check"
    log.warning(
        "exits are on (theta %g) for %s, which failed its exit-compatibility check (%s): exited embeddings may "
        "be far from full depth; `leap-export verify %s --theta %g` measures how far",
        policy.theta,
        manifest.root,
        failed,
        manifest.root,
        policy.theta,
    )


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


def _check_sentences(sentences) -> list[str]:
    if isinstance(sentences, str):
        return [sentences]
    # iterable, but not a list of texts: a dict would embed its keys, a set in no order a caller can map
    # back, bytes as integers
    if isinstance(sentences, Mapping | Set | bytes | bytearray | memoryview):
        kind = type(sentences).__name__
        hint = (
            "decode it to str first"
            if isinstance(sentences, bytes | bytearray | memoryview)
            else "pass a list of strings"
        )
        raise RuntimeInputError(f"sentences must be a string or a list of strings, got a {kind}; {hint}")
    if sentences is None or not isinstance(sentences, Sequence):
        try:
            sentences = list(sentences)
        except TypeError:
            raise RuntimeInputError(
                f"sentences must be a string or a list of strings, got {type(sentences).__name__}"
            ) from None
    bad = [(i, type(s).__name__) for i, s in enumerate(sentences) if not isinstance(s, str)]
    if bad:
        where = ", ".join(f"#{i} ({t})" for i, t in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise RuntimeInputError(f"every sentence must be a str; not strings: {where}")
    return list(sentences)
