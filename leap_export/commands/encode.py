import click

from leap_export.commands._options import (
    artifacts_argument,
    backend_option,
    batch_size_option,
    distinct_files,
    min_layer_option,
    output_file,
    output_npy,
    theta_option,
    threads_option,
    variant_option,
)


@click.command("encode")
@artifacts_argument
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="UTF-8 text file, one sentence per line (every line is embedded, empty ones too).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    callback=output_npy,
    help="Embeddings as .npy, float32 [N, H], in input order.",
)
@theta_option
@min_layer_option
@batch_size_option
@click.option(
    "--exits/--full-depth",
    default=None,
    help="--exits: exit early even where the build's default has exits off (its exit-compatibility check "
    "failed; a warning names what failed); --theta or --min-layer implies it. --full-depth: every sentence runs all layers. "
    "Default: the manifest's policy.",
)
@click.option(
    "--exit-layers",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    callback=output_file,
    help="Write each line's exit layer and the run's exit statistics as JSON.",
)
@variant_option
@backend_option
@threads_option
@distinct_files
def command(
    artifacts, input_path, output, theta, min_layer, batch_size, exits, exit_layers, variant, backend, threads
):
    """Embed sentences with early exit and per-sample batch compaction."""
    from leap_export.encode import encode_file

    if exits is False and (theta is not None or min_layer is not None):
        raise click.UsageError(
            "--full-depth runs every layer for every sentence: --theta and --min-layer would be "
            "ignored; drop them, or drop --full-depth"
        )
    stats = encode_file(
        artifacts,
        input_path,
        output,
        theta=theta,
        min_layer=min_layer,
        batch_size=batch_size,
        exits=exits,
        exit_layers_path=exit_layers,
        variant=variant,
        backend=backend,
        threads=threads,
    )
    rates = ", ".join(f"L{k}: {v:.0%}" for k, v in stats["exit_rate"].items())
    if not stats.get("policy", {}).get("enabled", True):
        rates = "off (full depth; --exits turns them on)"
    if not stats["samples"]:
        click.echo(f"0 embeddings -> {output} (the input has no lines)", err=True)  # stdout may be an output
        return
    click.echo(
        f"{stats['samples']} embeddings -> {output}; exits {rates}; E[layers] {stats['expected_layers']:.2f}",
        err=True,
    )
