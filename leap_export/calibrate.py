"""Calibrate the exit threshold: the paper's Table 5 sweep, and the cheapest theta within a quality budget.

The segments run once, at full depth, keeping every boundary's pooled vector and convergence score (the
scores the graphs compute, exactly what the runtime reads). The exit rule
(:meth:`trt_runtime.policy.ExitPolicy.decide`, at every boundary ``l < L``) is then applied in numpy for
each theta, which gives every sample's exit layer and exited embedding without running the model again.

Per theta: each evaluation set's metrics on the exited embeddings and their relative drop vs full depth,
E[layers], the theoretical speedup L / E[layers], the exit rate per layer and at or before layer
``l_min + 1`` (the paper's "Exit@L7"), and, on the label-free set, NN@10 of exited vs full depth with the
share of samples below 0.5 (Table 8) and 0.3 (Table 13).

The chosen theta is the one with the lowest E[layers] (ties: an undominated one, then the higher theta)
whose NN@10 is at least ``min_nn10`` and whose primary metric on every set drops by at most
``max_quality_drop``. The current policy competes too when the sweep leaves its theta out (same min
layer): a costlier theta never replaces a current one that meets the budget. With ``write``, the
choice becomes the manifest's ``exit_policy`` and the previous policy is appended to
``policy_history`` with the time and the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from leap_export.diagnostics import NN_FAIL_THRESHOLDS, nearest_neighbours, neighbour_overlap, normalize
from leap_export.errors import LeapError
from leap_export.quality import (
    EVAL_METRICS,
    NN_K,
    Lookup,
    artifact_summary,
    exit_statistics,
    jsonable,
    label_free_set,
    load_eval_sets,
    relative_drop,
    save_report,
    union_texts,
)
from trt_runtime.policy import ExitPolicy, cosine

REPORT_SCHEMA = "leap-export/calibrate-report"
REPORT_VERSION = 1
LITTLE_SAVING = (
    0.10  # a chosen theta that saves less than this share of layers gets a note: the model hardly exits
)
DEFAULT_THETAS = tuple(float(t) for t in np.round(np.arange(0.90, 0.991, 0.01), 2))
DEFAULT_MIN_NN10 = 0.80  # §5.2 checklist: NN@10 >= 0.80
DEFAULT_MAX_QUALITY_DROP = 0.02  # relative; the paper's LEAP vs baseline gap is 2.2 % (§4.5)


@dataclass
class BoundaryTrace:
    """Every sample's pooled vector and convergence score at every segment boundary, at full depth."""

    boundaries: list[int]  # segment end layers; the last is L
    pooled: np.ndarray  # [S, N, H] float32, not normalised
    scores: np.ndarray  # [S, N] float32: the graphs' cos(p_b, p_{b-k})

    @property
    def num_layers(self) -> int:
        return self.boundaries[-1]

    def exit_layers(self, policy: ExitPolicy) -> np.ndarray:
        """The runtime's rule: a sample exits at the first boundary ``b < L`` where ``decide`` says so."""
        n = self.scores.shape[1]
        layers = np.full(n, self.num_layers, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        for s, b in enumerate(self.boundaries[:-1]):
            exits = policy.decide(b, self.scores[s]) & ~done
            layers[exits] = b
            done |= exits
        return layers

    def embeddings(self, exit_layers: np.ndarray) -> np.ndarray:
        """Each sample's pooled vector at its exit layer, L2-normalised (as ``encode`` returns it)."""
        segment = np.searchsorted(self.boundaries, exit_layers)
        return normalize(self.pooled[segment, np.arange(exit_layers.size)])

    def full(self) -> np.ndarray:
        return normalize(self.pooled[-1])


def trace_boundaries(
    artifacts: str | os.PathLike,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    variant: str | None = None,
    check_files: bool = True,
    progress: bool = True,
) -> BoundaryTrace:
    """Run ``texts`` once through the segments with exits off, batched as ``encode`` batches them."""
    from tqdm.auto import tqdm

    from trt_runtime.encoder import EarlyExitEncoder

    # the Python loop: it traces every segment's outputs (the C loop would only add sessions)
    enc = EarlyExitEncoder(artifacts, exits=False, variant=variant, check_files=check_files, loop="python")
    boundaries = enc.manifest.boundaries
    n, hidden = len(texts), enc.manifest.hidden_size
    pooled = np.zeros((len(boundaries), n, hidden), dtype=np.float32)
    scores = np.zeros((len(boundaries), n), dtype=np.float32)
    ids = enc.tokenizer.encode(list(texts))
    order = np.argsort([-len(x) for x in ids], kind="stable")  # the order encode_with_exits batches in
    with tqdm(total=n, desc="trace", unit="sentence", disable=None if progress else True) as bar:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            trace: list = []
            enc.run_ids([ids[i] for i in rows], on_segment=trace.append)
            for layer, active, p, sc in trace:
                s = boundaries.index(layer)
                pooled[s, rows[active]] = p
                scores[s, rows[active]] = sc
            bar.update(len(rows))
    return BoundaryTrace(boundaries, pooled, scores)


def _check_thetas(thetas) -> list[float]:
    values = sorted({float(t) for t in np.atleast_1d(np.asarray(thetas, dtype=np.float64))})
    if not values:
        raise LeapError("calibration needs at least one theta")
    bad = [t for t in values if not 0.0 < t <= 1.0]
    if bad:
        raise LeapError(f"every theta must be in (0, 1], got {', '.join(f'{t:g}' for t in bad)}")
    return values


def calibrate(
    artifacts: str | os.PathLike,
    *,
    thetas: Sequence[float] | np.ndarray = DEFAULT_THETAS,
    eval_sets: Sequence[str] = ("lee",),
    sentences: Sequence[str] | None = None,
    sts_file: str | os.PathLike | None = None,
    min_nn10: float = DEFAULT_MIN_NN10,
    max_quality_drop: float = DEFAULT_MAX_QUALITY_DROP,
    min_layer: int | None = None,
    bible_limit: int | None = 1000,
    bible_corpus_limit: int | None = None,
    variant: str | None = None,
    batch_size: int = 32,
    write: bool = True,
    report_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep ``thetas`` and pick the cheapest that meets the budget; see the module docstring.

    ``sentences``: the label-free set for NN@10 and the exit statistics (default: the eval sets' texts).
    ``min_layer``: None keeps the manifest's. Returns the report; ``report["rows"]`` is the sweep (one row per
    theta, ``pareto`` marking the undominated ones), ``report["chosen"]`` the chosen row (None when no theta meets the budget: the policy is kept).
    """
    from trt_runtime.manifest import load_manifest

    t0 = time.perf_counter()
    thetas = _check_thetas(thetas)
    if not 0.0 <= min_nn10 <= 1.0:
        raise LeapError(f"min_nn10 must be in [0, 1], got {min_nn10}")
    if not (0.0 <= max_quality_drop <= 1.0 or max_quality_drop == float("inf")):
        hint = f"; did you mean {max_quality_drop / 100:g}?" if 1.0 < max_quality_drop <= 100.0 else ""
        raise LeapError(
            f"max_quality_drop must be a fraction in [0, 1] (0.02 = 2 %), or inf for no quality budget; "
            f"got {max_quality_drop}{hint}"
        )
    no_quality_budget = max_quality_drop == float("inf")
    budget_drop = None if no_quality_budget else max_quality_drop  # JSON has no inf: None = no quality budget
    manifest = load_manifest(artifacts, variant=variant)
    current = manifest.default_policy
    base = ExitPolicy(
        theta=current.theta,
        patience=current.patience,
        min_layer=current.min_layer if min_layer is None else min_layer,
        enabled=True,
    )
    if not base.min_layer < manifest.num_layers:
        raise LeapError(f"min_layer must be below the {manifest.num_layers} layers, got {base.min_layer}")
    sets = load_eval_sets(
        eval_sets, sts_file=sts_file, bible_limit=bible_limit, bible_corpus_limit=bible_corpus_limit
    )
    if not sets and sentences is None:
        raise LeapError("nothing to calibrate on: name an evaluation set (--eval) or pass --sentences")
    lf_texts, lf_origin = label_free_set(sets, sentences)
    texts = union_texts(sets, lf_texts)

    trace = trace_boundaries(
        artifacts, texts, batch_size=batch_size, variant=variant, check_files=False, progress=progress
    )
    t1 = time.perf_counter()
    full_emb = trace.full()
    full = Lookup(texts, full_emb)
    lf_rows = full.rows(lf_texts)
    full_nn = nearest_neighbours(full_emb[lf_rows], NN_K)
    full_quality = {s.name: s.score(full) for s in sets}

    def evaluate(theta: float, min_layer: int = base.min_layer) -> dict[str, Any]:
        policy = ExitPolicy(theta=theta, patience=base.patience, min_layer=min_layer)
        layers = trace.exit_layers(policy)
        emb = trace.embeddings(layers)
        exited = Lookup(texts, emb)
        stats = exit_statistics(
            layers[lf_rows], trace.boundaries, trace.num_layers, policy.min_layer, policy.patience
        )
        nn = neighbour_overlap(nearest_neighbours(emb[lf_rows], NN_K), full_nn)
        row: dict[str, Any] = {
            "theta": theta,
            "expected_layers": stats["expected_layers"],
            "speedup": stats["layer_reduction"],  # theoretical: L / E[layers]
            "exit_rate_before_final": stats["exit_rate_before_final"],
            "exit_at_layer": stats["exit_at_layer"],
            "exit_at": stats["exit_at"],
            "exit_rate": stats["exit_rate"],
            f"nn_at_{NN_K}": float(nn.mean()),
            **{f"nn_fail_lt_{t}": float((nn < t).mean()) for t in NN_FAIL_THRESHOLDS},
            "mean_similarity": float(cosine(emb[lf_rows], full_emb[lf_rows]).mean()),
            "quality": {},
            "drop": {},
        }
        violations = []
        nn_mean = row[f"nn_at_{NN_K}"]
        shortfall = max(0.0, min_nn10 - nn_mean)  # how far the budget is missed, to name the closest theta
        if not nn_mean >= min_nn10:
            violations.append(f"NN@{NN_K} {nn_mean:.3f} < {min_nn10:g}")
        for s in sets:
            got = s.score(exited)
            row["quality"][s.name] = got
            for name in EVAL_METRICS[s.name]:
                drop = relative_drop(full_quality[s.name][name], got[name])
                row["drop"][f"{s.name}/{name}"] = drop
                if (
                    name == s.primary_metric
                    and not no_quality_budget
                    and (drop is None or drop > max_quality_drop)
                ):
                    shown = "undefined" if drop is None else f"{100 * drop:.2f}%"
                    violations.append(f"{s.name} {name} drop {shown} > {100 * max_quality_drop:g}%")
                    shortfall += float("inf") if drop is None else drop - max_quality_drop
        row["meets_budget"] = not violations
        row["violations"] = violations
        row["budget_shortfall"] = shortfall
        return row

    rows = [evaluate(t) for t in thetas]
    # the current policy as it stands (a what-if when it is disabled), for comparison
    same = current.min_layer == base.min_layer and current.theta in thetas
    current_row = rows[thetas.index(current.theta)] if same else evaluate(current.theta, current.min_layer)
    # the current policy competes too when it is outside the sweep on the same plan: a sweep that leaves
    # it out must not replace it with a costlier theta that is "the cheapest" only of the thetas swept
    extra = [current_row] if not same and current.min_layer == base.min_layer and current.enabled else []
    _mark_pareto(rows + extra, [(s.name, s.primary_metric) for s in sets])
    meeting = [r for r in rows + extra if r["meets_budget"]]
    # cheapest; among equally cheap, an undominated one (one always is), then the higher theta (more margin)
    chosen = min(meeting, key=lambda r: (r["expected_layers"], not r["pareto"], -r["theta"]), default=None)
    t2 = time.perf_counter()

    new_policy = None
    if chosen is not None:
        new_policy = ExitPolicy(
            theta=chosen["theta"],
            patience=current.patience,
            min_layer=base.min_layer,
            enabled=current.enabled,
        )
    changed = new_policy is not None and new_policy != current
    message = _message(
        chosen, rows, current, new_policy, changed, min_nn10, max_quality_drop, trace.num_layers
    )
    if not current.enabled:  # the build's decision stands: calibrate picks a theta, it does not turn exits on
        check = manifest.exit_check
        why = (
            f" (its exit-compatibility check failed: {'; '.join(check['failed'])})"
            if check and not check["passed"]
            else ""
        )
        message += (
            f". Exits stay off by default in this build{why}: the theta applies where they are turned on "
            "knowingly (--theta, EarlyExitEncoder(..., exits=True)), or rebuild with `leap-export build "
            "... --exits on`"
        )
    written = False
    if write and changed:
        _write_policy(
            manifest, current, new_policy, message, chosen, sets, lf_origin, min_nn10, budget_drop, variant
        )
        written = True

    report = {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        **artifact_summary(artifacts, manifest, variant),
        "patience": current.patience,
        "min_layer": base.min_layer,
        "budget": {
            "min_nn10": min_nn10,
            "max_quality_drop": budget_drop,
            "metrics": [f"{s.name}/{s.primary_metric}" for s in sets],
        },
        "eval_sets": {s.name: s.size for s in sets},
        "label_free": {"source": lf_origin, "count": len(lf_texts)},
        "full_quality": full_quality,
        "rows": rows,
        "current_policy": current.to_dict(),
        "current_row": current_row,
        "chosen": chosen,
        "new_policy": new_policy.to_dict() if new_policy is not None else None,
        "changed": changed,
        "written": written,
        "message": message,
        "boundary_advice": boundary_advice(chosen or current_row, trace.boundaries, trace.num_layers),
        "timing_s": {"model": round(t1 - t0, 3), "sweep": round(t2 - t1, 3)},
    }
    if report_path is not None:
        save_report(report, report_path)
    return jsonable(report)


def boundary_advice(
    row: dict[str, Any], boundaries: list[int], num_layers: int, min_rate: float = 0.01
) -> dict[str, Any]:
    """Exit checks that (almost) nobody uses at ``row``'s theta, and the plan without them.

    A boundary costs every sample that reaches it a segment hand-off (docs/runtime.md) and saves a layer only for the samples that exit there; below ``min_rate`` of
    samples it is a net cost. The advice is a ``--boundaries`` value for ``leap-export build``.
    """
    rates = {int(k): float(v) for k, v in row["exit_rate"].items()}
    checks = [b for b in boundaries if b < num_layers]
    quiet = [b for b in checks if rates.get(b, 0.0) < min_rate]
    keep = [b for b in checks if b not in quiet]
    return {
        "theta": row["theta"],
        "min_rate": min_rate,
        "exit_rate": {str(b): rates.get(b, 0.0) for b in checks},
        "quiet": quiet,
        "suggested_boundaries": keep if quiet and keep else None,
    }


def _mark_pareto(rows: list[dict], metrics: list[tuple[str, str]]) -> None:
    """``row["pareto"]``: no other theta is at least as cheap and as good (NN@10, primary metrics), and
    strictly better in one of them."""

    def key(r):  # larger is better in every coordinate
        quality = [r["quality"][s][m] for s, m in metrics]
        return np.array([-r["expected_layers"], r[f"nn_at_{NN_K}"], *quality], dtype=np.float64)

    points = [np.nan_to_num(key(r), nan=-np.inf) for r in rows]
    for r, p in zip(rows, points, strict=True):
        r["pareto"] = not any(np.all(q >= p) and np.any(q > p) for q in points)


def _message(chosen, rows, current, new_policy, changed, min_nn10, max_drop, num_layers) -> str:
    drop_text = (
        "no quality budget" if max_drop == float("inf") else f"primary-metric drop <= {100 * max_drop:g}%"
    )
    budget = f"NN@{NN_K} >= {min_nn10:g} and {drop_text}"
    if chosen is None:
        closest = min(rows, key=lambda r: (len(r["violations"]), r["budget_shortfall"]))
        return (
            f"no theta meets the budget ({budget}); keeping the current policy (theta {current.theta:g}). "
            f"Closest: theta {closest['theta']:g}: {'; '.join(closest['violations'])}"
        )
    what = (
        f"theta {chosen['theta']:g}: E[layers] {chosen['expected_layers']:.2f} of {num_layers} "
        f"({chosen['speedup']:.2f}x theoretical), NN@{NN_K} {chosen[f'nn_at_{NN_K}']:.3f}"
    )
    drops = [f"{k} drop {100 * v:.2f}%" for k, v in chosen["drop"].items() if v is not None]
    what += "".join(f", {d}" for d in drops)
    if 1.0 - chosen["expected_layers"] / num_layers < LITTLE_SAVING:
        what += (
            f". Within this budget early exit saves little ({chosen['speedup']:.2f}x): train the model with "
            "LEAP (`leap-export train`), or loosen the budget (--max-drop, --min-nn10)"
        )
    if not changed:
        return f"the current policy is already the cheapest within the budget ({budget}): {what}"
    return (
        f"chose {what}: the cheapest of {len(rows)} thresholds within the budget ({budget}); "
        f"was theta {current.theta:g}, min layer {current.min_layer}"
        + (f" -> {new_policy.min_layer}" if new_policy.min_layer != current.min_layer else "")
    )


def _write_policy(
    manifest, current, new_policy, message, chosen, sets, lf_origin, min_nn10, max_drop: float | None, variant
) -> None:
    entry = {
        **current.to_dict(),
        "replaced_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "replaced_by": "leap-export calibrate",
        "reason": message,
        "calibration": jsonable(
            {
                "variant": variant
                or manifest.data.get("default_variant", "fp32"),  # measured on; the policy is shared
                "eval_sets": [s.name for s in sets],
                "label_free": lf_origin,
                "budget": {"min_nn10": min_nn10, "max_quality_drop": max_drop},
                "chosen": {
                    k: chosen[k]
                    for k in (
                        "theta",
                        "expected_layers",
                        "speedup",
                        f"nn_at_{NN_K}",
                        "nn_fail_lt_0.5",
                        "drop",
                    )
                },
            }
        ),
    }
    manifest.data.setdefault("policy_history", []).append(entry)
    manifest.data["exit_policy"] = new_policy.to_dict()
    manifest.save()
