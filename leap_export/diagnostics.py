"""Is this model exit-compatible? The LEAP paper's layer analysis, diagnostics and deployment checklist.

Everything here is plain numpy on pooled layer embeddings ``[L + 1, N, H]`` (index 0 = embedding output,
index ``l`` = output of transformer layer ``l``, attention-masked mean pooled, not normalised), as
returned by :func:`leap_export.reference.layer_embeddings`. Only :func:`run_diagnose` touches a model.

What the report holds (paper sections in brackets):

- per layer: mean cosine to the final layer (Table 3 "Sim"), mean consecutive-layer cosine (D.1
  "inter-layer stability"), exit rate and cumulative exit rate under :class:`ExitPolicy` (Table 3/4),
  contraction ratio gamma (§3.1 eq. 2; median and mean over samples), NN@k against the final layer with the
  Table 13 failure rates (B.5, C.7);
- the exited embeddings (each sample at its own exit layer): similarity to its full-depth embedding, NN@k;
- E[layers] and the layer reduction L / E[layers] (A.4);
- the three §5.2 diagnostics and the §5.2 deployment checklist, with a reason for every pass and fail.

The exit decision is :meth:`trt_runtime.policy.ExitPolicy.simulate`: the same rule the runtime applies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from leap_export.errors import LeapError
from trt_runtime.fileio import write_json_atomic
from trt_runtime.policy import ExitPolicy, cosine

REPORT_SCHEMA = "leap-export/diagnose-report"
REPORT_VERSION = 1
DEFAULT_SENTENCES = Path(__file__).resolve().parent / "resources" / "diagnose_sentences.txt"

# §5.2 thresholds, stated once.
FLAT_CURVE_SIMILARITY = 0.7  # diagnostic 1: similarity to final below this at every layer l_min..L-1
OVERHEAD_LIMIT = 0.15  # diagnostic 3: monitoring overhead above this ...
OVERHEAD_EXIT_RATE = 0.10  # ... while the exit rate is below this
CHECKLIST_SIMILARITY = 0.94  # checklist 1: similarity to final at the target exit layer
CHECKLIST_NN = 0.80  # checklist 2: NN@10 at the target exit layer
CHECKLIST_EXIT_RATE = 0.50  # checklist 3: exit rate (strictly greater)
PAPER_THETA = 0.95  # the checklist's exit rate is defined at this threshold
NN_FAIL_THRESHOLDS = (0.5, 0.3)  # Table 13 columns
SWEEP_THETAS = (0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)  # the paper's deployment range
_NORM_EPS = 1e-12
_GAMMA_EPS = 1e-6  # a step shorter than this (on the unit sphere) leaves gamma undefined


# --- reusable metrics ---------------------------------------------------------------------------------


def normalize(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    emb = np.asarray(emb, dtype=np.float32)
    return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), _NORM_EPS)


def nearest_neighbours(emb: np.ndarray, k: int = 10, *, chunk_elements: int = 1 << 23) -> np.ndarray:
    """Indices ``[N, k]`` of every row's ``k`` nearest other rows by cosine, nearest first.

    The row itself is excluded. Ties are broken towards the lower index, so the result is a function of the
    similarities alone. The similarity matrix is built ``chunk_elements`` entries at a time (N = 5000
    needs 25M entries in all; the default chunk holds 32 MiB of float32).
    """
    emb = normalize(emb)
    if emb.ndim != 2:
        raise LeapError(f"embeddings must be a 2-D array [N, H], got shape {emb.shape}")
    n = emb.shape[0]
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise LeapError(f"k must be a positive integer, got {k!r}")
    if k > n - 1:
        raise LeapError(f"k={k} nearest neighbours need at least {k + 1} samples, got {n}")
    out = np.empty((n, k), dtype=np.int64)
    rows_per_chunk = max(1, min(n, chunk_elements // n))
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        sims = emb[start:stop] @ emb.T  # [chunk, N]
        rows = np.arange(stop - start)
        sims[rows, rows + start] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        kth = top_sims.min(axis=1)
        # Rows where the k-th value ties with an outsider: redo with a stable sort (lower index wins).
        ambiguous = np.flatnonzero((sims >= kth[:, None]).sum(axis=1) > k)
        for r in ambiguous:
            top[r] = np.argsort(-sims[r], kind="stable")[:k]
        order = np.lexsort((top, -np.take_along_axis(sims, top, axis=1)), axis=1)
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def neighbour_overlap(nn_a: np.ndarray, nn_b: np.ndarray) -> np.ndarray:
    """Per-row ``|A_i ∩ B_i| / k`` of two ``[N, k]`` neighbour index arrays."""
    if nn_a.shape != nn_b.shape:
        raise LeapError(f"neighbour arrays differ in shape: {nn_a.shape} vs {nn_b.shape}")
    hits = (nn_a[:, :, None] == nn_b[:, None, :]).any(axis=2).sum(axis=1)
    return hits / nn_a.shape[1]


def nn_overlap(emb_a: np.ndarray, emb_b: np.ndarray, k: int = 10) -> np.ndarray:
    """NN@k consistency per sample (paper B.5): overlap of each sample's ``k`` nearest neighbours among the
    set under ``emb_a`` and under ``emb_b`` (cosine, the sample itself excluded). Mean it for NN@k."""
    emb_a, emb_b = np.asarray(emb_a), np.asarray(emb_b)
    if emb_a.shape[0] != emb_b.shape[0]:
        raise LeapError(f"NN@k compares the same samples: {emb_a.shape[0]} vs {emb_b.shape[0]} rows")
    return neighbour_overlap(nearest_neighbours(emb_a, k), nearest_neighbours(emb_b, k))


def contraction_ratios(pooled: np.ndarray, *, normalized: bool = True) -> np.ndarray:
    """gamma_l = ||p_{l+1} - p_l|| / ||p_l - p_{l-1}|| per sample, for l = 1 .. L-1: array ``[L - 1, N]``.

    ``normalized`` (default) measures the steps between unit-normalised embeddings, the vectors the exit
    rule and retrieval compare, so a layer that only rescales the pooled vector counts as no step. The
    paper's eq. 2 uses the raw pooled vectors (``normalized=False``). Where the denominator step is
    (numerically) zero, gamma is undefined: NaN.
    """
    p = normalize(pooled) if normalized else np.asarray(pooled, dtype=np.float32)
    steps = np.linalg.norm(np.diff(p, axis=0), axis=-1)  # [L, N]: step into layer l = 1..L
    num, den = steps[1:], steps[:-1]
    scale = 1.0 if normalized else np.maximum(np.linalg.norm(p, axis=-1)[1:-1], _NORM_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > _GAMMA_EPS * scale, num / np.where(den > 0, den, 1.0), np.nan)


# --- the report ---------------------------------------------------------------------------------------


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _check_pooled(pooled: np.ndarray) -> np.ndarray:
    pooled = np.asarray(pooled)
    if pooled.ndim != 3:
        raise LeapError(f"pooled layer embeddings must be [L + 1, N, H], got shape {pooled.shape}")
    if pooled.shape[0] < 3:
        raise LeapError(
            f"early exit needs at least 2 transformer layers; got {pooled.shape[0] - 1} (shape {pooled.shape})"
        )
    if pooled.shape[1] < 2:
        raise LeapError(f"diagnostics need at least 2 samples, got {pooled.shape[1]}")
    bad = [layer for layer in range(pooled.shape[0]) if not np.isfinite(pooled[layer]).all()]
    if bad:
        raise LeapError(
            f"pooled embeddings contain NaN/inf at layer(s) {bad}: the model's outputs are broken"
        )
    return pooled.astype(np.float32, copy=False)


def diagnose(
    pooled: np.ndarray,
    theta: float = PAPER_THETA,
    patience: int = 1,
    min_layer: int | None = None,
    target_layer: int | None = None,
    *,
    overhead: float | None = None,
    nn_k: int = 10,
    sweep_thetas: tuple[float, ...] = SWEEP_THETAS,
    boundaries: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The full diagnostic report for pooled layer embeddings ``[L + 1, N, H]`` (JSON-serialisable).

    ``min_layer`` None: L // 2 (the paper's 6 of 12). ``target_layer`` None: the median exit layer, i.e.
    the first layer by which at least half the samples have exited; if that is the final layer (most
    samples never exit early) the checklist is evaluated at L - 1, the deepest layer an exit can happen.
    ``overhead``: measured per-layer monitoring overhead as a fraction of full-depth latency (0.222 is
    22.2 %), for diagnostic 3; None reports it as not measured. ``nn_k`` is lowered to N - 1 for tiny sets.
    ``boundaries``: the layers after which an exit is checked (a build's segment plan); None: every layer.
    ``lengths``: each sample's token count; adds ``by_length`` (:func:`by_length`) at the policy ``theta``.
    """
    pooled = _check_pooled(pooled)
    num_layers, n, hidden = pooled.shape[0] - 1, pooled.shape[1], pooled.shape[2]
    if min_layer is None:
        min_layer = max(1, num_layers // 2)
    policy = ExitPolicy(theta=theta, patience=patience, min_layer=min_layer)
    _check_layers(num_layers, min_layer, target_layer, patience)
    _check_overhead(overhead)
    warnings: list[str] = []
    k = min(nn_k, n - 1)
    if k < nn_k:
        warnings.append(
            f"only {n} samples: NN@{nn_k} computed as NN@{k}; use more sentences for a real check"
        )

    final = pooled[num_layers]
    sim_to_final = np.stack([cosine(pooled[layer], final) for layer in range(num_layers + 1)])  # [L+1, N]
    consecutive = np.stack([cosine(pooled[layer], pooled[layer - 1]) for layer in range(1, num_layers + 1)])
    gammas = contraction_ratios(pooled)  # [L-1, N], gamma_l at row l-1
    nn_final = nearest_neighbours(final, k)
    nn_layers = [
        neighbour_overlap(nearest_neighbours(pooled[layer], k), nn_final) for layer in range(1, num_layers)
    ]
    nn_layers.append(np.ones(n))  # the final layer against itself

    exit_layer = policy.simulate(pooled, layers=None if boundaries is None else list(boundaries))
    counts = np.bincount(exit_layer, minlength=num_layers + 1)[1:]  # exits per layer 1..L
    cumulative = np.cumsum(counts) / n
    exited = pooled[exit_layer, np.arange(n)]
    exited_sim = cosine(exited, final)
    exited_nn = neighbour_overlap(nearest_neighbours(exited, k), nn_final)
    expected_layers = float(exit_layer.mean())
    exit_rate = float((exit_layer < num_layers).mean())
    median_exit_layer = int(np.searchsorted(cumulative, 0.5) + 1)

    layers = []
    for layer in range(1, num_layers + 1):
        g = gammas[layer - 1] if layer < num_layers else np.array([np.nan])
        defined = g[np.isfinite(g)]
        nn = nn_layers[layer - 1]
        layers.append(
            {
                "layer": layer,
                "sim_to_final": _f(sim_to_final[layer].mean()),
                "sim_to_final_min": _f(sim_to_final[layer].min()),
                "consecutive_cos": _f(consecutive[layer - 1].mean()),
                "exit_count": int(counts[layer - 1]),
                "exit_rate": _f(counts[layer - 1] / n),
                "cumulative_exit_rate": _f(cumulative[layer - 1]),
                "nn_at_k": _f(nn.mean()),
                **{f"nn_fail_lt_{t}": _f((nn < t).mean()) for t in NN_FAIL_THRESHOLDS},
                "gamma_median": _f(np.median(defined)) if defined.size else None,
                "gamma_mean": _f(defined.mean()) if defined.size else None,
                "gamma_undefined": int(g.size - defined.size) if layer < num_layers else None,
            }
        )

    sims = [row["sim_to_final"] for row in layers]
    exit_block = {
        "rate_before_final": exit_rate,
        "expected_layers": expected_layers,
        "layer_reduction": num_layers / expected_layers,
        "median_exit_layer": median_exit_layer,
        "exit_layer_counts": {
            str(layer): int(c) for layer, c in zip(range(1, num_layers + 1), counts, strict=True)
        },
    }
    exited_block = {
        "mean_similarity_to_full": _f(exited_sim.mean()),
        "min_similarity_to_full": _f(exited_sim.min()),
        "nn_at_k": _f(exited_nn.mean()),
        **{f"nn_fail_lt_{t}": _f((exited_nn < t).mean()) for t in NN_FAIL_THRESHOLDS},
    }
    all_defined = gammas[np.isfinite(gammas)]
    contraction = {
        "space": "L2-normalised pooled embeddings (unit sphere); the paper's eq. 2 uses raw pooled vectors",
        "median_gamma": _f(np.median(all_defined)) if all_defined.size else None,
        "layers_with_median_gamma_below_1": [
            row["layer"] for row in layers if row["gamma_median"] is not None and row["gamma_median"] < 1.0
        ],
        "similarity_monotonic": bool(all(b >= a - 1e-6 for a, b in zip(sims, sims[1:], strict=False))),
    }
    sweep = threshold_sweep(pooled, sweep_thetas, patience, min_layer, k, nn_final)
    diagnostics = _diagnostics(layers, min_layer, num_layers, exit_rate, overhead, theta)
    checklist = _checklist(
        layers, theta, exit_rate, median_exit_layer, num_layers, target_layer, k, exited_block
    )
    incompatible_by = [d["name"] for d in diagnostics if d["fired"]]
    compatible = checklist["passed"] and not incompatible_by
    verdict = "exit-compatible" if compatible else "exit-incompatible"
    reasons = [c["reason"] for c in checklist["checks"]] + [d["detail"] for d in diagnostics]
    if checklist["passed"] and incompatible_by:
        reasons.append(f"the checklist passed but §5.2 diagnostics fired: {', '.join(incompatible_by)}")

    return {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "num_layers": num_layers,
        "num_samples": n,
        "hidden_size": hidden,
        "policy": {"theta": float(theta), "patience": int(patience), "min_layer": int(min_layer)},
        "nn_k": k,
        "overhead": None if overhead is None else float(overhead),
        "layers": layers,
        "exit": exit_block,
        "exited": exited_block,
        "contraction": contraction,
        "sweep": sweep,
        "diagnostics": diagnostics,
        "checklist": checklist,
        "verdict": verdict,
        "reasons": reasons,
        "warnings": warnings,
        "by_length": None if lengths is None else by_length(lengths, exit_layer, exited_sim, num_layers),
    }


LENGTH_EDGES = (16, 32, 64, 128)  # token-count buckets: 1-16, 17-32, 33-64, 65-128, 129+


def by_length(
    lengths: Sequence[int] | np.ndarray,
    exit_layers: np.ndarray,
    cos_to_full: np.ndarray,
    num_layers: int,
    edges: Sequence[int] = LENGTH_EDGES,
) -> list[dict[str, Any]]:
    """Exit layer and cosine to full depth per text-length bucket (tokens, after truncation), so a user sees
    where exits cost quality: a model trained on short texts may exit long ones too early.

    One row per non-empty bucket: ``tokens`` (e.g. ``"33-64"``), ``count``, ``expected_layers``,
    ``exit_rate_before_final``, ``mean_cosine`` and ``min_cosine`` (exited vs full-depth embedding)."""
    lengths = np.asarray(lengths)
    exit_layers, cos_to_full = np.asarray(exit_layers), np.asarray(cos_to_full)
    if not lengths.shape == exit_layers.shape == cos_to_full.shape:
        raise LeapError(
            f"lengths, exit layers and cosines must have one entry per text, got {lengths.shape}, "
            f"{exit_layers.shape}, {cos_to_full.shape}"
        )
    bounds = [0, *edges, None]
    rows = []
    for low, high in zip(bounds, bounds[1:], strict=False):
        mask = lengths > low if high is None else (lengths > low) & (lengths <= high)
        if not mask.any():
            continue
        layers, cos = exit_layers[mask], cos_to_full[mask]
        rows.append(
            {
                "tokens": f"{low + 1}-{high}" if high is not None else f"{low + 1}+",
                "count": int(mask.sum()),
                "expected_layers": float(layers.mean()),
                "exit_rate_before_final": float((layers < num_layers).mean()),
                "mean_cosine": float(cos.mean()),
                "min_cosine": float(cos.min()),
            }
        )
    return rows


def exit_at_layer(boundaries: Sequence[int], num_layers: int, min_layer: int, patience: int = 1) -> int:
    """The layer of the paper's "Exit@L7" (12 layers, l_min 6): one past the first layer a sample can
    exit at. That is the first exit check at or above ``min_layer`` (a plan without a check there acts
    from its next one), and never the last layer, where every sample has "exited": then the layer
    before it, so the rate is the share that exits early at all."""
    first = next((b for b in boundaries if b >= min_layer and b > patience and b < num_layers), num_layers)
    return min(first + 1, num_layers - 1)


def threshold_sweep(
    pooled: np.ndarray, thetas, patience: int, min_layer: int, k: int, nn_final: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """What each theta would give on these embeddings, exit checked after every layer (the paper's Table 3
    columns): E[layers], layer reduction, exit rate by l_min + 1, and the exited embeddings against full depth."""
    num_layers, n = pooled.shape[0] - 1, pooled.shape[1]
    final = pooled[num_layers]
    if nn_final is None:
        nn_final = nearest_neighbours(final, k)
    by = exit_at_layer(
        range(1, num_layers + 1), num_layers, min_layer, patience
    )  # exit checked after every layer
    rows = []
    for theta in thetas:
        exit_layer = ExitPolicy(theta=float(theta), patience=patience, min_layer=min_layer).simulate(pooled)
        exited = pooled[exit_layer, np.arange(n)]
        nn = neighbour_overlap(nearest_neighbours(exited, k), nn_final)
        expected = float(exit_layer.mean())
        rows.append(
            {
                "theta": float(theta),
                "expected_layers": expected,
                "layer_reduction": num_layers / expected,
                "exit_rate_by_min_layer_plus_1": _f((exit_layer <= by).mean()),
                "exit_rate_before_final": _f((exit_layer < num_layers).mean()),
                "similarity_to_full": _f(cosine(exited, final).mean()),
                "nn_at_k": _f(nn.mean()),
                **{f"nn_fail_lt_{t}": _f((nn < t).mean()) for t in NN_FAIL_THRESHOLDS},  # Table 8: < 0.5
                "nn_fail_lt_0.8": _f((nn < 0.8).mean()),
            }
        )
    return rows


def _check_overhead(overhead: float | None) -> None:
    if overhead is None:
        return
    if not (np.isfinite(overhead) and 0 <= overhead <= 1):
        hint = f"; did you mean {overhead / 100:g}?" if 1 < overhead <= 100 else ""
        raise LeapError(
            f"overhead is a fraction of full-depth latency in [0, 1] (0.222 = 22.2 %), got {overhead!r}{hint}"
        )


def _check_layers(num_layers: int, min_layer: int, target_layer: int | None, patience: int = 1) -> None:
    if not 1 <= min_layer <= num_layers - 1:
        raise LeapError(f"min_layer must be between 1 and L - 1 = {num_layers - 1}, got {min_layer}")
    if patience >= num_layers - 1:  # exits need l > patience and l < L: none is left, whatever the model
        raise LeapError(
            f"patience k {patience} leaves no layer to exit after on a {num_layers}-layer model (an exit "
            f"needs k < l < {num_layers}); pass --patience {max(1, num_layers - 2)} or less"
        )
    if target_layer is not None and not (
        isinstance(target_layer, int) and 1 <= target_layer <= num_layers - 1
    ):
        raise LeapError(
            f"target_layer must be an early-exit layer between 1 and L - 1 = {num_layers - 1}, got {target_layer!r}"
        )


def _diagnostics(
    layers, min_layer, num_layers, exit_rate, overhead, theta=PAPER_THETA
) -> list[dict[str, Any]]:
    window = [row for row in layers if min_layer <= row["layer"] <= num_layers - 1]
    best = max(window, key=lambda row: row["sim_to_final"])
    flat = all(row["sim_to_final"] < FLAT_CURVE_SIMILARITY for row in window)
    span = f"layers {min_layer}..{num_layers - 1}"
    d1 = {
        "id": 1,
        "name": "flat similarity curve",
        "fired": flat,
        "detail": (
            f"diagnostic 1 (flat similarity curve) {'FIRED' if flat else 'clear'}: similarity to the final layer "
            f"{'stays below' if flat else 'reaches'} {FLAT_CURVE_SIMILARITY} over {span} "
            f"(highest {best['sim_to_final']:.3f} at layer {best['layer']})"
        ),
    }
    zero = exit_rate == 0.0
    d2 = {
        "id": 2,
        "name": "zero exit rate",
        "fired": zero,
        "detail": (
            f"diagnostic 2 (zero exit rate) {'FIRED' if zero else 'clear'}: "
            f"{_pct(exit_rate)} of samples exit before the final layer"
            + (
                ""
                if theta == PAPER_THETA
                else f" at theta {theta} (note: the diagnostic is defined at theta {PAPER_THETA})"
            )
        ),
    }
    if overhead is None:
        d3 = {
            "id": 3,
            "name": "monitoring overhead dominates",
            "fired": None,
            "detail": "diagnostic 3 (monitoring overhead dominates) not measured: pass the measured per-layer "
            "monitoring overhead (e.g. from `leap-export bench`) to evaluate it",
        }
    else:
        fired = overhead > OVERHEAD_LIMIT and exit_rate < OVERHEAD_EXIT_RATE
        d3 = {
            "id": 3,
            "name": "monitoring overhead dominates",
            "fired": fired,
            "detail": (
                f"diagnostic 3 (monitoring overhead dominates) {'FIRED' if fired else 'clear'}: overhead "
                f"{_pct(overhead)} (limit {_pct(OVERHEAD_LIMIT)}) with exit rate {_pct(exit_rate)} "
                f"(limit {_pct(OVERHEAD_EXIT_RATE)})"
            ),
        }
    return [d1, d2, d3]


def _checklist(layers, theta, exit_rate, median_exit_layer, num_layers, target_layer, k, exited) -> dict:
    if target_layer is not None:
        target, source = target_layer, "given"
    elif median_exit_layer < num_layers:
        target, source = median_exit_layer, "median exit layer"
    else:
        target, source = num_layers - 1, "fallback: most samples never exit early, so L - 1 is checked"
    row = layers[target - 1]
    where = f"at layer {target} ({source})"

    sim_ok = row["sim_to_final"] >= CHECKLIST_SIMILARITY
    nn_ok = row["nn_at_k"] >= CHECKLIST_NN
    rate_ok = exit_rate > CHECKLIST_EXIT_RATE
    theta_note = "" if theta == PAPER_THETA else f" (note: the checklist is defined at theta {PAPER_THETA})"
    nn_note = "" if k == 10 else f" (computed as NN@{k})"
    checks = [
        {
            "name": "similarity to final",
            "passed": bool(sim_ok),
            "value": row["sim_to_final"],
            "threshold": CHECKLIST_SIMILARITY,
            "layer": target,
            "reason": (
                f"{'PASS' if sim_ok else 'FAIL'} similarity to final {where}: {row['sim_to_final']:.3f} "
                f"{'>=' if sim_ok else '<'} {CHECKLIST_SIMILARITY}; exited embeddings vs full depth: "
                f"{exited['mean_similarity_to_full']:.3f}"
            ),
        },
        {
            "name": "NN@10",
            "passed": bool(nn_ok),
            "value": row["nn_at_k"],
            "threshold": CHECKLIST_NN,
            "layer": target,
            "reason": (
                f"{'PASS' if nn_ok else 'FAIL'} NN@10{nn_note} {where}: {row['nn_at_k']:.3f} "
                f"{'>=' if nn_ok else '<'} {CHECKLIST_NN}; exited embeddings: {exited['nn_at_k']:.3f}, "
                f"{_pct(exited['nn_fail_lt_0.5'])} of samples below 0.5"
            ),
        },
        {
            "name": "exit rate",
            "passed": bool(rate_ok),
            "value": exit_rate,
            "threshold": CHECKLIST_EXIT_RATE,
            "layer": None,
            "reason": (
                f"{'PASS' if rate_ok else 'FAIL'} exit rate at theta {theta}: {_pct(exit_rate)} of samples exit "
                f"before the final layer, {'>' if rate_ok else '<='} {_pct(CHECKLIST_EXIT_RATE)}{theta_note}"
            ),
        },
    ]
    return {
        "target_layer": target,
        "target_layer_source": source,
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }


# --- files and the model-level entry point ---------------------------------------------------------------


def read_sentences(path: str | os.PathLike) -> list[str]:
    """One sentence per line (UTF-8, surrounding whitespace stripped, empty lines skipped)."""
    from leap_export.textio import read_lines

    sentences = [line.strip() for line in read_lines(path, skip_empty=True)]
    if not sentences:
        raise LeapError(f"{path} holds no sentences (every line is empty)")
    return sentences


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """The report as JSON, written atomically (a reader never sees half a file)."""
    return write_json_atomic(path, report, allow_nan=False)


def run_diagnose(
    model: str | os.PathLike,
    sentences: Sequence[str] | None = None,
    *,
    sentences_file: str | os.PathLike | None = None,
    theta: float = PAPER_THETA,
    patience: int = 1,
    min_layer: int | None = None,
    target_layer: int | None = None,
    batch_size: int = 32,
    max_sentences: int | None = None,
    overhead: float | None = None,
    report_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    show_progress_bar: bool = False,
) -> dict[str, Any]:
    """Embed sentences with the PyTorch reference and diagnose the model; optionally write report and plot.

    ``model``: a short name or a local model folder. Sentences: ``sentences``, else ``sentences_file``
    (one per line), else the packaged default set. ``min_layer`` None: the model's default policy.
    """
    from leap_export.reference import layer_embeddings, token_counts
    from leap_export.sources import resolve_model

    if sentences is not None and sentences_file is not None:
        raise LeapError("pass sentences or a sentences file, not both")
    if sentences is not None:
        origin = "given"
        sentences = [s.strip() for s in sentences if s and s.strip()]
    else:
        file = Path(sentences_file) if sentences_file is not None else DEFAULT_SENTENCES
        origin = str(file) if sentences_file is not None else "default set"
        sentences = read_sentences(file)
    if max_sentences is not None:
        if max_sentences < 2:
            raise LeapError(f"max_sentences must be at least 2, got {max_sentences}")
        sentences = sentences[:max_sentences]
    given = len(sentences)
    # each text once, as evaluate and calibrate count them: a repeated sentence would be its own nearest
    # neighbour's twin and weigh twice in every rate
    sentences = list(dict.fromkeys(sentences))
    if len(sentences) < 2:
        raise LeapError(f"diagnostics need at least 2 distinct sentences, got {len(sentences)}")
    _check_overhead(overhead)
    if batch_size < 1:
        raise LeapError(f"batch_size must be at least 1, got {batch_size}")

    source = resolve_model(model)
    policy = source.default_policy()
    if min_layer is None:
        min_layer = int(policy["min_layer"])
    ExitPolicy(theta=theta, patience=patience, min_layer=min_layer)  # fail before the slow part
    _check_layers(source.num_layers, min_layer, target_layer, patience)
    t0 = time.perf_counter()
    pooled = layer_embeddings(source, sentences, batch_size=batch_size, show_progress_bar=show_progress_bar)
    t1 = time.perf_counter()
    lengths = token_counts(source, sentences)
    report = diagnose(pooled, theta, patience, min_layer, target_layer, overhead=overhead, lengths=lengths)
    t2 = time.perf_counter()
    report["model"] = {
        "spec": source.spec,
        "name": source.name,
        "path": str(source.path),
        "architecture": source.architecture,
        "weights_sha256": source.weights_sha256,
    }
    report["sentences"] = {
        "source": origin,
        "count": len(sentences),
        "duplicates_dropped": given - len(sentences),
    }
    report["timing_s"] = {"embed": round(t1 - t0, 3), "diagnose": round(t2 - t1, 3)}
    if report_path is not None:
        write_report(report, report_path)
    if plot_path is not None:
        from leap_export.plots import plot_diagnostics

        plot_diagnostics(report, plot_path)
    return report
