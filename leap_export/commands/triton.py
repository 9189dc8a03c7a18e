import click

from leap_export.commands._options import artifacts_argument, backend_option, variant_option


def _at_least(low: int):
    def check(ctx, param, value):
        if value is not None and value < low:
            raise click.BadParameter(f"must be >= {low}, got {value}")
        return value

    return check


def _rate(ctx, param, value):
    if not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"must be in [0, 1], got {value}")
    return value


def model_options(f):
    """The options of the generated model (``triton`` and ``serve``): one definition, one default."""
    for option in reversed(
        [
            click.option(
                "--max-batch-size",
                type=int,
                default=32,
                show_default=True,
                callback=_at_least(1),
                help="Most texts one execute() runs, over all the requests the dynamic batcher merged; they run "
                "as one early-exit batch. A request with more texts is refused.",
            ),
            click.option(
                "--max-queue-delay-us",
                type=int,
                default=1000,
                show_default=True,
                callback=_at_least(0),
                help="How long the dynamic batcher may hold a request to merge it with others (microseconds).",
            ),
            click.option(
                "--instances",
                type=int,
                default=1,
                show_default=True,
                callback=_at_least(1),
                help="Model instances (processes). Each gets CPUs // N ONNX Runtime threads, so together they "
                "use the CPUs the server may use.",
            ),
            variant_option,
            backend_option,
            click.option(
                "--layout",
                type=click.Choice(["python", "bls", "bls-python"]),
                default="python",
                show_default=True,
                help="python: one Python model runs every segment. bls: a Python orchestrator calls one model per "
                "segment on Triton's onnxruntime or TensorRT backend (GPU servers). bls-python: the same with the "
                "segment models on the Python backend (a server with only that backend).",
            ),
            click.option(
                "--shadow-rate",
                type=float,
                default=0.0,
                show_default=True,
                callback=_rate,
                help="Fraction of texts re-run at full depth to record cosine(exited, full) in the "
                "leap_shadow_cosine histogram (exit-quality monitor).",
            ),
        ]
    ):
        f = option(f)
    return f


def serve_options(max_batch_size, max_queue_delay_us, instances, variant, backend, layout, shadow_rate):
    from leap_export.triton.repository import ServeOptions

    return ServeOptions(max_batch_size, max_queue_delay_us, instances, variant, backend, shadow_rate, layout)


@click.command("triton")
@artifacts_argument
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="The model repository to write (tritonserver --model-repository): created if missing, in a folder that exists; other models in it are left alone.",
)
@model_options
@click.option("--force", is_flag=True, help="Replace the leap_encoder model already in --out.")
def command(artifacts, out, force, **options):
    """Write a Triton model repository: leap_encoder, text in, early-exit embeddings out."""
    from leap_export.triton.repository import MODEL_NAME, write_repository

    options = serve_options(**options)
    write_repository(artifacts, out, options, force=force)
    segments = "" if options.layout == "python" else " and its segment models (leap_segment_*)"
    click.echo(
        f"{out}/{MODEL_NAME}{segments} written; run it with tritonserver --model-repository {out} (the stub's Python needs "
        "numpy<2, tokenizers, onnxruntime: docs/deploy.md), or `leap-export serve ART`",
        err=True,
    )
