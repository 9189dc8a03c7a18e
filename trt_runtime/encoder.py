"""EarlyExitEncoder: tokenize -> segments -> exit policy -> compaction -> embeddings + exit layers.

Per batch::

    active = every row
    for segment in segments:
        outputs = runner[segment].infer(inputs of the active rows)
        exited  = policy.decide(segment.end, outputs.score)
        write the pooled vector of exited rows to their original rows; record their exit layer
        active  = active without exited        # later segments see fewer rows, trimmed to their longest
    rows still active take the last segment's pooled vector (full depth)

Sentences are sorted by token length before batching (sentence-transformers sorts by characters) so
padding does not dominate, and results are returned in input order.

Two implementations of that loop give the same results: the C one (``trt_runtime.native``, the default
where its extension is built) runs a whole batch in one call, with no Python between segment runs; the
Python one (``_run_padded_python``) is the reference, the fallback, and the one that can trace each
segment's outputs for ``verify`` and ``calibrate``.
"""

from __future__ import annotations

import logging
import numbers
import os
import threading
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from trt_runtime.errors import RuntimeInputError
from trt_runtime.manifest import Manifest, load_manifest
from trt_runtime.policy import ExitPolicy
from trt_runtime.runners import OrtRunner, check_providers, check_threads, default_threads
from trt_runtime.tokenize import TokenBatcher

log = logging.getLogger(__name__)

# outputs of the first segment that every later segment takes as inputs (segment contract, schema 2)
CARRIED = ("mask_bias", "pool_weights")


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


class SegmentTrace(NamedTuple):
    """What one segment run gave (``on_segment``): ``rows`` index the batch as given."""

    layer: int  # the segment's last layer
    rows: np.ndarray  # [R] int: the rows of the batch this segment ran (survivors of earlier exits)
    pooled: np.ndarray  # [R, H] float32: masked-mean pooled hidden state after ``layer``, not normalised
    score: np.ndarray  # [R] float32: the convergence score the graph computed


@dataclass
class EncodeResult:
    embeddings: np.ndarray  # [N, H] float32, input order
    exit_layers: np.ndarray  # [N] int64: the layer whose pooled vector each row returns


class EarlyExitEncoder:
    """Early-exit sentence encoder over a leap-export artifact folder (ONNX Runtime segments).

    ``policy`` defaults to the manifest's (a dict overrides the fields it names); ``theta`` /
    ``min_layer`` override it; ``exits=False`` runs every sample to full depth through the same segments
    (the comparison setting). A build whose model failed its exit-compatibility check has exits off in
    its manifest (``leap-export build``): ``exits=True`` or an explicit ``theta`` / ``min_layer`` turns them on,
    and the first such encoder of the process logs one warning naming the failed checks
    (``warn_exit_check=False`` silences it, for tools that measure the exits themselves).

    ``loop``: ``"auto"`` (the default) runs each batch through the C host loop (``trt_runtime.native``)
    where its extension was built at install, else through the Python loop; ``"native"`` insists on the
    C loop (an error says why it cannot run), ``"python"`` takes the Python loop. The environment
    variable ``TRT_RUNTIME_LOOP`` (auto / native / python) overrides ``"auto"``. ``encoder.loop`` says
    which runs and ``encoder.loop_reason`` why. Both give the same results (``tests/test_native.py``).

    ``shared_pool=True`` (the default) runs every segment on ONE process-wide ONNX Runtime thread pool
    (``trt_runtime.runners``; all segments allocate from one process-wide CPU arena either way). The C
    loop keeps that pool in its own copy of ONNX Runtime (the C library the onnxruntime wheel ships), so
    other libraries' sessions in the process are unaffected. The Python loop keeps it in the Python
    binding's ONNX Runtime, which then requires every later session in the process to opt into that
    pool: a library that creates its own session with default options fails with
    "use_per_session_threads must be false when using a global thread pool". Give such sessions
    ``trt_runtime.ort_session_options()``, or pass ``shared_pool=False`` here: per-session pools
    without spinning in the Python binding (the Python loop), which leave the process's ONNX Runtime
    environment as other libraries expect it (slower at small batches). The pool's size belongs to the
    first encoder of the process: a later encoder asking for other ``threads`` (or, in the Python
    binding, for ``shared_pool=False``) joins it, with a warning.
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
        threads: int | None = None,
        providers: list[str] | None = None,
        check_files: bool = True,
        shared_pool: bool = True,
        loop: str = "auto",
        warn_exit_check: bool = True,
    ) -> None:
        threads = check_threads(threads)  # before any work, whichever loop runs
        check_providers(providers)  # an accelerator asked for and not there is an error, not the CPU
        self.manifest: Manifest = load_manifest(artifacts, check_files=check_files, variant=variant)
        self.segments = self.manifest.segments
        self._warn_exit_check = warn_exit_check
        self._apply_policy(self._policy(policy, theta, min_layer, patience, exits))
        self._variant = variant
        self._threads = threads
        self._providers = providers
        self._shared_pool = shared_pool
        self._runners: list[OrtRunner] | None = None
        self._native = None
        self.loop, self.loop_reason = self._choose_loop(loop)
        if self.loop == "python":
            self.runners  # noqa: B018 - sessions now, not at the first batch
        tok = self.manifest.data["tokenizer"]
        self.tokenizer = TokenBatcher(
            self.manifest.tokenizer_path(), max_length=int(tok["max_length"]), pad_id=int(tok["pad_id"])
        )
        self.stats = ExitStats(self.manifest.num_layers, self.manifest.boundaries)
        if self._native is not None:  # the C loop counts in C (no Python per batch for the statistics)
            ends = [s.end for s in self.segments]
            native_chain = self._native
            self.stats.attach(
                lambda reset: [
                    (end, *row) for end, row in zip(ends, native_chain.totals(reset).tolist(), strict=True)
                ]
            )
        # (segment, output) pairs a later segment takes as its reference pooled vector
        self._refs_needed = {(s.ref_from, s.ref_output) for s in self.segments if s.ref_from is not None}
        self._uniform: dict[tuple[int, int], np.ndarray] = {}
        self._pid = os.getpid()  # a call from another process: this encoder crossed a fork

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
        # per segment: may a sample exit after it? (decided once, not per batch)
        if policy.enabled and self._warn_exit_check:
            _warn_failed_exit_check(self.manifest, policy)
        can_exit = tuple(
            policy.may_exit_at(s.end) and s.end < self.manifest.num_layers for s in self.segments
        )
        self._exit_policy = policy
        self._rule = (float(np.float32(policy.theta)), can_exit, bytes(can_exit))

    def _choose_loop(self, loop: str) -> tuple[str, str]:
        """("native" | "python", why). ``loop="auto"`` (``TRT_RUNTIME_LOOP`` may name one) takes the C loop
        where it can run: CPU sessions on the shared pool (the default), the extension built, graphs whose
        inputs the C loop knows. ``loop="native"`` where it cannot is an error that says why."""
        if loop not in ("auto", "native", "python"):
            raise RuntimeInputError(f"loop must be 'auto', 'native' or 'python', got {loop!r}")
        asked = loop
        if loop == "auto":
            loop = os.environ.get("TRT_RUNTIME_LOOP", "auto").strip().lower() or "auto"
            if loop not in ("auto", "native", "python"):
                raise RuntimeInputError(f"TRT_RUNTIME_LOOP must be auto, native or python, got {loop!r}")
        if loop == "python":
            return "python", f"loop={asked!r}" if asked == "python" else "TRT_RUNTIME_LOOP=python"
        why = None
        if not self._shared_pool:
            why = "shared_pool=False (private per-session pools run on the Python binding)"
        elif self._providers not in (None, ["CPUExecutionProvider"]):
            why = f"providers {self._providers} (the C loop runs CPU sessions only)"
        else:
            plan, why = self._native_plan()
            if plan is not None:
                from trt_runtime import native

                why = native.status(self._threads or default_threads())
                if why is None:
                    self._native = native.NativeChain(plan, self.manifest.hidden_size)
                    return "native", "the C host loop"
        if loop == "native":
            asked_by = "loop='native'" if asked == "native" else "TRT_RUNTIME_LOOP=native"
            raise RuntimeInputError(
                f"{asked_by}: the C host loop cannot run here: {why}; use loop='auto' or 'python'"
            )
        log.debug("Python host loop: %s", why)
        return "python", why

    def _native_plan(self) -> tuple[list[dict] | None, str | None]:
        """The segments as ``trt_runtime.native.NativeChain`` takes them, or (None, why not)."""
        plan = []
        paths = self.manifest.segment_paths(self._variant)
        for seg, entry, path in zip(self.segments, self.manifest.data["segments"], paths, strict=True):
            inputs: dict = {}
            for name in seg.inputs:
                if seg.index == 0 and name in ("input_ids", "attention_mask"):
                    inputs[name] = "ids" if name == "input_ids" else "mask"
                elif seg.index > 0 and name == "hidden_in":
                    inputs[name] = (seg.index - 1, "hidden_out")
                elif seg.index > 0 and name in CARRIED:
                    inputs[name] = (0, name)
                elif name == "ref_pooled" and seg.ref_from is not None:
                    inputs[name] = (seg.ref_from, seg.ref_output)
                else:
                    return None, f"segment {seg.index} takes an input the C loop does not know: {name}"
            if "pooled" not in seg.outputs or "score" not in seg.outputs:
                return None, f"segment {seg.index} has no pooled or score output"
            plan.append(
                {
                    "path": str(path),
                    "end": seg.end,
                    "inputs": inputs,
                    "outputs": entry["outputs"],
                    "score": "score",
                }
            )
        return plan, None

    @property
    def runners(self) -> list[OrtRunner]:
        """The segments' ONNX Runtime sessions in the Python binding: the Python loop's (with the C loop,
        made at the first traced batch)."""
        if self._runners is None:
            runners = [
                OrtRunner(p, threads=self._threads, providers=self._providers, shared_pool=self._shared_pool)
                for p in self.manifest.segment_paths(self._variant)
            ]
            for runner in runners:
                runner.activate()
            self._runners = runners
        return self._runners

    def monolithic_runner(self):
        """The build's monolithic full-depth graph, run by the same ONNX Runtime as this encoder's segments
        (the C library's with the C loop, the Python binding's otherwise) with the same settings: the
        baseline a comparison with this encoder must time."""
        if self.loop == "native":
            from trt_runtime.native import NativeRunner

            full = self.manifest.variant(self._variant)["full"]
            outputs = full.get("outputs") or [{"name": "pooled", "shape": ["batch", "hidden"]}]
            return NativeRunner(self.manifest.full_path(self._variant), outputs, self.manifest.hidden_size)
        runner = OrtRunner(
            self.manifest.full_path(self._variant),
            threads=self._threads,
            providers=self._providers,
            shared_pool=self._shared_pool,
        )
        runner.activate()
        return runner

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
        if self._native is not None and on_segment is None:
            return self._run_padded_native(input_ids, mask)
        return self._run_padded_python(input_ids, mask, on_segment)

    def _run_padded_native(self, input_ids: np.ndarray, mask: np.ndarray):
        theta, _, can_exit = self._rule
        return self._native.run(input_ids, mask, theta, can_exit)  # the statistics are counted in C

    def _run_padded_python(
        self,
        input_ids: np.ndarray,
        mask: np.ndarray,
        on_segment: Callable[[SegmentTrace], object] | None = None,
    ):
        """The loop of the module docstring in Python, written for the batch-1 latency it adds.

        Between two segment runs the host does as little as it can: the CPU caches are full of the
        weights the segment just streamed, so every numpy call there runs cold and costs several
        microseconds instead of the fraction of one a micro-benchmark shows. Scores are therefore read
        once (``tolist``) and the exit test, the statistics and the "nothing exited" fast path are plain
        Python; output arrays are only allocated once some row leaves before the others (for a batch
        that leaves together, the segment's own pooled output is the result).
        """
        batch = input_ids.shape[0]
        stats, (theta, can_exit, _) = self.stats, self._rule
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        carried: dict[str, np.ndarray] = {}  # mask_bias, pool_weights: from the first segment on
        refs: dict[tuple[int, str], np.ndarray] = {}
        active = None  # rows still running (indices into the batch); None: every row, nothing has exited
        out = exit_layer = None  # allocated at the first exit that leaves other rows behind
        last = len(self.segments) - 1
        for seg, runner in zip(self.segments, self.runners, strict=True):
            if seg.ref_from is not None:
                feeds["ref_pooled"] = refs[(seg.ref_from, seg.ref_output)]
            res = runner.infer(feeds)
            pooled, score = res["pooled"], res["score"]
            scores = score.tolist()
            rows = len(scores)
            if on_segment is not None:
                on_segment(
                    SegmentTrace(
                        seg.end, np.arange(batch) if active is None else active.copy(), pooled, score
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
                    return pooled, self._uniform_exit(batch, seg.end)
                out[active] = pooled
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
                if active is None:
                    active = np.arange(batch)
                    out = np.empty((batch, pooled.shape[1]), dtype=np.float32)
                    exit_layer = np.empty(batch, dtype=np.int64)
                out[active[exited]] = pooled[exited]
                exit_layer[active[exited]] = seg.end
                keep = ~exited
                active = active[keep]
                mask = mask[keep]
                width = int(mask.sum(axis=1).max())  # trim padding no survivor needs
                mask = mask[:, :width]
                # every carried tensor has batch first and sequence last
                carried = {name: np.ascontiguousarray(v[keep][..., :width]) for name, v in carried.items()}
                hidden = np.ascontiguousarray(hidden[keep, :width])
                refs = {k: v[keep] for k, v in refs.items()}
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
