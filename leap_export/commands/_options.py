"""Option groups shared by several commands (one definition, one default)."""

from __future__ import annotations

import os

import click


def _unit_interval(ctx, param, value):
    if value is not None and not 0.0 < value <= 1.0:
        raise click.BadParameter(f"must be in (0, 1], got {value}")
    return value


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be >= 1, got {value}")
    return value


def _output_path(*, folder: bool):
    """A click callback checking an output path before any work is done (missing parent folders are fine)."""

    def check(ctx, param, value):
        from trt_runtime.fileio import output_problem

        if value is not None and (problem := output_problem(value, folder=folder)):
            raise click.BadParameter(problem)
        return value

    return check


output_file = _output_path(folder=False)
output_folder = _output_path(folder=True)


def output_npy(ctx, param, value):
    """An output file in NumPy's .npy format: the name must say so (``np.load`` users expect it)."""
    value = output_file(ctx, param, value)
    if value is not None and not value.endswith(".npy"):
        raise click.BadParameter(
            f"embeddings are written as a NumPy .npy file; name it *.npy (got {value!r})"
        )
    return value


def output_image(ctx, param, value):
    """A picture output: its format follows the name (.png, .svg or .pdf)."""
    from leap_export.errors import LeapError
    from leap_export.plots import image_format

    value = output_file(ctx, param, value)
    if value is not None:
        try:
            image_format(value)
        except LeapError as e:
            raise click.BadParameter(str(e)) from None
    return value


def distinct_files(f):
    """Refuse a command line that names one file twice where one of the two would be written.

    Outputs are the options checked by the output callbacks above; every other path option is an input,
    and any argument naming an existing folder (an artifact or model folder) is an input folder, whose own
    files (``_owned_files``) no output may replace. Without this, ``--report sentences.txt`` replaced the
    sentences with the report, and ``--output e.npy --exit-layers e.npy`` kept only the second file written.
    """
    import functools

    from trt_runtime.fileio import same_file

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        outputs, inputs, folders = [], [], []
        for param in ctx.command.params:
            value = ctx.params.get(param.name)
            is_output = param.callback in (output_file, output_folder, output_npy, output_image)
            name = param.opts[0] if param.opts else param.name
            for item in value if isinstance(value, list | tuple) else [value]:  # multiple=True gives a tuple
                if isinstance(item, os.PathLike):  # click.Path(path_type=Path)
                    item = os.fspath(item)
                if not isinstance(item, str):
                    continue
                if not is_output and os.path.isdir(
                    item
                ):  # an artifact or model folder (also MODEL arguments)
                    folders.append((name, item))
                elif isinstance(param.type, click.Path):
                    (outputs if is_output else inputs).append((name, item))
        for name, path in outputs:
            for other, folder in folders:
                if os.path.isfile(path) and os.path.realpath(path) in _owned_files(folder):
                    raise click.UsageError(
                        f"{name} {path} would overwrite a file the input folder {other} {folder} is made of; write "
                        "it somewhere else"
                    )
        for i, (name, path) in enumerate(outputs):
            for other, other_path in outputs[:i] + inputs:
                if same_file(path, other_path):
                    role = "output" if (other, other_path) in outputs else "input"
                    raise click.UsageError(
                        f"{name} {path} is the same file as the {role} {other} {other_path}: writing it would "
                        "destroy the other; give it another name"
                    )
        return f(*args, **kwargs)

    return wrapper


def _owned_files(folder: str) -> set[str]:
    """Real paths of the files an artifact folder (its manifest and every file it names) or a model folder
    (config, weights, tokenizer, module folders) is made of; a report saved beside them is not one."""
    from pathlib import Path

    from leap_export.sources import MODEL_FILES
    from trt_runtime.errors import ArtifactError
    from trt_runtime.manifest import MANIFEST_NAME, load_manifest

    root = Path(folder)
    owned: list[Path] = []
    if (root / MANIFEST_NAME).is_file():
        owned += [root / MANIFEST_NAME, *root.glob("*.onnx")]
        try:
            owned += [root / entry["file"] for entry in load_manifest(root, check_files=False).file_entries()]
        except ArtifactError:  # a damaged manifest: still protect it and the graphs beside it
            pass
    if (root / "config.json").is_file():
        owned += [root / name for name in MODEL_FILES]
        owned += [p for sub in root.iterdir() if sub.is_dir() for p in sub.rglob("*") if p.is_file()]
    return {os.path.realpath(p) for p in owned}


def _csv_ints(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 3,4,5,6, got {value!r}") from None


def _csv_sizes(ctx, param, value):
    """Comma-separated sizes, each >= 1, at least one."""
    try:
        sizes = _csv_ints(ctx, param, value)
    except click.BadParameter:
        sizes = []
    if sizes is not None and (not sizes or min(sizes) < 1):
        raise click.BadParameter(f"expected comma-separated integers >= 1 like 1,8,32, got {value!r}")
    return sizes


theta_option = click.option(
    "--theta",
    type=float,
    default=None,
    callback=_unit_interval,
    help="Exit threshold on cos(p_l, p_{l-k}), in (0, 1]. Default: the manifest's policy.",
)
min_layer_option = click.option(
    "--min-layer",
    type=int,
    default=None,
    callback=_positive,
    help="Earliest layer after which a sample may exit. Default: the manifest's policy.",
)
batch_size_option = click.option(
    "--batch-size", type=int, default=32, show_default=True, callback=_positive, help="Sentences per batch."
)
threads_option = click.option(
    "--threads",
    type=int,
    default=None,
    callback=_positive,
    help="ONNX Runtime threads (one pool shared by all segments). Default: the CPUs this process may use "
    "(its affinity, capped by a container's CPU quota).",
)
artifacts_argument = click.argument("artifacts", type=click.Path(file_okay=False, path_type=str))

eval_sets_option = click.option(
    "--eval",
    "eval_sets",
    default=None,
    metavar="SETS",
    help="Comma-separated evaluation sets: lee, bible, sts. Default: lee (and sts with --sts-file).",
)
sts_file_option = click.option(
    "--sts-file",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="STS file (STS-B TSV, GLUE TSV, or CSV with sentence1,sentence2,score) for the 'sts' set.",
)
label_free_option = click.option(
    "--sentences",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Label-free set (one sentence per line) for NN@10 and exit rates. Default: the eval texts.",
)
bible_limit_option = click.option(
    "--bible-limit",
    type=int,
    default=1000,
    show_default=True,
    callback=_positive,
    help="Bible paraphrase queries (a deterministic subset).",
)
bible_corpus_limit_option = click.option(
    "--bible-corpus-limit",
    type=int,
    default=None,
    callback=_positive,
    help="Shrink the KJV corpus to this many distinct verse texts (every query's kept). Default: all 30,834.",
)
report_option = click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    callback=output_file,
    help="Write the JSON report here.",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(["auto", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"]),
    default="auto",
    show_default=True,
    help="Which runtime runs the build: auto takes TensorRT where engines for this GPU were built, else ONNX "
    "Runtime on CUDA where onnxruntime-gpu and a GPU are there, else the CPU. A backend named that cannot run "
    "is an error saying what is missing.",
)
variant_option = click.option(
    "--variant",
    default=None,
    help="Which build to run (fp32, fp16, int8, tensorrt-sm<cc>). Default: the manifest's.",
)


def console():
    """A rich console for the commands' tables. Piped into a log it is not 80 columns wide (rich's default
    there, which clipped the calibrate table's columns to "E[l…"), but as wide as the tables need."""
    import sys

    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=200)


def _no_progress(ctx, param, value):
    """Also silence the bars of the libraries a command loads (transformers' "Loading weights")."""
    if value:
        import sys

        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub / transformers load
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
    return value


no_progress_option = click.option(
    "--no-progress",
    is_flag=True,
    callback=_no_progress,
    help="Hide progress bars (for logs: tqdm redraws fill a file).",
)
