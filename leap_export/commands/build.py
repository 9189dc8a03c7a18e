import click

from leap_export.commands._options import (
    _csv_ints,
    _positive,
    _unit_interval,
    no_progress_option,
    output_folder,
)
from leap_export.exitcheck import EXITS_CHOICES
from leap_export.export import MAX_OPSET, MIN_OPSET, OPSET


@click.command("build")
@no_progress_option
@click.argument("model")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=str),
    callback=output_folder,
    help="Artifact folder to create.",
)
@click.option(
    "--boundaries",
    callback=_csv_ints,
    default=None,
    help="Layers after which an exit may be checked, e.g. 3,4,5,6. Default: min_layer..L.",
)
@click.option(
    "--theta", type=float, default=None, callback=_unit_interval, help="Default exit threshold (0.95)."
)
@click.option(
    "--patience",
    type=int,
    default=None,
    callback=_positive,
    help="k: compare layer l with layer l-k (1). Baked into the graphs.",
)
@click.option(
    "--min-layer",
    type=int,
    default=None,
    callback=_positive,
    help="l_min. Default: the recipe's, or the min_layer a `leap-export train` output was trained for, "
    "else L/2.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8"]),
    default="fp32",
    show_default=True,
    help="fp32 builds the folder; int8 adds a quantised variant to the fp32 build at --out (MODEL: the "
    "model it was built from, or that folder itself).",
)
@click.option(
    "--opset", type=int, default=OPSET, show_default=True, help=f"ONNX opset ({MIN_OPSET}..{MAX_OPSET})."
)
@click.option(
    "--exits",
    type=click.Choice(EXITS_CHOICES),
    default="auto",
    show_default=True,
    help="The manifest's default: auto turns early exit on only if the model passes the exit-compatibility "
    "check on built-in probe sentences (a model that fails ships with exits off, and says why); on/off decide "
    "regardless.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an earlier build or an empty folder at --out (kept until the "
    "new one is complete); a folder that is not a build is never replaced.",
)
def command(model, out, boundaries, theta, patience, min_layer, precision, opset, exits, force, no_progress):
    """Export MODEL (a short name such as minilm-l6, or a model folder) into per-layer-segment ONNX graphs."""
    from leap_export.export import build
    from leap_export.inspect import summary

    path = build(
        model,
        out,
        boundaries=boundaries,
        theta=theta,
        patience=patience,
        min_layer=min_layer,
        precision=precision,
        opset=opset,
        force=force,
        progress=not no_progress,
        exits=exits,
    )
    summary(path)
