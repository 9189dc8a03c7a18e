"""``leap-export train``: LEAP (or, with --baseline, the same pipeline without L_exit) distillation."""

from __future__ import annotations

import click

from leap_export.commands._options import distinct_files, no_progress_option, output_folder


@click.command("train")
@no_progress_option
@click.option(
    "--student", default="minilm-l6", show_default=True, help="Short name or model folder to fine-tune."
)
@click.option(
    "--teacher",
    default=None,
    help="Short name or model folder to distil from [default: the student's "
    "own checkpoint, i.e. self-distillation; mpnet-base is a stronger 12-layer teacher].",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False),
    callback=output_folder,
    help="Output model folder: new, empty, or a run with a checkpoint to --resume.",
)
@click.option(
    "--baseline",
    is_flag=True,
    help="The paper's controlled baseline: identical training without the exit terms (L_exit, L_late).",
)
@click.option(
    "--corpus", type=click.Path(exists=True, file_okay=False), help="Corpus folder (uses train.txt)."
)
@click.option(
    "--sentences",
    "sentences_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Sentences file: .txt (one per line), .jsonl or .csv.",
)
@click.option("--max-sentences", type=int, default=None, help="Use only the first N training sentences.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (instead of --epochs).")
@click.option("--epochs", type=float, default=None, help="Passes over the sentences [default: 1].")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Global batch (split over GPUs).")
@click.option("--lr", type=float, default=5e-5, show_default=True)
@click.option(
    "--max-length", type=int, default=128, show_default=True, help="Tokens per sentence in training."
)
@click.option(
    "--checkpoint-every", type=int, default=200, show_default=True, help="Steps between checkpoints."
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run from the checkpoint in --out, with the same settings "
    "(--steps included: the learning-rate schedule depends on them, so a finished run cannot be "
    "extended; start a new run from its output folder instead).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--dropout",
    type=float,
    default=None,
    help="Student dropout [default: the checkpoint's]; 0 for short runs.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other LeapConfig field, e.g. --set alpha_inter=0.1 --set tau=0.97 (repeatable).",
)
@distinct_files
def command(
    student,
    teacher,
    out,
    baseline,
    corpus,
    sentences_file,
    max_sentences,
    steps,
    epochs,
    batch_size,
    lr,
    max_length,
    checkpoint_every,
    resume,
    seed,
    dropout,
    settings,
    no_progress,
) -> None:
    """Distil a teacher into an exit-ready student; writes a SentenceTransformer folder.

    Runs under torchrun for multi-GPU (DistributedDataParallel): torchrun --nproc_per_node N -m leap_export.cli train ...
    """

    from leap_export.train.config import LeapConfig, parse_settings
    from leap_export.train.trainer import run_training

    options = dict(
        dropout=dropout,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        steps=steps,
        epochs=epochs,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    overrides = parse_settings(settings)
    ctx = click.get_current_context()
    both = [
        k
        for k in overrides
        if k in options and ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE
    ]
    if both:
        names = ", ".join("--" + k.replace("_", "-") for k in both)
        raise click.UsageError(f"{names} given twice, as an option and with --set; keep one")
    config = LeapConfig(
        **{**options, **overrides}
    )  # --set also sets the named options (when not given as such)
    if baseline:
        config = config.as_baseline()
    path = run_training(
        student,
        out,
        teacher=teacher,
        corpus=corpus,
        sentences_file=sentences_file,
        max_sentences=max_sentences,
        config=config,
        resume=resume,
        show_progress_bar=not no_progress,
    )
    click.echo(f"wrote {path} ({config.mode})")
