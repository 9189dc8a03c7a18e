"""Build the offline training corpus: deduplicated English sentences from Debian text packages and user files.

Each source is a function that yields sentences (``SOURCES``). A sentence is normalised (NFC, whitespace
collapsed), kept when it is longer than ``MIN_CHARS`` and at most ``MAX_CHARS`` characters, and
deduplicated on its normalised text. The passage sources (``PASSAGE_SOURCES``) yield multi-sentence texts
instead, kept at more than ``MAX_CHARS`` and at most ``MAX_PASSAGE_CHARS`` characters: documents such as
news articles run 50 to 150 words, and a model trained on sentences alone never shows its intermediate layers
a text that long. Its split (train/val/test) depends only on a keyed BLAKE2b hash of
that text, so adding a source or a file never moves an existing sentence to another split.

Output folder: ``train.txt``, ``val.txt``, ``test.txt`` (one sentence per line, in a deterministic
shuffled order) and ``corpus.json`` (what it was built from, the counts and each file's SHA-256).
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leap_export.errors import LeapError
from trt_runtime.fileio import ensure_parent, temp_folder

MIN_CHARS = 20  # a sentence must be longer than this (paper, Appendix G: "> 20 characters")
MAX_CHARS = 200
MAX_PASSAGE_CHARS = 1500  # about 250 words; longer passages would be truncated at 256 tokens anyway
PASSAGE_MIN_WORDS = 50  # python-passages joins consecutive paragraphs of one page up to this many words
SPLITS = ("train", "val", "test")
CORPUS_MANIFEST = "corpus.json"
CORPUS_FORMAT = 1

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
SWORD_DIR = Path("/usr/share/sword")
GCIDE_FILE = Path("/usr/share/dictd/gcide.dict.dz")
PYDOC_DIR = Path("/usr/share/doc/python3.11/html/_sources")

KJV_MODULE = "engKJV2006eb"
WEB_MODULE = "engWEB2015eb"

INSTALL_HINT = "install it with `sudo scripts/install_data_sources.sh` (or `apt-get install {package}`)"


class SourceUnavailable(LeapError):
    """A corpus source whose files (or reader package) are not installed on this machine."""


# ---------------------------------------------------------------------------------------------------------
# Text helpers


_WS = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def normalize(text: str) -> str:
    """NFC, no control characters, whitespace runs collapsed to one space, stripped."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    return _WS.sub(" ", text).strip()


def keep_length(sentence: str, passage: bool = False) -> bool:
    if passage:
        return MAX_CHARS < len(sentence) <= MAX_PASSAGE_CHARS
    return MIN_CHARS < len(sentence) <= MAX_CHARS


_ABBREVIATIONS = frozenset(
    "e.g i.e etc mr mrs ms dr st vs cf jr sr fig no vol ch p pp viz approx al ca esp prof gen rev col lt".split()
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]’”]*\s+(?=[\"'(\[“‘]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences at . ! ? followed by a capital, not after common abbreviations/initials."""
    text = normalize(text)
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        words = text[start : match.start() + 1].split()
        last = words[-1].rstrip(".").lower() if words else ""
        if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def plausible(sentence: str, min_words: int = 3, min_letter_ratio: float = 0.75) -> bool:
    """Mostly letters, a few words, no backslash: drops ASCII art, tables, code and markup debris."""
    if "\ufffd" in sentence or "\\" in sentence or len(sentence.split()) < min_words:
        return False
    visible = [c for c in sentence if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return letters >= min_letter_ratio * len(visible)


def _prose(sentence: str) -> bool:
    """Stricter check for running text: starts like a sentence and ends with terminal punctuation."""
    return plausible(sentence) and sentence[0].isupper() and sentence.rstrip("\"')”’")[-1:] in ".!?"


def _require(path: Path, package: str, source: str) -> None:
    if not path.exists():
        raise SourceUnavailable(
            f"corpus source {source!r} needs {path}, which is missing: "
            + INSTALL_HINT.format(package=package)
        )


# ---------------------------------------------------------------------------------------------------------
# Debian sources: each yields candidate sentences; the builder normalises, filters and deduplicates.


_FORTUNE_SKIP = {"art", "ascii-art"}  # pictures, not prose
_ATTRIBUTION = re.compile(r"^\s+--\s")
_OVERSTRIKE = re.compile(r".\x08")


def _fortune_entries(root: Path, source: str) -> Iterator[list[str]]:
    """Each fortune entry (split on a line holding only ``%``, attributions dropped) as its sentences."""
    _require(root / "fortunes", "fortunes fortunes-min", source)
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and "." not in p.name)
    for path in files:
        if path.name in _FORTUNE_SKIP:
            continue
        text = _OVERSTRIKE.sub("", path.read_text(encoding="utf-8", errors="replace"))
        for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
            lines = [line for line in entry.splitlines() if not _ATTRIBUTION.match(line)]
            yield split_sentences(" ".join(lines))


def iter_fortunes(root: Path = FORTUNES_DIR) -> Iterator[str]:
    """Packages fortunes + fortunes-min: the prose sentences of every entry."""
    for sentences in _fortune_entries(root, "fortunes"):
        yield from (s for s in sentences if _prose(s))


def iter_fortune_passages(root: Path = FORTUNES_DIR) -> Iterator[str]:
    """Package fortunes: whole entries of two or more prose sentences, as one text."""
    for sentences in _fortune_entries(root, "fortune-passages"):
        passage = " ".join(sentences)
        if len(sentences) >= 2 and all(_prose(s) for s in sentences) and not re.search(r"[<>{}]", passage):
            yield passage


_WORDNET_QUOTE = re.compile(r'"([^"]+)"')


def iter_wordnet(root: Path = WORDNET_DIR) -> Iterator[str]:
    """Package wordnet-base: each synset's gloss (after ``|``): its definition and its quoted examples."""
    _require(root / "data.noun", "wordnet-base", "wordnet")
    for pos in ("noun", "verb", "adj", "adv"):
        with open(root / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # licence header
                    continue
                gloss = line.split("|", 1)[1]
                for example in _WORDNET_QUOTE.findall(gloss):
                    if plausible(example):
                        yield example
                definition = _WORDNET_QUOTE.sub("", gloss).strip().strip(";").strip()
                if plausible(definition):
                    yield definition


@functools.lru_cache(maxsize=2)
def read_bible(module: str, root: Path = SWORD_DIR) -> dict[tuple[str, int, int], str]:
    """All non-empty verses of a SWORD Bible module as ``{(osis_book, chapter, verse): text}``, markup removed."""
    package = {KJV_MODULE: "sword-text-kjv", WEB_MODULE: "sword-text-web"}.get(module, "the SWORD module")
    _require(root / "mods.d", package, module)
    try:
        from pysword.modules import SwordModules
    except ImportError as e:
        raise SourceUnavailable("the Bible sources need the PyPI package pysword: pip install pysword") from e
    modules = SwordModules(str(root))
    if module not in modules.parse_modules():
        raise SourceUnavailable(
            f"SWORD module {module} is not in {root}: " + INSTALL_HINT.format(package=package)
        )
    bible = modules.get_bible_from_module(module)
    # pysword decompresses a whole book for every verse; caching on this one object keeps it ~0.1 s a Bible.
    bible._decompressed_text = functools.lru_cache(maxsize=2)(bible._decompressed_text)
    verses: dict[tuple[str, int, int], str] = {}
    for books in bible.get_structure().get_books().values():
        for book in books:
            texts = iter(bible.get_iter(books=[book.osis_name], clean=False))
            for chapter, n_verses in enumerate(book.chapter_lengths, start=1):
                for verse in range(1, n_verses + 1):
                    text = clean_osis(next(texts, ""))
                    if text:
                        verses[(book.osis_name, chapter, verse)] = text
    return verses


_OSIS_DROP = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_USFM_MARKER = re.compile(r"\\[a-z]+\d?\*?\s?")  # leftovers of the USFM source, e.g. "\\nd LORD"
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?’”)])")


def clean_osis(raw: str) -> str:
    """Verse text from OSIS markup: notes and titles removed with their content; other tags, stray USFM
    markers and ¶ dropped."""
    text = _OSIS_DROP.sub(" ", raw)
    text = _USFM_MARKER.sub("", _TAG.sub("", text)).replace("¶", " ")
    return _SPACE_BEFORE_PUNCT.sub(r"\1", normalize(text))


def iter_kjv(root: Path = SWORD_DIR) -> Iterator[str]:
    """Package sword-text-kjv (read with pysword): King James Version verses."""
    yield from read_bible(KJV_MODULE, root).values()


def iter_web(root: Path = SWORD_DIR) -> Iterator[str]:
    """Package sword-text-web (read with pysword): World English Bible verses, footnotes removed."""
    yield from read_bible(WEB_MODULE, root).values()


_GCIDE_SOURCE_TAG = re.compile(r"\[(?:[^\]]*(?:Webster|PJC|WordNet|Century|Chambers|Johnson|AS)[^\]]*)\]")
_GCIDE_HEADWORD = re.compile(r"^\S.*\\.*\\")
_GCIDE_LABEL = re.compile(r"^(?:\d+\.|\([a-z]\)|\((?:(?:[A-Z][\w.]*|&),?\s?)+\))\s*")
_GCIDE_ATTRIBUTION = re.compile(r"\s*--\s?[A-Z][\w.,'&\s]{0,40}$")
_GCIDE_INLINE_ATTRIBUTION = re.compile(r"\s*--\s?[A-Z][\w.'&]*(?:\s[A-Z][\w.'&]*)*\.?")
_GCIDE_BRACKET = re.compile(r"\[[^\]]*\]")
_GCIDE_INLINE_QUOTE = re.compile(r'"([^"]{20,})"')


def _gcide_blocks(text: str) -> Iterator[list[str]]:
    """Paragraphs (blank-line separated); a source tag like ``[1913 Webster]`` ends its line."""
    for block in re.split(r"\n\s*\n", text):
        lines = [_GCIDE_SOURCE_TAG.split(line, 1)[0].rstrip() for line in block.split("\n")]
        lines = [line for line in lines if line.strip()]
        if lines:
            yield lines


def _gcide_drop_header(lines: list[str]) -> list[str]:
    """Drop a headword line (``Word \\Pro*nun"ci*a`tion\\, n. [Etymology.]``) and its etymology's lines."""
    if not _GCIDE_HEADWORD.match(lines[0]):
        return lines
    consumed = 1
    seen = lines[0]
    while consumed < len(lines) and seen.count("[") > seen.count("]"):
        seen += lines[consumed]
        consumed += 1
    return lines[consumed:]


def _gcide_definition(text: str) -> Iterator[str]:
    text = _GCIDE_LABEL.sub("", text)
    text = _GCIDE_LABEL.sub("", text)  # e.g. "2. (Med.) Designating ..."
    yield from _GCIDE_INLINE_QUOTE.findall(text)
    text = _GCIDE_INLINE_QUOTE.sub("", text)
    text = text.split(" -- {", 1)[0]  # derived words follow
    text = _GCIDE_INLINE_ATTRIBUTION.sub("", text)
    text = _GCIDE_BRACKET.sub("", text).replace("{", "").replace("}", "")
    yield normalize(text)


def iter_gcide(path: Path = GCIDE_FILE) -> Iterator[str]:
    """Package dict-gcide (dictd format, gzip): quotations and definitions, pronunciation/etymology removed."""
    _require(path, "dict-gcide", "gcide")
    with gzip.open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    for lines in _gcide_blocks(text):
        if lines[0].startswith("00-database"):
            continue
        lines = _gcide_drop_header(lines)
        if not lines or lines[0].lstrip().startswith(("Syn:", "Note:", "{")):
            continue  # synonym lists, editorial notes and phrase entries are not sentences
        indent = len(lines[0]) - len(lines[0].lstrip())
        joined = normalize(" ".join(lines))
        if indent >= 8:  # a quotation with its author
            candidates: Iterable[str] = [_GCIDE_ATTRIBUTION.sub("", joined)]
        else:
            joined = joined.removeprefix("Usage: ")
            candidates = [
                s for part in re.split(r"\s(?=\([a-z]\)\s)", joined) for s in _gcide_definition(part)
            ]
        for candidate in candidates:
            if plausible(candidate) and not re.search(r"[\\*`\[\]]|\?\w|\s\?\s", candidate):
                yield candidate


_RST_UNDERLINE = re.compile(r"^([=\-~^*#\"'`.+_:])\1{2,}\s*$")
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]+)::")
_RST_CODE_DIRECTIVES = {
    "code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "testsetup", "testcleanup",
    "productionlist", "csv-table", "list-table", "table", "raw", "toctree", "index", "literalinclude",
    "highlight", "opcode", "cmdoption", "option", "envvar", "describe", "grammar-snippet", "include",
    "moduleauthor", "sectionauthor", "module", "currentmodule", "audit-event", "availability",
}  # fmt: skip
_RST_ROLE = re.compile(r":[\w:.-]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`__?")
_RST_LITERAL = re.compile(r"``([^`]+)``")
_RST_EMPHASIS = re.compile(r"\*\*?([^*]+)\*\*?")
_RST_BULLET = re.compile(r"^(?:[*+-]|#\.|\d+\.)\s+")


def _rst_inline(text: str) -> str:
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LITERAL.sub(r"\1", text)
    text = _RST_LINK.sub(r"\1", text)
    text = _RST_EMPHASIS.sub(r"\1", text)
    return text.replace("\\", "")


def rst_paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a reStructuredText file: code blocks, directives, tables and headings skipped."""
    lines = text.splitlines()
    skip_deeper_than: int | None = None  # inside a literal block / code directive: skip deeper lines
    paragraph: list[str] = []
    paragraph_indent = 0

    def flush() -> Iterator[str]:
        if paragraph:
            yield _rst_inline(" ".join(paragraph))
            paragraph.clear()

    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        directive = _RST_DIRECTIVE.match(line)
        if directive or stripped.startswith(".. "):  # directive, comment or target
            yield from flush()
            if directive is None or directive.group(1) in _RST_CODE_DIRECTIVES:
                skip_deeper_than = indent
            continue
        if not stripped or _RST_UNDERLINE.match(line) or _RST_UNDERLINE.match(nxt) or stripped[0] in "|+>:":
            yield from flush()
            continue
        if paragraph and indent != paragraph_indent:
            yield from flush()
        if not paragraph:
            paragraph_indent = indent
        bullet = _RST_BULLET.match(stripped)
        if bullet:
            yield from flush()
            paragraph_indent = indent
            stripped = stripped[bullet.end() :]
        paragraph.append(stripped)
        if stripped.endswith("::"):  # the following indented block is literal
            paragraph[-1] = stripped[:-1]
            yield from flush()
            skip_deeper_than = indent
    yield from flush()


_PYDOC_CODE = re.compile(r"[{}<>=_\\|]|\(\)|\w\.\w+\(")


def iter_python_docs(root: Path = PYDOC_DIR) -> Iterator[str]:
    """Package python3.11-doc: prose sentences of the reST sources (code, directives and tables skipped)."""
    _require(root / "contents.rst.txt", "python3.11-doc", "python-docs")
    for path in sorted(root.rglob("*.rst.txt")):
        for paragraph in rst_paragraphs(path.read_text(encoding="utf-8", errors="replace")):
            for sentence in split_sentences(paragraph):
                if _prose(sentence) and not _PYDOC_CODE.search(sentence):
                    yield sentence


def iter_python_passages(root: Path = PYDOC_DIR, min_words: int = PASSAGE_MIN_WORDS) -> Iterator[str]:
    """Package python3.11-doc: passages of consecutive prose paragraphs of one page, joined until they hold
    ``min_words`` words. A paragraph with code, or a sentence that is not prose, ends the passage unjoined."""
    _require(root / "contents.rst.txt", "python3.11-doc", "python-passages")
    for path in sorted(root.rglob("*.rst.txt")):
        passage: list[str] = []
        for paragraph in rst_paragraphs(path.read_text(encoding="utf-8", errors="replace")):
            sentences = split_sentences(paragraph)
            if not sentences or _PYDOC_CODE.search(paragraph) or not all(_prose(s) for s in sentences):
                passage = []
                continue
            passage.extend(sentences)
            if sum(len(s.split()) for s in passage) >= min_words:
                yield " ".join(passage)
                passage = []


SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "fortunes": iter_fortunes,
    "wordnet": iter_wordnet,
    "bible-kjv": iter_kjv,
    "bible-web": iter_web,
    "gcide": iter_gcide,
    "python-docs": iter_python_docs,
    "fortune-passages": iter_fortune_passages,
    "python-passages": iter_python_passages,
}
# Multi-sentence sources: kept at MAX_CHARS < length <= MAX_PASSAGE_CHARS, and not in the default set (a
# corpus built without --source stays sentences only).
PASSAGE_SOURCES = frozenset({"fortune-passages", "python-passages"})
SOURCE_PACKAGES: dict[str, str] = {
    "fortunes": "fortunes fortunes-min",
    "wordnet": "wordnet-base",
    "bible-kjv": "sword-text-kjv (and pip package pysword)",
    "bible-web": "sword-text-web (and pip package pysword)",
    "gcide": "dict-gcide",
    "python-docs": "python3.11-doc",
    "fortune-passages": "fortunes fortunes-min",
    "python-passages": "python3.11-doc",
}


# ---------------------------------------------------------------------------------------------------------
# User files


def _decode_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8; the first undecodable line is reported by number."""
    from leap_export.textio import read_lines

    return read_lines(path)


def _pick_field(available: Sequence[str], field: str | None, path: Path, what: str) -> str:
    candidates = [field] if field else ["text", "sentence"]
    for name in candidates:
        if name in available:
            return name
    wanted = repr(field) if field else "'text' or 'sentence'"
    raise LeapError(
        f"{path}: no {what} {wanted} (found: {', '.join(map(str, available)) or 'none'}); "
        f"name the {what} with --field"
    )


def _read_jsonl(path: Path, lines: list[str], field: str | None) -> list[str]:
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise LeapError(
                f"{path}:{number}: not valid JSON ({e.msg}); each line must be one JSON object"
            ) from e
        if not isinstance(record, dict):
            raise LeapError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        key = _pick_field(list(record), field, path, "field")
        if not isinstance(record[key], str):
            raise LeapError(
                f"{path}:{number}: field {key!r} must be a string, got {type(record[key]).__name__}"
            )
        out.append(record[key])
    return out


def _read_table(path: Path, lines: list[str], field: str | None, delimiter: str) -> list[str]:
    rows = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    header = next(rows, None)
    if header is None:
        return []
    column = header.index(_pick_field(header, field, path, "column"))
    out = []
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        if column >= len(row):
            raise LeapError(f"{path}:{number}: row has {len(row)} columns, the header has {len(header)}")
        out.append(row[column])
    return out


def read_user_file(path: str | os.PathLike, field: str | None = None) -> list[str]:
    """Sentences of a user file: .txt (one per line), .jsonl (``field``, default text/sentence), .csv/.tsv
    (header with column ``field``, default text/sentence). Normalised; empty entries dropped."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".txt", ".jsonl", ".csv", ".tsv"}:
        raise LeapError(
            f"{path}: unsupported corpus file type {suffix or '(none)'}; use .txt, .jsonl, .csv or .tsv"
        )
    lines = _decode_lines(path)
    if suffix == ".txt":
        texts = lines
    elif suffix == ".jsonl":
        texts = _read_jsonl(path, lines, field)
    else:
        texts = _read_table(path, lines, field, "," if suffix == ".csv" else "\t")
    return [s for s in (normalize(t) for t in texts) if s]


# ---------------------------------------------------------------------------------------------------------
# Splitting and writing


def _unit_hash(sentence: str, seed: int, purpose: bytes) -> float:
    """A stable number in [0, 1) from the sentence, the seed and what it is for (split / order)."""
    digest = hashlib.blake2b(
        sentence.encode("utf-8"), digest_size=8, key=str(seed).encode(), person=purpose
    ).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_split(sentence: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """train / val / test for one normalised sentence; depends on nothing else."""
    u = _unit_hash(sentence, seed, b"split")
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise LeapError(
            f"val fraction {val_fraction} and test fraction {test_fraction} must each be in [0, 1) "
            "and leave something for training (sum < 1)"
        )


@dataclass
class _Collected:
    origin: dict[str, str]  # sentence -> the first source that yielded it
    stats: dict[str, dict[str, int]]  # source -> yielded / kept (new, in length range)


def _collect(streams: dict[str, Callable[[], Iterable[str]]], progress: bool) -> _Collected:
    from tqdm.auto import tqdm

    origin: dict[str, str] = {}
    stats: dict[str, dict[str, int]] = {}
    for name, stream in streams.items():
        yielded = kept = length_filtered = 0
        passage = name in PASSAGE_SOURCES
        for raw in tqdm(stream(), desc=f"corpus: {name}", unit=" sent", disable=not progress, leave=False):
            yielded += 1
            sentence = normalize(raw)
            if not keep_length(sentence, passage):
                length_filtered += 1
            elif sentence not in origin:
                origin[sentence] = name
                kept += 1
        stats[name] = {
            "yielded": yielded,
            "unique": kept,
            "length_filtered": length_filtered,
            "duplicates": yielded - kept - length_filtered,
        }
    return _Collected(origin, stats)


def _resolve_sources(
    sources: Sequence[str] | None, have_files: bool
) -> dict[str, Callable[[], Iterable[str]]]:
    unknown = [s for s in sources or () if s not in SOURCES]
    if unknown:
        raise LeapError(f"unknown corpus source(s) {', '.join(unknown)}; choose from: {', '.join(SOURCES)}")
    names = (
        [n for n in SOURCES if n not in PASSAGE_SOURCES] if sources is None else list(dict.fromkeys(sources))
    )
    chosen: dict[str, Callable[[], Iterable[str]]] = {}
    missing: list[str] = []
    for name in names:
        stream = SOURCES[name]()
        try:
            first = next(stream, None)  # a source checks its files before the first sentence
        except SourceUnavailable as e:
            if sources is not None:
                raise
            warnings.warn(f"skipping corpus source {name!r}: {e}", stacklevel=3)
            missing.append(name)
            continue
        chosen[name] = functools.partial(_chain_first, first, stream)
    if not chosen and not have_files:
        raise LeapError(
            "no corpus source is available (missing: "
            + ", ".join(f"{n} [apt: {SOURCE_PACKAGES[n]}]" for n in missing)
            + "); run `sudo scripts/install_data_sources.sh` or pass your own sentences with --file"
        )
    return chosen


def _chain_first(first: str | None, rest: Iterator[str]) -> Iterator[str]:
    if first is not None:
        yield first
        yield from rest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / CORPUS_MANIFEST).exists():
        raise LeapError(f"{out_dir} exists and is not a corpus folder; choose another --out or empty it")


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder into place; an existing corpus folder is replaced, anything else refused."""
    if out_dir.exists():
        _check_out_dir(out_dir)
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def build_corpus(
    out_dir: str | os.PathLike,
    sources: Sequence[str] | None = None,
    user_files: Sequence[str | os.PathLike] = (),
    val_fraction: float = 0.01,
    test_fraction: float = 0.01,
    max_sentences: int | None = None,
    seed: int = 0,
    progress: bool = True,
    text_field: str | None = None,
) -> dict[str, Any]:
    """Collect, filter, deduplicate and split sentences; write the corpus folder; return its manifest.

    ``sources=None`` uses every installed Debian source (a missing one is skipped with a warning); naming a
    missing source is an error. ``max_sentences`` keeps a deterministic, hash-chosen subset of that size.
    """
    _check_fractions(val_fraction, test_fraction)
    if max_sentences is not None and max_sentences < 1:
        raise LeapError(f"max_sentences must be at least 1, got {max_sentences}")
    from leap_export import __version__

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)  # before the slow part; checked again when the folder is replaced
    files = [Path(p) for p in user_files]
    for path in files:
        if not path.is_file():
            raise LeapError(f"corpus file {path} does not exist")
        if out_dir.exists() and Path(os.path.realpath(out_dir)) in Path(os.path.realpath(path)).parents:
            # the whole folder is replaced: an earlier corpus's train.txt given back as --file was rewritten,
            # and its val/test splits lost
            raise LeapError(
                f"corpus file {path} is inside the output folder {out_dir}, which this run replaces; "
                "copy the file elsewhere first, or choose another --out"
            )
    user_texts = [
        read_user_file(path, text_field) for path in files
    ]  # fail on a bad file before the slow part
    for path, texts in zip(files, user_texts, strict=True):
        if not texts:
            raise LeapError(
                f"corpus file {path} holds no sentences (it is empty, or its lines are blank or too "
                "short to keep); pass a file with one sentence per line"
            )
    streams = _resolve_sources(sources, have_files=bool(files))
    for path, texts in zip(files, user_texts, strict=True):
        streams[f"file:{path.name}"] = functools.partial(iter, texts)
    collected = _collect(streams, progress)

    order = sorted(collected.origin, key=lambda s: _unit_hash(s, seed, b"order"))
    if max_sentences is not None:
        order = order[:max_sentences]
    by_split: dict[str, list[str]] = {split: [] for split in SPLITS}
    counts: dict[str, dict[str, int]] = {name: dict.fromkeys(SPLITS, 0) for name in streams}
    for sentence in order:
        split = assign_split(sentence, val_fraction, test_fraction, seed)
        by_split[split].append(sentence)
        counts[collected.origin[sentence]][split] += 1

    ensure_parent(out_dir, folder=True)
    tmp = temp_folder(out_dir.parent, f".{out_dir.name}.tmp-")
    try:
        split_files = {}
        for split, sentences in by_split.items():
            path = tmp / f"{split}.txt"
            path.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
            split_files[split] = {"file": path.name, "sentences": len(sentences), "sha256": _sha256(path)}
        manifest = {
            "format": CORPUS_FORMAT,
            "tool": "leap-export",
            "tool_version": __version__,
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "max_sentences": max_sentences,
            "min_chars_exclusive": MIN_CHARS,
            "max_chars": MAX_CHARS,
            "max_passage_chars": MAX_PASSAGE_CHARS,
            "sources": {name: _source_entry(name, files, collected, counts) for name in streams},
            "splits": split_files,
            "total": sum(len(v) for v in by_split.values()),
        }
        (tmp / CORPUS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _source_entry(
    name: str, files: Sequence[Path], collected: _Collected, counts: dict[str, dict[str, int]]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"package": SOURCE_PACKAGES.get(name, "user file")}
    path = next((p for p in files if f"file:{p.name}" == name), None)
    if path is not None:
        entry.update(path=str(path.resolve()), sha256=_sha256(path))
    return {**entry, **collected.stats[name], "splits": counts[name]}


def load_split(corpus_dir: str | os.PathLike, split: str) -> list[str]:
    """The sentences of one split of a corpus folder (checked against the SHA-256 in corpus.json)."""
    if split not in SPLITS:
        raise LeapError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    corpus_dir = Path(corpus_dir)
    manifest_path = corpus_dir / CORPUS_MANIFEST
    if not manifest_path.is_file():
        raise LeapError(
            f"{corpus_dir} is not a corpus folder (no {CORPUS_MANIFEST}); build one with `leap-export corpus`"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    path = corpus_dir / f"{split}.txt"
    if not path.is_file():
        raise LeapError(f"{path} is missing; rebuild the corpus with `leap-export corpus`")
    expected = manifest.get("splits", {}).get(split, {}).get("sha256")
    if expected and _sha256(path) != expected:
        raise LeapError(
            f"{path} does not match the SHA-256 in {manifest_path}; it was edited - rebuild the corpus"
        )
    return path.read_text(encoding="utf-8").splitlines()
