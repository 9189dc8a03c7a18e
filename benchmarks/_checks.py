"""Input checks shared by the measurement scripts: bad input ends in one argparse error line, before any
timing, instead of a traceback or a table of nan."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """argparse ``type=``: a comma-separated list of integers >= 1, e.g. ``1,8,32``."""
    return [positive_int(part.strip()) for part in text.split(",")]


def check_inputs(
    ap: argparse.ArgumentParser,
    artifacts: str,
    *,
    sentences: str | None = None,
    json_out: str | None = None,
    variant: str | None = None,
) -> list[str]:
    """The artifact folder loads (files hashed), the sentences read, and ``json_out`` can be written;
    returns the sentences (the built-in sample set when none are given)."""
    from leap_export.errors import LeapError
    from leap_export.textio import read_lines, sample_sentences
    from trt_runtime.errors import ArtifactError
    from trt_runtime.fileio import output_problem
    from trt_runtime.manifest import load_manifest

    try:
        load_manifest(artifacts, variant=variant)
        texts = read_lines(sentences, skip_empty=True) if sentences else sample_sentences()
    except (ArtifactError, LeapError, OSError) as e:
        ap.error(str(e))
    if not texts:
        ap.error(f"{sentences} holds no sentences")
    if json_out is not None and (problem := output_problem(json_out)):
        ap.error(f"--json: {problem}")
    return texts
