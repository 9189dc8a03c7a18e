import click

from leap_export.commands._options import (
    _csv_sizes,
    artifacts_argument,
    backend_option,
    distinct_files,
    min_layer_option,
    no_progress_option,
    output_folder,
    theta_option,
    threads_option,
    variant_option,
)


@click.command("bench")
@no_progress_option
@artifacts_argument
@click.option(
    "--sentences",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="UTF-8 file, one sentence per line. Default: the built-in sample set.",
)
@click.option(
    "--batch-sizes",
    callback=_csv_sizes,
    default="1,8,32",
    show_default=True,
    help="Batch sizes to time, comma-separated.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Warm-up iterations per configuration.",
)
@click.option(
    "--iters",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Timed iterations per configuration.",
)
@theta_option
@min_layer_option
@variant_option
@backend_option
@threads_option
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="Also time sentence-transformers' encode on PyTorch (needs the [train] extra), and with its ONNX "
    "backend and fastembed where optimum and fastembed are installed (`make st-onnx`).",
)
@click.option(
    "--also-variant",
    "also_variants",
    multiple=True,
    help="Another build to time in the same rounds (repeatable), e.g. int8 after `build --precision int8`: "
    "its monolithic graph and early exit, with speedups against the main variant's monolithic graph.",
)
@click.option(
    "--schedule",
    type=click.Choice(["round-robin", "blocks"]),
    default="round-robin",
    show_default=True,
    help="round-robin: every configuration once per round (noise hits all alike; each starts cache-cold). "
    "blocks: alternating blocks of 20 timed runs, each after 0.1 s untimed, the steady state of a service "
    "running one pipeline.",
)
@click.option(
    "--breakdown",
    is_flag=True,
    help="Also time every segment composed into one graph (all exit heads, no exits), to split the "
    "monitoring overhead into monitoring ops and graph breaks.",
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "native", "python"]),
    default="auto",
    show_default=True,
    help="The ONNX Runtime CPU backend's host loop: native (C; the monolithic baseline then runs in the same "
    "ONNX Runtime copy), python, or auto (native where its extension is built).",
)
@click.option(
    "--cuda-graphs",
    is_flag=True,
    help="On a GPU backend (onnxruntime-cuda, tensorrt): run every graph as a CUDA graph per input shape, "
    "captured at its first calls (warm-up) and replayed after. Refused on the CPU.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Repeat the whole bench in N fresh processes and report medians, with each ratio's range. "
    "At batch 1 the monitoring overhead moves by a few points between processes; one run is one draw.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    callback=output_folder,
    help="Folder for bench.json, bench.md and bench.png.",
)
@distinct_files
def command(
    artifacts,
    sentences,
    batch_sizes,
    warmup,
    iters,
    theta,
    min_layer,
    variant,
    backend,
    threads,
    baselines,
    also_variants,
    schedule,
    breakdown,
    loop,
    cuda_graphs,
    processes,
    out,
    no_progress,
):
    """Latency: monolithic vs segmented (exits off) vs early exit, and sentence-transformers, side by side."""
    from leap_export.bench import bench_processes, markdown, save
    from leap_export.textio import read_lines

    texts = read_lines(sentences, skip_empty=True) if sentences else None
    if texts == []:
        raise click.BadParameter(
            f"{sentences} holds no sentences (every line is empty); pass a file with one "
            "sentence per line, or leave --sentences out to time the built-in sample set",
            param_hint="--sentences",
        )
    report = bench_processes(
        artifacts,
        texts,
        processes=processes,
        batch_sizes=tuple(batch_sizes),
        warmup=warmup,
        iters=iters,
        theta=theta,
        min_layer=min_layer,
        variant=variant,
        threads=threads,
        baselines=baselines,
        also_variants=tuple(also_variants),
        breakdown=breakdown,
        schedule=schedule,
        loop=loop,
        backend=backend,
        cuda_graphs=cuda_graphs,
        progress=not no_progress,
    )
    click.echo(markdown(report))
    for name, err in report["baseline_errors"].items():
        click.echo(f"baseline {name} not measured: {err}")
    if out:
        paths = save(report, out)
        click.echo("written: " + ", ".join(str(p) for p in paths.values()))
