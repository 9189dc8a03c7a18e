"""``leap-export evaluate``: quality of exited vs full-depth embeddings (LEAP paper §4.5, §5.1, C.7)."""

from __future__ import annotations

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
    theta_option,
    variant_option,
)


@click.command("evaluate")
@no_progress_option
@artifacts_argument
@eval_sets_option
@sts_file_option
@theta_option
@min_layer_option
@bible_limit_option
@bible_corpus_limit_option
@label_free_option
@click.option(
    "--compare",
    "reference",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Another artifact folder (e.g. the stock model's): compare exited quality with its full depth.",
)
@variant_option
@batch_size_option
@report_option
@distinct_files
def command(
    artifacts,
    eval_sets,
    sts_file,
    theta,
    min_layer,
    bible_limit,
    bible_corpus_limit,
    sentences,
    reference,
    variant,
    batch_size,
    report_path,
    no_progress,
):
    """Quality of ARTIFACTS' exited embeddings vs full depth: labelled sets and label-free agreement."""
    from leap_export.quality import evaluate_artifacts, parse_eval_sets
    from leap_export.textio import read_lines

    report = evaluate_artifacts(
        artifacts,
        eval_sets=parse_eval_sets(eval_sets, sts_file=sts_file),
        sts_file=sts_file,
        theta=theta,
        min_layer=min_layer,
        variant=variant,
        bible_limit=bible_limit,
        bible_corpus_limit=bible_corpus_limit,
        label_free_sentences=read_lines(sentences, skip_empty=True) if sentences else None,
        reference_artifacts=reference,
        batch_size=batch_size,
        report_path=report_path,
        progress=not no_progress,
    )
    print_report(report)
    if report_path:
        click.echo(f"report: {report_path}")


def _num(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def print_report(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from leap_export.commands._options import console as make_console

    console = make_console()
    p, lf, ref = report["policy"], report["label_free"], report["reference"]
    table = Table(
        title=escape(
            f"{report.get('model') or report['artifacts']}: theta {p['theta']:g}, min layer {p['min_layer']}, "
            f"k {p['patience']}{'' if p['enabled'] else ' (exits disabled)'}"
        ),
        title_justify="left",
    )
    for name in ("set", "metric", "full depth", "early exit", "drop %"):
        table.add_column(name, justify="left" if name in ("set", "metric") else "right")
    if ref:
        table.add_column(escape(f"ref: {ref.get('model') or ref['artifacts']}"), justify="right")
        table.add_column("drop vs ref %", justify="right")
    for m in report["metrics"]:
        cells = [
            m["set"],
            m["metric"] + (" *" if m["primary"] else ""),
            _num(m["full"]),
            _num(m["exited"]),
            _pct(m["drop"]),
        ]
        if ref:
            cells += [_num(m["reference"]), _pct(m["drop_vs_reference"])]
        table.add_row(*cells)
    if report["metrics"]:
        console.print(table)
        console.print("[dim]* primary metric; drop = (full - exited) / |full|, negative = a gain[/dim]")
    rates = ", ".join(f"L{layer}: {100 * r:.1f}%" for layer, r in lf["exit_rate"].items())
    console.print(
        escape(
            f"label-free ({lf['count']} sentences, {lf['source']}): exited vs full cos mean {lf['mean_similarity']:.4f} "
            f"(min {lf['min_similarity']:.4f}), NN@10 {lf['nn_at_10']:.3f}, NN@10 < 0.5: "
            f"{100 * lf['nn_fail_lt_0.5']:.1f}%, < 0.3: {100 * lf['nn_fail_lt_0.3']:.1f}%"
        ),
        highlight=False,
    )
    console.print(
        escape(
            f"exits {rates}; E[layers] {lf['expected_layers']:.2f} of {report['num_layers']} "
            f"({lf['layer_reduction']:.2f}x theoretical); exit by layer {lf['exit_at_layer']}: "
            f"{100 * lf['exit_at']:.1f}%"
        ),
        highlight=False,
    )
    from leap_export.commands.diagnose import print_by_length

    print_by_length(console, report.get("by_length"), f"theta {p['theta']:g}, every text of the run")
    if ref:
        ok = ref["within_target"]
        console.print(
            f"[{'green' if ok else 'red'}]exited quality {'within' if ok else 'NOT within'} "
            f"{100 * ref['target_drop']:g}% of the reference on every primary metric[/]"
        )
