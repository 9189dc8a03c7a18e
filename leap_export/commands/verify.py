import click

from leap_export.commands._options import (
    artifacts_argument,
    batch_size_option,
    distinct_files,
    min_layer_option,
    no_progress_option,
    output_file,
    theta_option,
)


@click.command("verify")
@no_progress_option
@artifacts_argument
@click.option(
    "--sentences",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="UTF-8 file, one sentence per line. Default: the built-in sample set.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    callback=output_file,
    help="Write the JSON report.",
)
@click.option(
    "--variant", default=None, help="Which build to check (fp32, int8, ...). Default: the manifest's."
)
@click.option(
    "--model", default=None, help="Reference model (short name or folder) if not the manifest's source."
)
@theta_option
@min_layer_option
@batch_size_option
@distinct_files
def command(artifacts, sentences, report, variant, model, theta, min_layer, batch_size, no_progress):
    """Prove parity (PyTorch vs ONNX Runtime, per segment and end to end) and exit quality (exited vs full-depth
    embeddings at the manifest's policy, or at --theta / --min-layer). Exit code 1 on any failure."""
    from leap_export.textio import read_lines
    from leap_export.verify import verify

    texts = read_lines(sentences) if sentences else None
    if texts == []:
        raise click.BadParameter(
            f"{sentences} is empty; pass a file with one sentence per line, or leave "
            "--sentences out to check the built-in sample set",
            param_hint="--sentences",
        )
    result = verify(
        artifacts,
        texts,
        variant=variant,
        model=model,
        batch_size=batch_size,
        progress=not no_progress,
        theta=theta,
        min_layer=min_layer,
        on_stage=lambda line: click.echo(line, err=True),
    )
    _print(result)
    if report:
        result.save(report)
        click.echo(f"report written to {report}")
    if not result:
        raise SystemExit(1)


def _print(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=escape(
            f"verify {result.artifacts} [{result.variant}] on {result.sentences} sentences "
            "(2 of them long probes)"
        )
    )
    for col in ("check", "metric", "value", "threshold", ""):
        table.add_column(col)
    for c in result.checks:
        value, threshold = ("-", "-") if c.metric == "error" else (f"{c.value:.6g}", f"{c.threshold:.6g}")
        table.add_row(
            escape(c.name),
            c.metric,
            value,
            threshold,
            "[green]pass[/green]" if c.passed else f"[red]FAIL[/red] {escape(c.detail)}",
        )
    from leap_export.commands._options import console as make_console

    console = make_console()
    console.print(table)
    for name, ran in result.backends.items():
        if ran["ran"]:
            console.print(f"backend {name}: ran ({ran['variant']}, {ran['precision']})", highlight=False)
        else:
            console.print(f"backend {name}: not run: {escape(ran['why_not'])}", highlight=False)
    ran = [name for name, b in result.backends.items() if b["ran"]]
    skipped = [name for name, b in result.backends.items() if not b["ran"]]
    scope = f" on {', '.join(ran)}" + (f" ({', '.join(skipped)} not run)" if skipped else "")
    if result:
        console.print(f"[green bold]PASSED[/green bold]: {len(result.checks)} checks{scope}", highlight=False)
    else:
        console.print(f"[red bold]FAILED[/red bold]: {len(result.failures)} of {len(result.checks)} checks")
        for c in result.failures:
            console.print(f"  - {c.describe()}", markup=False, highlight=False)
