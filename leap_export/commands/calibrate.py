"""``leap-export calibrate``: the theta sweep (LEAP paper Table 5) and the cheapest policy within a budget."""

from __future__ import annotations

import sys

import click

from leap_export.commands._options import (
    artifacts_argument,
    batch_size_option,
    bible_corpus_limit_option,
    bible_limit_option,
    distinct_files,
    eval_sets_option,
    label_free_option,
    min_layer_option,
    no_progress_option,
    report_option,
    sts_file_option,
    variant_option,
)


def _csv_floats(ctx, param, value):
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers like 0.93,0.95,0.97, got {value!r}"
        ) from None


@click.command("calibrate")
@no_progress_option
@artifacts_argument
@eval_sets_option
@sts_file_option
@label_free_option
@click.option(
    "--thetas",
    callback=_csv_floats,
    default=None,
    help="Comma-separated thresholds to sweep. Default: 0.90,0.91,...,0.99.",
)
@click.option(
    "--min-nn10",
    type=float,
    default=None,
    help="Budget: NN@10 of exited vs full depth at least this. Default: 0.80 (§5.2 checklist).",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Budget: relative drop of each set's primary metric at most this fraction (inf: no quality "
    "budget). Default: 0.02.",
)
@min_layer_option
@bible_limit_option
@bible_corpus_limit_option
@variant_option
@batch_size_option
@click.option("--dry-run", is_flag=True, help="Report only; leave the manifest as it is.")
@click.option("--strict", is_flag=True, help="Exit 1 when no theta meets the budget.")
@report_option
@distinct_files
def command(
    artifacts,
    eval_sets,
    sts_file,
    sentences,
    thetas,
    min_nn10,
    max_drop,
    min_layer,
    bible_limit,
    bible_corpus_limit,
    variant,
    batch_size,
    dry_run,
    strict,
    report_path,
    no_progress,
):
    """Sweep theta on ARTIFACTS and write the cheapest policy that meets the quality budget."""
    from leap_export.calibrate import calibrate
    from leap_export.quality import parse_eval_sets
    from leap_export.textio import read_lines

    options = {
        k: v
        for k, v in (("thetas", thetas), ("min_nn10", min_nn10), ("max_quality_drop", max_drop))
        if v is not None
    }  # None: the library's default
    report = calibrate(
        artifacts,
        eval_sets=parse_eval_sets(eval_sets, sts_file=sts_file),
        sts_file=sts_file,
        sentences=read_lines(sentences, skip_empty=True) if sentences else None,
        min_layer=min_layer,
        bible_limit=bible_limit,
        bible_corpus_limit=bible_corpus_limit,
        variant=variant,
        batch_size=batch_size,
        write=not dry_run,
        report_path=report_path,
        progress=not no_progress,
        **options,
    )
    print_report(report, dry_run=dry_run)
    if report_path:
        click.echo(f"report: {report_path}")
    if strict and report["chosen"] is None:
        sys.exit(1)


def print_report(report: dict, *, dry_run: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    from leap_export.commands._options import console as make_console

    console = make_console()
    budget = report["budget"]
    table = Table(
        title=escape(
            f"{report.get('model') or report['artifacts']}: {report['num_layers']} layers, exits checked after "
            f"{', '.join(map(str, report['boundaries'][:-1]))}; min layer {report['min_layer']}, "
            f"k {report['patience']}; label-free: {report['label_free']['count']} sentences"
        ),
        title_justify="left",
    )
    metrics = budget["metrics"]
    for name in (
        "theta",
        "E[layers]",
        "speedup",
        f"exit@L{report['rows'][0]['exit_at_layer']} %",
        "NN@10",
        "NN<0.5 %",
        *metrics,
        *(f"{m} drop %" for m in metrics),
        "budget",
    ):
        table.add_column(escape(name), justify="right")
    chosen = report["chosen"]["theta"] if report["chosen"] else None
    current = report["current_policy"]["theta"]
    for r in report["rows"]:
        values = [r["quality"][m.split("/")[0]][m.split("/")[1]] for m in metrics]
        drops = [r["drop"][m] for m in metrics]
        mark = (
            ("" if r["pareto"] else " ~")
            + (" <" if r["theta"] == chosen else "")
            + (" (current)" if r["theta"] == current else "")
        )
        table.add_row(
            f"{r['theta']:g}{mark}",
            f"{r['expected_layers']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{100 * r['exit_at']:.1f}",
            f"{r['nn_at_10']:.3f}",
            f"{100 * r['nn_fail_lt_0.5']:.1f}",
            *("-" if v is None else f"{v:.4f}" for v in values),
            *("-" if d is None else f"{100 * d:+.2f}" for d in drops),
            "[green]ok[/]" if r["meets_budget"] else "[red]over[/]",
        )
    console.print(table)
    console.print(
        "[dim]< chosen; ~ dominated (another theta is as cheap and as good); drop = (full - exited) "
        "/ |full|, negative = a gain[/dim]"
    )

    def quality(m: str) -> str:
        value = report["full_quality"][m.split("/")[0]][m.split("/")[1]]
        return "undefined" if value is None else f"{value:.4f}"

    full = ", ".join(f"{m} {quality(m)}" for m in metrics)
    if full:
        console.print(escape(f"full depth: {full}"), highlight=False)
    cur = report["current_row"]
    console.print(
        escape(
            f"current policy (theta {cur['theta']:g}): E[layers] {cur['expected_layers']:.2f}, "
            f"NN@10 {cur['nn_at_10']:.3f}, {'within' if cur['meets_budget'] else 'outside'} the budget"
        ),
        highlight=False,
    )
    style = "green" if report["chosen"] else "yellow"
    console.print(f"[{style}]{escape(report['message'])}[/]", highlight=False)
    if report["written"]:
        console.print(
            f"manifest updated: exit_policy theta {report['new_policy']['theta']:g}; "
            "the previous policy is in policy_history",
            highlight=False,
        )
    elif dry_run and report["changed"]:
        console.print("dry run: manifest not changed", highlight=False)
    advice = report.get("boundary_advice") or {}
    if advice.get("quiet"):
        rates = ", ".join(
            f"after layer {b}: {100 * advice['exit_rate'][str(b)]:.1f}%" for b in advice["quiet"]
        )
        hint = (
            f"rebuild with `leap-export build MODEL --out DIR --boundaries "
            f"{','.join(map(str, advice['suggested_boundaries']))}` to drop them"
            if advice["suggested_boundaries"]
            else "no exit check pays at this theta"
        )
        console.print(
            escape(
                f"exit checks almost nobody uses at theta {advice['theta']:g} ({rates}): each costs every "
                f"sample that reaches it a segment hand-off; {hint}"
            ),
            highlight=False,
        )
