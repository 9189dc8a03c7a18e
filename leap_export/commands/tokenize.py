import click

from leap_export.commands._options import artifacts_argument, distinct_files, output_file


@click.command("tokenize")
@artifacts_argument
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="UTF-8 text file, one sentence per line (every line, empty ones too).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    callback=output_file,
    help="Token ids, one line per sentence: *.json writes {pad_id, max_length, vocab_size, ids: [[...]]}; any "
    "other name writes one line of space-separated ids per sentence (what examples/cpp reads).",
)
@distinct_files
def command(artifacts, input_path, output):
    """Token ids as the runtime computes them, for programs that run a build without Python (docs/c-api.md)."""
    from leap_export.tokenize import tokenize_file

    n, longest = tokenize_file(artifacts, input_path, output)
    click.echo(f"{n} sentences -> {output} (longest: {longest} tokens)")
