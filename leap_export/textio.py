"""Reading sentence files: one sentence per line, UTF-8, with errors that name the line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from leap_export.errors import LeapError

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # UTF-16 LE / BE


def read_lines(path: str | os.PathLike, *, skip_empty: bool = False) -> list[str]:
    """Every line of a UTF-8 text file without its line ending (empty lines kept unless ``skip_empty``)."""
    return list(iter_lines(path, skip_empty=skip_empty))


def iter_lines(path: str | os.PathLike, *, skip_empty: bool = False) -> Iterator[str]:
    """``read_lines`` one line at a time: a file of any size in constant memory."""
    path = Path(path)
    if path.is_dir():
        raise LeapError(f"{path} is a folder; pass a text file with one sentence per line")
    if not path.exists():  # pipes and process substitution (/dev/fd/N) exist without being regular files
        raise LeapError(f"{path}: no such file")
    # the one UTF-8 line reader: encode/verify/bench inputs, diagnose sentences and corpus user files
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if number == 1 and raw.startswith(_UTF16_BOMS):
                    # latin1 would "convert" it into text with a NUL after every letter, embedded without an error
                    raise LeapError(
                        f"{path} is UTF-16, not UTF-8: it starts with the byte-order mark "
                        f"{' '.join(f'{b:02X}' for b in raw[:2])}; re-encode the file as UTF-8, e.g. "
                        "`iconv -f utf-16 -t utf-8 IN > OUT`"
                    ) from None
                raise LeapError(
                    f"{path}, line {number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
                ) from None
            if number == 1:
                if raw == _UTF8_BOM:  # the file is a byte-order mark alone: an editor's empty file, no lines
                    return
                line = line.removeprefix("\ufeff")
            line = line.rstrip("\r\n")
            if skip_empty and not line.strip():
                continue
            yield line


def sample_sentences() -> list[str]:
    """The small built-in set used by the demo and, by default, by verify and bench."""
    text = resources.files("leap_export.resources").joinpath("sample_sentences.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]
