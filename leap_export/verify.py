"""Parity as data: PyTorch (the source model) vs ONNX Runtime segments, per segment and end to end.

``verify`` returns a :class:`VerifyReport` that is truthy only when every check passed, saved as JSON;
the CLI exits 1 and lists every failure. Checks:

- artifact integrity (hashes) and that the source weights are the ones the artifacts were built from;
- the manifest settings the runtime trusts, against the source model: max sequence length (tokenizer
  and top level), normalisation, and the precision label against the graphs' own operators (the
  stricter precision's tolerances apply: a label cannot loosen them);
- two probe texts longer than the max sequence length are always added (truncation, every position
  embedding, a padding-heavy batch);
- per segment: pooled vector vs the reference layer (min cosine, max abs diff) and the convergence
  score vs cos(p_b, p_{b-k}) of the reference (max abs diff);
- end to end at full depth: the segment chain and the monolithic graph vs the reference final layer;
- with exits, at the default policy and at a theta that splits the batch (so compaction runs):
  exit-layer agreement with the exit rule applied to the reference, and min cosine of each exited
  embedding to the reference at that layer. A sample whose reference score lies within twice the
  measured score error of theta, at a check it reaches, may flip legitimately and is left out; where
  fewer than 10 samples remain, every sample counts (a stricter test). The split-theta check runs with
  exits on even when the manifest's policy has them off;
- compaction: batched results equal batch-1 results (same exit layers, cosine >= tolerance);
- exit quality at the policy verified (the manifest's, or ``theta`` / ``min_layer`` given): each exited
  embedding against the model's own full-depth one (mean and 1st-percentile cosine, NN@10), so a PASS
  means "close to full depth" as well as "numerically right"; a failure names the worst sentences.

A graph or manifest the checks cannot run on (a missing output, an inconsistent segment) is a failure
in the report, not a traceback. The report's ``info`` holds what an audit needs: tool versions, the
manifest's and the sentences' sha256, the reference model's path and weights hash, token statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leap_export.errors import LeapError
from trt_runtime.fileio import write_json_atomic
from trt_runtime.policy import ExitPolicy, convergence_scores, cosine

# Tolerances per precision. fp32 must agree with PyTorch to float rounding.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"min_cosine": 0.99999, "max_abs_diff": 1e-4, "score_abs_diff": 1e-4, "exit_agreement": 1.0},
    # dynamic int8: activation scales are computed per batch, so results depend (slightly) on batch
    # composition; exit layers may flip near theta, and compaction equivalence holds approximately
    # (LEAP-MiniLM, 1000 held-out sentences: min cosine 0.9926, score diff up to 0.015, pooled abs up to 0.33)
    "int8": {"min_cosine": 0.98, "max_abs_diff": 0.5, "score_abs_diff": 0.03, "exit_agreement": 0.9},
    # fp16 (emulated on the CPU, or run on a GPU) against PyTorch fp32: FP16 rounding moves a cosine in its
    # sixth digit and an exit decision only for a score at theta (docs/RESULTS.md, "FP16")
    "fp16": {"min_cosine": 0.999, "max_abs_diff": 0.05, "score_abs_diff": 0.005, "exit_agreement": 0.99},
}


BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")


@dataclass
class Check:
    name: str
    metric: str
    value: float
    threshold: float
    passed: bool
    detail: str = ""

    def describe(self) -> str:
        """One line for a failure list; a check that could not run (``fail``) has no value to show."""
        if self.metric == "error":
            return f"{self.name}: {self.detail}"
        return f"{self.name}: {self.metric} = {self.value:.6g} (threshold {self.threshold:.6g}) {self.detail}".strip()


@dataclass
class VerifyReport:
    artifacts: str
    variant: str
    sentences: int
    tolerances: dict[str, float]
    checks: list[Check] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # per backend: {"ran": True, "variant", "precision", "tolerances", "info"} or {"ran": False, "why_not"}
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def add(
        self,
        name: str,
        metric: str,
        value: float,
        threshold: float,
        *,
        higher_is_better: bool,
        detail: str = "",
    ) -> None:
        value = float(value)
        ok = value >= threshold if higher_is_better else value <= threshold
        self.checks.append(Check(name, metric, value, threshold, bool(ok and np.isfinite(value)), detail))

    def fail(self, name: str, detail: str) -> None:
        self.checks.append(Check(name, "error", float("nan"), float("nan"), False, detail))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = bool(self)
        d["failures"] = [c.describe() for c in self.failures]
        return d

    def save(self, path: str | os.PathLike) -> None:
        from leap_export.quality import jsonable

        write_json_atomic(Path(path), jsonable(self.to_dict()))


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _reference_source(manifest, model: str | None):
    """The model to check against: ``model``, else the one the build came from, found from any folder."""
    from leap_export.sources import resolve_model

    if model is not None:
        return resolve_model(model)
    src = manifest.source
    if src.get("path") and Path(src["path"]).is_dir():
        return resolve_model(src["path"])  # absolute: a relative spec was relative to the build's cwd
    try:
        return resolve_model(src["spec"])  # a short name, resolved in this environment
    except LeapError:
        raise LeapError(
            f"the model these artifacts were built from ({src['spec']}, at {src.get('path')}) is not on this "
            "machine; pass --model FOLDER with a copy of it (its weights are checked against the build's)"
        ) from None


def verify(
    artifacts: str | os.PathLike,
    sentences: list[str] | None = None,
    *,
    variant: str | None = None,
    batch_size: int = 16,
    model: str | None = None,
    progress: bool = True,
    theta: float | None = None,
    min_layer: int | None = None,
    on_stage: Callable[[str], object] | None = None,
    backends: Sequence[str] = BACKENDS,
) -> VerifyReport:
    """Run every parity check; never raises for a failed check (it is recorded), only for unusable input.

    Two probe texts longer than the model's max sequence length are always added to ``sentences``, so
    truncation, every position embedding and a padding-heavy batch are checked whatever the sentences.
    ``theta`` / ``min_layer``: verify the policy a deployment will run (exits on) instead of the manifest's.
    ``on_stage``: called with one line as each stage starts and ends (the CLI prints them on stderr).
    ``backends``: the runtimes checked against the reference, each where it can run here (the report's
    ``backends`` says which ran, and why each other one did not).
    """
    from leap_export.textio import sample_sentences
    from trt_runtime.errors import ArtifactError
    from trt_runtime.manifest import load_manifest

    stage = _Stages(on_stage)
    sentences = list(sentences) if sentences else sample_sentences()
    manifest = load_manifest(artifacts, check_files=False)
    variant = variant or manifest.default_variant
    label = manifest.variant(variant).get("precision", variant)
    tol = TOLERANCES.get(label, TOLERANCES["fp32"])
    max_length = manifest.tokenizer.max_length
    policy = manifest.default_policy
    if theta is not None or min_layer is not None:  # what the runtime does with them: exits on
        policy = ExitPolicy(
            theta=policy.theta if theta is None else theta,
            patience=policy.patience,
            min_layer=policy.min_layer if min_layer is None else min_layer,
        )
    sentences += long_probes(max_length)
    report = VerifyReport(str(artifacts), variant, len(sentences), dict(tol))
    with stage("hashing the artifact files"):
        try:
            manifest.check_files(variant)
            report.add("artifact files", "intact", 1.0, 1.0, higher_is_better=True)
        except ArtifactError as e:
            report.fail("artifact files", str(e))
            return report

        # the tolerance follows what the graphs are, not only what the manifest calls them
        kinds = graph_precisions(manifest.segment_paths(variant) + [manifest.full_path(variant)])
    found = sorted(set(kinds.values()), key=PRECISION_ORDER.index)
    precision = found[0] if len(found) == 1 else "mixed: " + ", ".join(found)
    if found != [label]:
        if len(found) == 1:
            what = f"its graphs are {precision}"
        else:  # a graph of another build left in, e.g. an int8 variant whose full.onnx is the fp32 one
            what = "its graphs are mixed: " + ", ".join(
                f"{path.relative_to(manifest.root)} is {kind}"
                for path, kind in kinds.items()
                if kind != label
            )
        report.fail(
            "precision",
            f"variant {variant} is labelled {label!r} in manifest.json, but {what}; "
            "checked with the strictest tolerances. Rebuild it, or fix the label",
        )
    strict = min(
        (label, *kinds.values()), key=lambda p: PRECISION_ORDER.index(p) if p in PRECISION_ORDER else 0
    )
    tol = TOLERANCES.get(strict, TOLERANCES["fp32"])
    report.tolerances = dict(tol)

    with stage("hashing the reference model"):
        source = _reference_source(manifest, model)  # LeapError: no reference to verify against
        report.info.update(_audit(manifest, source, sentences, variant, precision, policy))
    try:
        _run_checks(
            report,
            artifacts,
            manifest,
            source,
            sentences,
            variant,
            batch_size,
            tol,
            progress,
            policy,
            stage,
            backends,
        )
    except Exception as e:  # noqa: BLE001 - a graph or manifest the checks cannot run on fails, in the report
        report.fail("verify stopped", f"{type(e).__name__}: {e}")
    report.info["timing_s"] = stage.timings
    return report


class _Stages:
    """``with stage("what"):`` reports "verify: what ..." and "verify: what: 1.2 s" and keeps the timings."""

    def __init__(self, on_stage: Callable[[str], object] | None) -> None:
        self.on_stage = on_stage
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, what: str):
        if self.on_stage:
            self.on_stage(f"verify: {what} ...")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - t0
            self.timings[what] = round(took, 3)
            if self.on_stage:
                self.on_stage(f"verify: {what}: {took:.1f} s")


PRECISION_ORDER = ("fp32", "fp16", "int8")  # strictest tolerances first
_INT8_OPS = {
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QLinearMatMul",
    "DynamicQuantizeMatMul",
    "QuantizeLinear",
}


def graph_precisions(paths: list[Path]) -> dict[Path, str]:
    """Each graph's precision: ``int8`` where it holds quantised operators, ``fp16`` where it holds float16
    weights, else ``fp32``."""
    import onnx

    kinds = {}
    for path in paths:
        graph = onnx.load(str(path), load_external_data=False).graph
        if any(node.op_type in _INT8_OPS for node in graph.node):
            kinds[path] = "int8"
        elif any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer):
            kinds[path] = "fp16"
        else:
            kinds[path] = "fp32"
    return kinds


def long_probes(max_length: int) -> list[str]:
    """Two texts of more than ``max_length`` words (every word is at least one token), so both are
    truncated: truncation and the last position embeddings are checked, in a batch with short rows."""
    from leap_export.textio import sample_sentences

    words = " ".join(sample_sentences()).split()
    need = max_length + 16
    text = (words * (need // len(words) + 1))[:need]
    return [" ".join(text), " ".join(reversed(text))]


def _audit(manifest, source, sentences, variant, precision, policy) -> dict[str, Any]:
    """What a reader of the report needs to know what was compared: versions, inputs, their hashes."""
    import hashlib
    from datetime import UTC, datetime

    from leap_export.export import _tool_versions
    from trt_runtime.manifest import sha256_file

    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tools": _tool_versions(),
        "manifest_sha256": sha256_file(manifest.root / "manifest.json"),
        "precision": precision,
        "reference": {
            "path": str(source.path),
            "weights_sha256": source.weights_sha256,
            "max_seq_length": source.max_seq_length,
            "normalize": source.normalize,
        },
        "policy": policy.to_dict(),
        "default_policy": manifest.default_policy.to_dict(),
        "sentences_sha256": hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest(),
    }


def _run_checks(
    report,
    artifacts,
    manifest,
    source,
    sentences,
    variant,
    batch_size,
    tol,
    progress,
    policy,
    stage,
    backends,
) -> None:
    from leap_export.reference import layer_embeddings

    built_from = manifest.source.get("weights_sha256")
    report.add(
        "source weights",
        "sha256 match",
        float(source.weights_sha256 == built_from),
        1.0,
        higher_is_better=True,
        detail=""
        if source.weights_sha256 == built_from
        else f"{source.path} has other weights than the artifacts were built from; pass --model",
    )
    shape = {
        "architecture": (source.architecture, manifest.architecture),
        "layers": (source.num_layers, manifest.num_layers),
        "hidden size": (source.hidden_size, manifest.hidden_size),
    }
    differ = [
        f"{what} {theirs} (the build: {ours})" for what, (theirs, ours) in shape.items() if theirs != ours
    ]
    if differ:  # nothing below can be compared
        report.fail(
            "source model",
            f"{source.path} is another model: {', '.join(differ)}; pass the model the "
            "artifacts were built from with --model, or verify the build of this one",
        )
        return
    # settings the runtime takes from the manifest, against the source model's own
    max_length = manifest.tokenizer.max_length
    lengths = {"tokenizer.max_length": max_length, "max_seq_length": manifest.max_seq_length}
    wrong = [f"{k} {v}" for k, v in lengths.items() if v != source.max_seq_length]
    report.add(
        "max sequence length",
        "matches source",
        float(not wrong),
        1.0,
        higher_is_better=True,
        detail=f"manifest {', '.join(wrong)}; the source model truncates at {source.max_seq_length}"
        if wrong
        else "",
    )
    report.add(
        "normalisation",
        "matches source",
        float(manifest.normalize == source.normalize),
        1.0,
        higher_is_better=True,
        detail=""
        if manifest.normalize == source.normalize
        else f"manifest normalize={manifest.normalize}, the source model's is {source.normalize}",
    )

    with stage(f"reference: PyTorch on {len(sentences)} sentences"):
        ref = layer_embeddings(source, sentences, batch_size=batch_size, show_progress_bar=progress)
    report.info["reference_scores"] = {
        str(b): float(np.mean(convergence_scores(ref, b, manifest.patience))) for b in manifest.boundaries
    }
    lengths_seen = np.array([len(x) for x in _tokenize(manifest, sentences)])
    report.info["tokens"] = {
        "max_length": max_length,
        "min": int(lengths_seen.min()),
        "median": float(np.median(lengths_seen)),
        "max": int(lengths_seen.max()),
        "truncated_rows": int((lengths_seen >= max_length).sum()),
    }
    # every backend that can run here, against the same reference: the CPU always, CUDA and TensorRT where
    # present. One that cannot run is reported with the reason, never as passing
    report.backends = {}
    emulation = Path(tempfile.mkdtemp(prefix="leap-verify-fp16-"))
    try:
        _each_backend(report, artifacts, manifest, sentences, variant, batch_size, tol, policy, stage, backends,
                      ref, emulation)  # fmt: skip
    finally:
        shutil.rmtree(emulation, ignore_errors=True)


def _each_backend(report, artifacts, manifest, sentences, variant, batch_size, tol, policy, stage, backends, ref,
                  emulation) -> None:  # fmt: skip
    from trt_runtime.backends import why_not

    for name in backends:
        spec, why = why_not(name, manifest, None if name == "tensorrt" else variant)
        if spec is None:
            report.backends[name] = {"ran": False, "why_not": why}
            continue
        if name == "tensorrt":  # engines: their own build, of their own precision
            scope_tol = TOLERANCES.get(spec.precision, TOLERANCES["fp16"])
        else:
            scope_tol = tol
        scope = _Scope(report, "" if name == "onnxruntime-cpu" else f"[{name}] ")
        report.backends[name] = {
            "ran": True,
            "variant": spec.name,
            "precision": spec.precision,
            "tolerances": dict(scope_tol),
        }
        if name != "onnxruntime-cpu":  # the CPU's figures stay at the top level, where reports have them
            report.backends[name]["info"] = scope.info
        folder = artifacts
        if name == "onnxruntime-cpu" and spec.precision == "fp16":
            # ONNX Runtime's CPU kernels compute most FP16 ops in FP32: run graphs that round as a GPU does
            with stage("FP16 graphs emulated for the CPU (leap_export.fp16.emulated)"):
                folder = _emulated_fp16(manifest, spec.name, emulation)
            report.backends[name]["fp16_oracle"] = FP16_ORACLE
        with stage(f"{name} ({spec.name})"):
            _backend_checks(scope, name, spec.name, folder, manifest, sentences, ref, policy, batch_size,
                            scope_tol, stage)  # fmt: skip
        if name == "onnxruntime-cpu":
            report.info.update(scope.info)


FP16_ORACLE = (
    "the fp16 graphs emulated on ONNX Runtime's CPU provider (leap_export.fp16.emulated): every FP16 tensor "
    "rounded to FP16 after the op that makes it, products and sums accumulated in FP32, overflow to inf"
)


def _emulated_fp16(manifest, variant: str, folder: Path) -> Path:
    """An artifact folder in ``folder`` whose ``variant`` runs the emulated copies of the fp16 graphs (the same
    manifest otherwise, the tokenizer linked), for the CPU checks of an fp16 build."""
    import json
    import shutil

    from leap_export.fp16 import emulated
    from trt_runtime.manifest import MANIFEST_NAME, sha256_file

    data = json.loads(json.dumps(manifest.data))
    entry = data["variants"][variant]
    (folder / "emulated").mkdir()
    for file_entry in [*entry["segments"], entry["full"]]:
        target = Path("emulated") / Path(file_entry["file"]).name
        emulated(manifest.root / file_entry["file"], folder / target)
        file_entry.update(file=str(target), sha256=sha256_file(folder / target))
    tokenizer = Path(data["tokenizer"]["file"])
    shutil.copytree(manifest.root / tokenizer.parent, folder / tokenizer.parent)
    data["variants"] = {variant: entry}
    data["default_variant"] = variant
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    return folder


def _tokenize(manifest, sentences):
    from trt_runtime.tokenize import TokenBatcher

    tok = manifest.tokenizer
    return TokenBatcher(manifest.tokenizer_path(), max_length=tok.max_length, pad_id=tok.pad_id).encode(
        sentences
    )


class _Scope:
    """One backend's checks: names prefixed, figures in its own ``info`` (the CPU's go to the top level)."""

    def __init__(self, report: VerifyReport, prefix: str) -> None:
        self.report, self.prefix, self.info = report, prefix, {}

    def add(self, name: str, *args, **kwargs) -> None:
        self.report.add(self.prefix + name, *args, **kwargs)

    def fail(self, name: str, detail: str) -> None:
        self.report.fail(self.prefix + name, detail)


def _backend_checks(
    scope, backend, variant, artifacts, manifest, sentences, ref, policy, batch_size, tol, stage
):
    from trt_runtime.encoder import EarlyExitEncoder

    k = manifest.patience
    ref_layers = {seg.end: seg.ref_layer for seg in manifest.segments}
    # per segment, and the segment chain at full depth, from one traced run. The exit checks below run the
    # backend's default loop (on the CPU the C one where it is built) and compare it with this loop, one
    # encoder serving every policy in turn (one set of sessions, not one per check)
    common = {"variant": variant, "backend": backend, "check_files": False, "warn_exit_check": False}
    traced = EarlyExitEncoder(artifacts, exits=False, loop="python", **common)
    ids = traced.tokenizer.encode(sentences)
    chain = np.zeros((len(ids), manifest.hidden_size), dtype=np.float32)
    with stage("segments, exits off"):
        for start in range(0, len(ids), batch_size):
            trace: list = []
            pooled, _ = traced.run_ids(ids[start : start + batch_size], on_segment=trace.append)
            chain[start : start + len(pooled)] = pooled
            for layer, rows, seg_pooled, score in trace:
                _segment_acc(scope, layer, start + rows, seg_pooled, score, ref, ref_layers[layer])
        _finish_segments(scope, manifest, tol)
    _compare_end_to_end(scope, "segments, exits off", _normalise(chain), _normalise(ref[-1]), tol)
    with stage("monolithic graph"):
        mono = traced.monolithic_runner()
        pooled = np.concatenate(
            [
                mono.infer(
                    dict(zip(("input_ids", "attention_mask"), traced.tokenizer.pad(batch), strict=True))
                )["pooled"]
                for batch in (ids[s : s + batch_size] for s in range(0, len(ids), batch_size))
            ]
        )
        mono.deactivate()
    _compare_end_to_end(scope, "monolithic graph", _normalise(pooled), _normalise(ref[-1]), tol)

    # with exits: the policy verified and a theta that splits the batch. The split check runs with exits
    # on even when the policy has them off, so a PASS always covers the exit and compaction path; exit
    # quality is judged at the policy verified (the split theta is a test setting, chosen to split)
    exiting = dataclasses.replace(policy, enabled=True)
    first_exit = next(
        (b for b in manifest.boundaries if exiting.may_exit_at(b) and b < manifest.num_layers), None
    )
    verified = "default policy" if policy == manifest.default_policy else "given policy"
    policies = {verified: policy}
    if first_exit is not None:
        split = float(min(max(split_theta(convergence_scores(ref, first_exit, k)), 1e-3), 1.0))
        policies["split theta"] = replace_theta(exiting, split)
    scope.info["thetas"] = {label: p.theta for label, p in policies.items()}
    scope.info["exit_path_checked"] = first_exit is not None
    with stage("exits and compaction"):
        encoder = EarlyExitEncoder(artifacts, exits=False, **common)
        for label, checked in policies.items():
            got = _check_exits(
                scope, label, encoder, traced, sentences, ref, checked, manifest.boundaries, batch_size, tol
            )
            if label == verified:
                _check_exit_quality(scope, sentences, got, ref, checked)
    encoder.close()
    traced.close()


# Exit quality at the policy verified: the exited embeddings against the model's own full depth. The
# similarity and NN@10 floors are the paper's deployment checklist (§5.2); the 1st percentile catches
# the few sentences a mean hides (a false convergence returns an embedding at cosine 0.3 to its own).
EXIT_QUALITY = {"mean_cosine": 0.94, "p1_cosine": 0.80, "nn_at_10": 0.80}
WORST_SHOWN = 5


def _check_exit_quality(report, sentences, got, ref, policy) -> None:
    from leap_export.diagnostics import nn_overlap

    full = _normalise(ref[-1])
    cos = cosine(got.embeddings, full)
    n = len(sentences)
    k = min(10, n - 1)
    nn = float(nn_overlap(got.embeddings, full, k).mean()) if k >= 1 else 1.0
    exited = got.exit_layers < ref.shape[0] - 1
    worst = np.argsort(cos, kind="stable")[:WORST_SHOWN]
    worst_rows = [
        {"sentence": sentences[i], "exit_layer": int(got.exit_layers[i]), "cosine": float(cos[i])}
        for i in worst
        if exited[i]
    ]
    shown = "; worst: " + ", ".join(
        f"{_clip(r['sentence'])!r} (layer {r['exit_layer']}, {r['cosine']:.3f})" for r in worst_rows
    )
    what = (
        f"theta {policy.theta:g}, {int(exited.sum())} of {n} sentences exited early"
        if policy.enabled
        else "exits off: every sentence at full depth"
    )
    name = "exit quality (exited vs full depth)"
    p1 = float(np.percentile(cos, 1))
    report.add(
        name,
        "mean_cosine",
        float(cos.mean()),
        EXIT_QUALITY["mean_cosine"],
        higher_is_better=True,
        detail=what,
    )
    report.add(
        name,
        "p1_cosine",
        p1,
        EXIT_QUALITY["p1_cosine"],
        higher_is_better=True,
        detail=(what + shown) if worst_rows else what,
    )
    report.add(
        name,
        "nn_at_10",
        nn,
        EXIT_QUALITY["nn_at_10"],
        higher_is_better=True,
        detail=what if k == 10 else f"{what}; computed as NN@{k} over {n} sentences",
    )
    report.info["exit_quality"] = {
        "policy": policy.to_dict(),
        "exited": int(exited.sum()),
        "min_cosine": float(cos.min()),
        "p1_cosine": p1,
        "mean_cosine": float(cos.mean()),
        f"nn_at_{k}": nn,
        "worst": worst_rows,
    }


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def split_theta(scores: np.ndarray) -> float:
    """A theta between two central scores, at the widest gap: it splits the batch and no sample sits on it."""
    s = np.unique(scores)
    if len(s) < 2:
        return float(s[0]) if len(s) else 0.95
    lo, hi = len(s) // 5, max(len(s) // 5 + 1, 4 * len(s) // 5)
    i = lo + int(np.argmax(np.diff(s[lo : hi + 1])))
    return float((s[i] + s[i + 1]) / 2)


def replace_theta(policy: ExitPolicy, theta: float) -> ExitPolicy:
    return dataclasses.replace(policy, theta=theta)


def _segment_acc(report, layer, rows, pooled, score, ref, ref_layer) -> None:
    acc = report.info.setdefault("_acc", {})
    a = acc.setdefault(layer, {"cos": [], "abs": [], "score": []})
    a["cos"].append(cosine(pooled, ref[layer][rows]))
    a["abs"].append(np.abs(pooled - ref[layer][rows]).max(axis=1))
    a["score"].append(np.abs(score - cosine(ref[layer], ref[ref_layer])[rows]))


def _finish_segments(report, manifest, tol) -> None:
    acc = report.info.pop("_acc")
    errors = []
    for seg in manifest.segments:
        a = {key: np.concatenate(v) for key, v in acc[seg.end].items()}
        name = f"segment {seg.index} (layers {seg.start + 1}-{seg.end})"
        report.add(f"{name} pooled", "min_cosine", a["cos"].min(), tol["min_cosine"], higher_is_better=True)
        report.add(
            f"{name} pooled", "max_abs_diff", a["abs"].max(), tol["max_abs_diff"], higher_is_better=False
        )
        report.add(
            f"{name} score", "max_abs_diff", a["score"].max(), tol["score_abs_diff"], higher_is_better=False
        )
        errors.append(float(a["score"].max()))
    # the largest score error measured: how far from theta a decision can flip (used by _check_exits)
    report.info["max_score_error"] = max(errors)


def _compare_end_to_end(report, name, got, want, tol) -> None:
    report.info.setdefault("mean_cosine", {})[name] = float(cosine(got, want).mean())
    report.add(
        f"end to end, {name}", "min_cosine", cosine(got, want).min(), tol["min_cosine"], higher_is_better=True
    )
    report.add(
        f"end to end, {name}",
        "max_abs_diff",
        np.abs(got - want).max(),
        tol["max_abs_diff"],
        higher_is_better=False,
    )


def _check_exits(report, label, encoder, python_loop, sentences, ref, policy, boundaries, batch_size, tol):
    """Exit layers against the rule applied to the reference, the C loop against the Python loop, and
    compaction (batched against batch 1), at ``policy``; returns the batched result."""
    encoder.policy = policy
    got = encoder.encode_with_exits(sentences, batch_size=batch_size)
    report.info["host_loop"] = encoder.loop
    if (
        encoder.loop == "native"
    ):  # the C loop against the Python loop, the reference implementation of the rule
        python_loop.policy = policy
        other = python_loop.encode_with_exits(sentences, batch_size=batch_size)
        report.add(
            f"C loop vs Python loop at {label}",
            "exit_layer_agreement",
            float((other.exit_layers == got.exit_layers).mean()),
            1.0,
            higher_is_better=True,
        )
        report.add(
            f"C loop vs Python loop at {label}",
            "max_abs_diff",
            float(np.abs(other.embeddings - got.embeddings).max()),
            tol["max_abs_diff"],
            higher_is_better=False,
        )
    want_layers = policy.simulate(ref, layers=boundaries)
    # a sample may flip legitimately where its reference score lies within the graphs' score error of theta
    # at a check it reaches (up to its reference exit layer; later checks never decide it). The band is
    # twice the largest score error measured above (at least 1e-6, at most the precision's tolerance)
    band = min(
        tol["score_abs_diff"], max(2 * report.info.get("max_score_error", tol["score_abs_diff"]), 1e-6)
    )
    near = np.zeros(len(sentences), dtype=bool)
    for b in boundaries:
        if policy.may_exit_at(b):
            close = np.abs(convergence_scores(ref, b, policy.patience) - policy.theta) <= band
            near |= close & (b <= want_layers)
    agree = got.exit_layers == want_layers
    firm = ~near
    name = f"exits at {label} (theta {policy.theta:.4f})"
    if firm.sum() >= min(10, len(firm)):
        report.add(
            name,
            "exit_layer_agreement",
            float(agree[firm].mean()),
            tol["exit_agreement"],
            higher_is_better=True,
            detail=f"over {int(firm.sum())} samples; {int(near.sum())} within {band:.3g} of theta excluded",
        )
    else:  # too few firm decisions to be evidence: every sample counts, near ones included (a stricter test)
        report.add(
            name,
            "exit_layer_agreement",
            float(agree.mean()),
            tol["exit_agreement"],
            higher_is_better=True,
            detail=f"over all {len(agree)} samples, near-threshold ones included: only {int(firm.sum())} "
            f"lie farther than {band:.3g} from theta at the checks they reach",
        )
    want = _normalise(ref[got.exit_layers, np.arange(len(sentences))])
    report.add(
        f"exits at {label}",
        "min_cosine_at_exit_layer",
        cosine(got.embeddings, want).min(),
        tol["min_cosine"],
        higher_is_better=True,
    )
    report.info.setdefault("exit_layers", {})[label] = {
        "theta": policy.theta,
        "distribution": {str(b): int((got.exit_layers == b).sum()) for b in boundaries},
    }
    # compaction: batched == batch-1
    single = encoder.encode_with_exits(sentences, batch_size=1)
    single_emb = single.embeddings
    same = single.exit_layers == got.exit_layers
    report.add(
        f"compaction at {label}",
        "batch1_exit_agreement",
        float(same.mean()),
        tol["exit_agreement"],
        higher_is_better=True,
    )
    report.add(
        f"compaction at {label}",
        "batch1_min_cosine",
        cosine(single_emb[same], got.embeddings[same]).min(),
        tol["min_cosine"],
        higher_is_better=True,
        detail="over rows with the same exit layer",
    )
    return got
