"""Pictures of a diagnose report: one figure (PNG, SVG or PDF), two panels side by side.

(a) the similarity curve (paper Figure 1): cosine to the final layer and consecutive-layer cosine per
    layer, NN@10 per layer, the threshold theta and the minimum exit layer;
(b) the exit histogram (paper Figure 2): per-layer exit rate as bars, the cumulative exit rate as a line.

One file rather than two because the panels are read together: a flat curve in (a) explains the empty
histogram in (b). matplotlib is imported lazily and drawn through a bare ``Figure`` (rendered by Agg), without
pyplot, so no display is needed and the caller's pyplot backend and figures are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from leap_export.errors import LeapError
from trt_runtime.fileio import atomic_write

IMAGE_FORMATS = ("png", "svg", "pdf")


def image_format(path: str | os.PathLike) -> str:
    """The picture format a file name asks for: png, svg or pdf."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in IMAGE_FORMATS:
        raise LeapError(f"{path}: name the picture .png, .svg or .pdf")
    return fmt


def plot_diagnostics(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the two-panel figure for a :func:`leap_export.diagnostics.diagnose` report, atomically;
    the name picks the format (.png, .svg or .pdf)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    fmt = image_format(path)
    try:
        rows = report["layers"]
        theta = report["policy"]["theta"]
        min_layer = report["policy"]["min_layer"]
        verdict = report["verdict"]
    except (KeyError, TypeError) as e:
        raise LeapError(
            f"not a diagnose report (missing {e}); produce one with `leap-export diagnose`"
        ) from None

    layers = [r["layer"] for r in rows]
    fig = Figure(figsize=(12, 4.5), dpi=110)
    ax_sim, ax_exit = fig.subplots(1, 2)

    ax_sim.plot(layers, [r["sim_to_final"] for r in rows], "o-", label="cos to final layer")
    ax_sim.plot(layers, [r["consecutive_cos"] for r in rows], "s--", label="cos(layer l, layer l-1)")
    ax_sim.plot(layers, [r["nn_at_k"] for r in rows], "^:", label=f"NN@{report.get('nn_k', 10)} vs final")
    ax_sim.axhline(theta, color="crimson", lw=1, label=f"theta = {theta:g}")
    ax_sim.axvline(min_layer, color="grey", lw=1, ls=":", label=f"min exit layer = {min_layer}")
    target = report.get("checklist", {}).get("target_layer")
    if target is not None:
        ax_sim.axvline(target, color="darkorange", lw=1, ls="-.", label=f"checklist layer = {target}")
    ax_sim.set(xlabel="layer", ylabel="mean cosine / overlap", title="(a) similarity curve", xticks=layers)
    ax_sim.set_ylim(min(-0.05, min(r["consecutive_cos"] for r in rows) - 0.05), 1.05)
    ax_sim.grid(alpha=0.3)
    ax_sim.legend(fontsize=8, loc="lower right")

    early = rows[:-1]
    ax_exit.bar(
        [r["layer"] for r in early],
        [100 * r["exit_rate"] for r in early],
        color="steelblue",
        label="exit here",
    )
    ax_exit.bar(layers[-1], 100 * rows[-1]["exit_rate"], color="silver", label="ran to full depth")
    ax_exit.plot(
        layers, [100 * r["cumulative_exit_rate"] for r in rows], "o-", color="black", label="cumulative"
    )
    ax_exit.set(
        xlabel="exit layer",
        ylabel="% of samples",
        title=f"(b) exits at theta {theta:g}: E[layers] {report['exit']['expected_layers']:.2f}, "
        f"{report['exit']['layer_reduction']:.2f}x",
        xticks=layers,
        ylim=(0, 105),
    )
    ax_exit.grid(alpha=0.3, axis="y")
    ax_exit.legend(fontsize=8, loc="upper left")

    name = report.get("model", {}).get("name", "")
    fig.suptitle(
        f"{name}  {verdict}".strip(), color="darkgreen" if verdict == "exit-compatible" else "crimson"
    )
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt))
    return path
