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
from leap_export.tensorrt_build import DEFAULT_MAX_BATCH, DEFAULT_OPT_BATCH, DEFAULT_OPT_SEQ


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
    type=click.Choice(["fp32", "fp16", "int8"]),
    default=None,
    help="fp32 (the default) builds the folder; fp16 and int8 add a variant to the fp32 build at --out "
    "(MODEL: the model it was built from, or that folder itself). With --backend tensorrt: the graphs the "
    "engines are built from (default fp16).",
)
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    show_default=True,
    help="tensorrt adds TensorRT engines for this GPU to the build at --out (`build ART --out ART --backend "
    "tensorrt`), from its fp16 graphs (converted first if the build has none); run it on the GPU (type) "
    "that will run them.",
)
@click.option(
    "--opt-batch",
    type=int,
    default=None,
    callback=_positive,
    help=f"TensorRT: the batch size the engines are tuned for (default {DEFAULT_OPT_BATCH}).",
)
@click.option(
    "--max-batch",
    type=int,
    default=None,
    callback=_positive,
    help=f"TensorRT: the largest batch the engines take (default {DEFAULT_MAX_BATCH}).",
)
@click.option(
    "--opt-seq",
    type=int,
    default=None,
    callback=_positive,
    help=f"TensorRT: the sequence length the engines are tuned for (default {DEFAULT_OPT_SEQ}, at most --max-seq).",
)
@click.option(
    "--max-seq",
    type=int,
    default=None,
    callback=_positive,
    help="TensorRT: the longest sequence the engines take (default: the build's max_seq_length).",
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
def command(
    model,
    out,
    boundaries,
    theta,
    patience,
    min_layer,
    precision,
    backend,
    opt_batch,
    max_batch,
    opt_seq,
    max_seq,
    opset,
    exits,
    force,
    no_progress,
):
    """Export MODEL (a short name such as minilm-l6, or a model folder) into per-layer-segment ONNX graphs."""
    from leap_export.errors import LeapError
    from leap_export.inspect import summary

    profile = {"opt_batch": opt_batch, "max_batch": max_batch, "opt_seq": opt_seq, "max_seq": max_seq}
    if backend == "tensorrt":
        from pathlib import Path

        from leap_export.tensorrt_build import build_engines, check_request

        options = {"boundaries": boundaries, "theta": theta, "patience": patience, "min_layer": min_layer}
        check_request(model, Path(out), **options, opset=opset != OPSET, exits=exits != "auto")
        path = build_engines(
            out, source_variant=precision or "fp16", profiles=profile, force=force, progress=not no_progress
        )
    else:
        given = [f"--{key.replace('_', '-')}" for key, value in profile.items() if value is not None]
        if given:
            raise LeapError(f"{', '.join(given)} set the TensorRT engines' profile: pass --backend tensorrt")
        from leap_export.export import build

        path = build(
            model,
            out,
            boundaries=boundaries,
            theta=theta,
            patience=patience,
            min_layer=min_layer,
            precision=precision or "fp32",
            opset=opset,
            force=force,
            progress=not no_progress,
            exits=exits,
        )
    summary(path)
