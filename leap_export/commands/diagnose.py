"""``leap-export diagnose``: is this model exit-compatible? (LEAP paper §4.3, §5.2)."""

from __future__ import annotations

from pathlib import Path

import click

from leap_export.commands._options import distinct_files, no_progress_option, output_image, report_option


@click.command("diagnose")
@no_progress_option
@click.argument("model")
@click.option(
    "--sentences",
    "sentences_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="UTF-8 text file, one sentence per line (empty lines skipped). Default: a packaged set of ~300 varied sentences.",
)
@click.option(
    "--theta", type=float, default=0.95, show_default=True, help="Exit threshold on cos(p_l, p_{l-k})."
)
@click.option("--patience", type=int, default=1, show_default=True, help="Layer gap k of the exit rule.")
@click.option(
    "--min-layer",
    type=int,
    default=None,
    help="First layer an exit may happen. Default: the recipe's, or the min_layer a `leap-export train` output "
    "was trained for, else L/2.",
)
@click.option(
    "--target-layer",
    type=int,
    default=None,
    help="Layer the deployment checklist is evaluated at. Default: the median exit layer.",
)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--max-sentences",
    type=int,
    default=None,
    help="Use only the first N sentences (repeated lines count once, as in evaluate and calibrate).",
)
@click.option(
    "--overhead",
    type=float,
    default=None,
    help="Measured per-layer monitoring overhead as a fraction (0.222 = 22.2 %), for diagnostic 3.",
)
@report_option
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=output_image,
    help="Write the two-panel figure here (.png, .svg or .pdf).",
)
@distinct_files
def command(
    model,
    sentences_file,
    theta,
    patience,
    min_layer,
    target_layer,
    batch_size,
    max_sentences,
    overhead,
    report_path,
    plot_path,
    no_progress,
):
    """Diagnose MODEL (a short name such as minilm-l6, or a local model folder) for early exit.

    Prints the per-layer table, the paper's three diagnostics and the deployment checklist. Exits 0 whatever
    the verdict: this is a report, not a gate.
    """
    from leap_export.diagnostics import run_diagnose

    report = run_diagnose(
        model,
        sentences_file=sentences_file,
        theta=theta,
        patience=patience,
        min_layer=min_layer,
        target_layer=target_layer,
        batch_size=batch_size,
        max_sentences=max_sentences,
        overhead=overhead,
        report_path=report_path,
        plot_path=plot_path,
        show_progress_bar=not no_progress,
    )
    print_report(report)
    for label, path in (("report", report_path), ("plot", plot_path)):
        if path is not None:
            click.echo(f"{label}: {path}")


def print_report(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from leap_export.commands._options import console as make_console
    from leap_export.diagnostics import exit_at_layer

    console = make_console()
    policy, ex = report["policy"], report["exit"]
    k = report["nn_k"]
    model = report.get("model", {}).get("name", "")
    sents = report.get("sentences", {})
    table = Table(
        title=escape(
            f"{model}: {report['num_samples']} sentences ({sents.get('source', '')}), "
            f"theta {policy['theta']:g}, k {policy['patience']}, min layer {policy['min_layer']}"
        ),
        title_justify="left",
    )
    for name in (
        "layer",
        "sim to final",
        "consec. cos",
        "exit %",
        "cumul. %",
        f"NN@{k}",
        "NN<0.5 %",
        "gamma med",
    ):
        table.add_column(name, justify="right")
    target = report["checklist"]["target_layer"]
    for r in report["layers"]:
        gamma = "-" if r["gamma_median"] is None else f"{r['gamma_median']:.3f}"
        table.add_row(
            f"{r['layer']}{' *' if r['layer'] == target else ''}",
            f"{r['sim_to_final']:.3f}",
            f"{r['consecutive_cos']:.3f}",
            f"{100 * r['exit_rate']:.1f}",
            f"{100 * r['cumulative_exit_rate']:.1f}",
            f"{r['nn_at_k']:.3f}",
            f"{100 * r['nn_fail_lt_0.5']:.1f}",
            gamma,
        )
    console.print(table)
    console.print(
        f"[dim]* checklist layer ({report['checklist']['target_layer_source']}). gamma on L2-normalised embeddings; "
        f"exit % at the final layer = ran to full depth.[/dim]",
        highlight=False,
    )
    exited = report["exited"]
    summary = (
        f"exit rate before the final layer {100 * ex['rate_before_final']:.1f}%, E[layers] {ex['expected_layers']:.2f}"
        f" of {report['num_layers']}, layer reduction {ex['layer_reduction']:.2f}x; exited vs full: cos "
        f"{exited['mean_similarity_to_full']:.3f}, NN@{k} {exited['nn_at_k']:.3f}"
    )
    console.print(escape(summary), highlight=False)
    if report.get("sweep"):
        sweep = Table(
            title=f"threshold sweep (k {policy['patience']}, min layer {policy['min_layer']}, exit checked "
            "after every layer)",
            title_justify="left",
        )
        by = exit_at_layer(
            range(1, report["num_layers"] + 1), report["num_layers"], policy["min_layer"], policy["patience"]
        )
        for name in (
            "theta",
            escape("E[layers]"),
            "reduction",
            f"exit by L{by} %",
            "cos exited vs full",
            f"NN@{k}",
            "NN<0.5 %",
            "NN<0.8 %",
        ):
            sweep.add_column(name, justify="right")
        for r in report["sweep"]:
            sweep.add_row(
                f"{r['theta']:.2f}{' *' if abs(r['theta'] - policy['theta']) < 1e-9 else ''}",
                f"{r['expected_layers']:.2f}",
                f"{r['layer_reduction']:.2f}x",
                f"{100 * r['exit_rate_by_min_layer_plus_1']:.1f}",
                f"{r['similarity_to_full']:.3f}",
                f"{r['nn_at_k']:.3f}",
                f"{100 * r['nn_fail_lt_0.5']:.1f}",
                f"{100 * r['nn_fail_lt_0.8']:.1f}",
            )
        console.print(sweep)
    print_by_length(console, report.get("by_length"), f"theta {policy['theta']:g}")
    for d in report["diagnostics"]:
        style = "red" if d["fired"] else ("yellow" if d["fired"] is None else "green")
        console.print(f"  [{style}]{escape(d['detail'])}[/{style}]", highlight=False)
    console.print("deployment checklist:")
    for c in report["checklist"]["checks"]:
        console.print(f"  [{'green' if c['passed'] else 'red'}]{escape(c['reason'])}[/]", highlight=False)
    for w in report.get("warnings", []):
        console.print(f"[yellow]warning: {escape(w)}[/yellow]")
    ok = report["verdict"] == "exit-compatible"
    console.print(f"\n[bold {'green' if ok else 'red'}]VERDICT: {report['verdict'].upper()}[/]")


def print_by_length(console, rows: list[dict] | None, policy: str) -> None:
    """The by-length rows of a diagnose or evaluate report as a table (nothing when there are none)."""
    if not rows:
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"by text length (tokens), {policy}", title_justify="left")
    for name in (
        "tokens",
        "texts",
        escape("E[layers]"),
        "exit before final %",
        "cos exited vs full",
        "min cos",
    ):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            r["tokens"],
            str(r["count"]),
            f"{r['expected_layers']:.2f}",
            f"{100 * r['exit_rate_before_final']:.1f}",
            f"{r['mean_cosine']:.4f}",
            f"{r['min_cosine']:.4f}",
        )
    console.print(table)
