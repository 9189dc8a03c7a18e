"""`leap-export corpus`: build the offline training corpus (parses options, calls build_corpus, prints counts)."""

from __future__ import annotations

from pathlib import Path

import click

from leap_export.commands._options import distinct_files, no_progress_option, output_folder

SOURCE_NAMES = (
    "fortunes", "wordnet", "bible-kjv", "bible-web", "gcide", "python-docs", "fortune-passages", "python-passages"
)  # fmt: skip


@click.command("corpus")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    callback=output_folder,
    help="Folder to write train.txt, val.txt, test.txt and corpus.json into.",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(SOURCE_NAMES),
    help="A Debian text source (repeatable). Default: every installed sentence source (the *-passages "
    "sources, multi-sentence texts of 201 to 1,500 characters, only when named).",
)
@click.option(
    "--no-debian",
    is_flag=True,
    help="Use only your --file sentences, no Debian text source.",
)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Your own sentences: .txt (one per line), .jsonl or .csv/.tsv (repeatable).",
)
@click.option(
    "--field", default=None, help="JSONL field / CSV column holding the text (default: text or sentence)."
)
@click.option(
    "--max-sentences",
    type=click.IntRange(min=1),
    default=None,
    help="Keep a deterministic subset of this many sentences.",
)
@click.option("--val-fraction", type=float, default=0.01, show_default=True)
@click.option("--test-fraction", type=float, default=0.01, show_default=True)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Changes which sentences land in which split."
)
@no_progress_option
@distinct_files
def command(
    out_dir: Path,
    sources: tuple[str, ...],
    no_debian: bool,
    files: tuple[Path, ...],
    field: str | None,
    max_sentences: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    no_progress: bool,
) -> None:
    """Build the offline training corpus (deduplicated English sentences, split train/val/test).

    A sentence is kept at 21 to 200 characters after whitespace is collapsed (the paper's "> 20
    characters"), once across all sources; the table counts what each source lost to length and to
    duplicates."""
    from leap_export.data.corpus import build_corpus

    if no_debian and sources:
        raise click.UsageError("--no-debian and --source contradict each other: pass one of them")
    if no_debian and not files:
        raise click.UsageError("--no-debian needs your own sentences: pass them with --file")
    manifest = build_corpus(
        out_dir,
        sources=[] if no_debian else (list(sources) or None),
        user_files=files,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_sentences=max_sentences,
        seed=seed,
        progress=not no_progress,
        text_field=field,
    )
    _print_counts(manifest, out_dir)


def _print_counts(manifest: dict, out_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"corpus: {out_dir}")
    for column in ("source", "yielded", "length-filtered", "duplicates", "kept", "train", "val", "test"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, info in manifest["sources"].items():
        splits = info["splits"]
        table.add_row(
            name,
            f"{info['yielded']:,}",
            f"{info['length_filtered']:,}",
            f"{info['duplicates']:,}",
            f"{info['unique']:,}",
            *(f"{splits[s]:,}" for s in ("train", "val", "test")),
        )
    totals = {s: manifest["splits"][s]["sentences"] for s in ("train", "val", "test")}
    table.add_row(
        "total",
        "",
        "",
        "",
        f"{manifest['total']:,}",
        *(f"{totals[s]:,}" for s in ("train", "val", "test")),
        style="bold",
    )
    from leap_export.commands._options import console

    console().print(table)
    passages = ""
    if any(name.endswith("-passages") for name in manifest["sources"]):
        passages = f" ({manifest['max_chars'] + 1}-{manifest['max_passage_chars']} for passages)"
    click.echo(
        f"kept: {manifest['min_chars_exclusive'] + 1}-{manifest['max_chars']} characters{passages} after "
        "whitespace is collapsed, first occurrence across sources",
        err=True,
    )
    for split in ("val", "test"):
        if manifest[f"{split}_fraction"] > 0 and not totals[split]:
            expected = manifest["total"] * manifest[f"{split}_fraction"]
            advice = (
                f"pass more sentences or a larger --{split}-fraction"
                if expected < 20
                # far more than chance allows: each sentence's split is a hash of the sentence and the seed,
                # so an earlier corpus's train.txt, given back with the same --seed, lands in train again
                else f"the sentences all fell in train, as an earlier corpus's train.txt does with the same "
                f"--seed ({manifest['seed']}): pass another --seed"
            )
            click.echo(
                f"WARNING: the {split} split is empty ({manifest['total']:,} sentences at fraction "
                f"{manifest[f'{split}_fraction']}); {advice}",
                err=True,
            )
