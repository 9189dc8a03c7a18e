"""Labelled evaluation sets that exist offline (docs/data.md).

- Lee document similarity: 50 news documents and 1,225 human-rated pairs, shipped in the gensim wheel.
- Bible paraphrase retrieval: a WEB verse is the query, every KJV verse is the corpus, and the KJV verse with
  the same reference is the single relevant document.
- A user-supplied STS file (STS-B TSV, GLUE STS-B TSV, or CSV with a header).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import math
import os
from pathlib import Path

import numpy as np

from leap_export.data.corpus import KJV_MODULE, SWORD_DIR, WEB_MODULE, _decode_lines, read_bible
from leap_export.errors import LeapError

LEE_DOCS = "gensim/test/test_data/lee.cor"
LEE_RATINGS = "gensim/test/test_data/similarities0-1.txt"
LEE_SIZE = 50


def _gensim_file(relative: str) -> Path:
    """A data file inside the installed gensim wheel, found without importing gensim (it is heavy)."""
    try:
        dist = importlib.metadata.distribution("gensim")
    except importlib.metadata.PackageNotFoundError as e:
        raise LeapError(
            "the Lee evaluation set ships inside the gensim wheel: pip install --no-deps gensim==4.4.0"
        ) from e
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise LeapError(
            f"{path} is missing from the installed gensim; reinstall: pip install --no-deps gensim==4.4.0"
        )
    return path


def load_lee() -> tuple[list[str], list[tuple[int, int, float]]]:
    """The Lee corpus: 50 documents and the 1,225 pairs ``(i, j, rating)`` with ``i < j``, ratings in [0, 1]."""
    docs_path, ratings_path = _gensim_file(LEE_DOCS), _gensim_file(LEE_RATINGS)
    docs = [line.strip() for line in docs_path.read_text(encoding="latin-1").splitlines() if line.strip()]
    matrix = np.loadtxt(ratings_path, dtype=np.float64)
    if len(docs) != LEE_SIZE or matrix.shape != (LEE_SIZE, LEE_SIZE):
        raise LeapError(
            f"unexpected Lee data: {len(docs)} documents, ratings {matrix.shape}; "
            "reinstall with pip install --no-deps gensim==4.4.0"
        )
    pairs = [(i, j, float(matrix[i, j])) for i in range(LEE_SIZE) for j in range(i + 1, LEE_SIZE)]
    return docs, pairs


def _subset(keys: list, limit: int | None, salt: bytes) -> list:
    """A deterministic subset of ``limit`` keys (hash-ordered), kept in the original order."""
    if limit is None or limit >= len(keys):
        return keys
    if limit < 1:
        raise LeapError(f"limit must be at least 1, got {limit}")

    def rank(key) -> bytes:
        return hashlib.blake2b(repr(key).encode(), digest_size=8, person=salt).digest()

    chosen = set(sorted(keys, key=rank)[:limit])
    return [k for k in keys if k in chosen]


def bible_pairs(root: Path = SWORD_DIR) -> list[tuple[tuple[str, int, int], str, str]]:
    """``(reference, web_text, kjv_text)`` for every reference present and non-empty in both Bibles."""
    web, kjv = read_bible(WEB_MODULE, root), read_bible(KJV_MODULE, root)
    return [(ref, text, kjv[ref]) for ref, text in web.items() if ref in kjv]


def load_bible_paraphrase(
    limit: int | None = None, corpus_limit: int | None = None, root: Path = SWORD_DIR
) -> tuple[list[str], list[str], np.ndarray]:
    """WEB verses as queries, KJV verse texts as the corpus, ``relevant[i]`` the index of query i's KJV text.

    The corpus holds each distinct KJV text once (31,102 verses, 30,834 texts): a verse such as "And the
    LORD spake unto Moses, saying," occurs 72 times, and its copies, with identical embeddings, would
    tie with the relevant one and count against the query whatever the encoder. ``limit`` keeps a
    deterministic subset of queries; ``corpus_limit`` shrinks the corpus to that many texts, always
    keeping the relevant text of every kept query (distractors chosen deterministically).
    """
    pairs = bible_pairs(root)
    kept = set(_subset([ref for ref, _, _ in pairs], limit, b"bible-query"))
    queries = [(ref, web) for ref, web, _ in pairs if ref in kept]
    kjv = read_bible(KJV_MODULE, root)
    first_ref: dict[str, tuple[str, int, int]] = {}  # text -> its first verse, in Bible order
    for ref, text in kjv.items():
        first_ref.setdefault(text, ref)
    target = {ref: first_ref[kjv[ref]] for ref, _ in queries}  # query -> the verse standing for its text
    corpus_refs = list(first_ref.values())
    if corpus_limit is not None:
        needed = set(target.values())
        if corpus_limit < len(needed):
            raise LeapError(
                f"--bible-corpus-limit {corpus_limit} is smaller than the {len(needed)} verses the queries "
                f"need (each query's own verse stays in the corpus); pass at least {len(needed)}, or "
                "lower --bible-limit"
            )
        others = [r for r in corpus_refs if r not in needed]
        extra = set(_subset(others, corpus_limit - len(needed), b"bible-corpus"))
        corpus_refs = [r for r in corpus_refs if r in needed or r in extra]
    position = {ref: i for i, ref in enumerate(corpus_refs)}
    relevant = np.array([position[target[ref]] for ref, _ in queries], dtype=np.int64)
    return [text for _, text in queries], [kjv[r] for r in corpus_refs], relevant


# ---------------------------------------------------------------------------------------------------------
# User STS files


def _score(value: str, path: Path, number: int) -> float:
    try:
        score = float(value)
    except ValueError as e:
        raise LeapError(f"{path}:{number}: score {value!r} is not a number") from e
    if not math.isfinite(score):  # nan would be ranked somewhere by Spearman and skew it silently
        raise LeapError(f"{path}:{number}: score {value!r} is not a finite number; fix or drop that pair")
    return score


def _sts_with_header(
    path: Path, rows: list[tuple[int, list[str]]]
) -> tuple[list[str], list[str], list[float]]:
    first_line, head = rows[0]
    header = [h.strip().lower() for h in head]
    score_name = next((n for n in ("score", "label", "similarity") if n in header), None)
    if "sentence1" not in header or "sentence2" not in header or score_name is None:
        raise LeapError(
            f"{path}:{first_line}: the header needs columns sentence1, sentence2 and score (or label); "
            f"found {', '.join(header)}"
        )
    i1, i2, isc = header.index("sentence1"), header.index("sentence2"), header.index(score_name)
    s1, s2, scores = [], [], []
    for number, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(i1, i2, isc):
            raise LeapError(f"{path}:{number}: {len(row)} columns, the header has {len(header)}")
        s1.append(row[i1].strip())
        s2.append(row[i2].strip())
        scores.append(_score(row[isc], path, number))
    return s1, s2, scores


def _is_glue_row(row: list[str]) -> bool:
    """GLUE's STS-B layout without its header: index, genre, filename, year, old_index, source1, source2,
    sentence1, sentence2, score (the original layout has the score fifth and at most 9 fields)."""
    return len(row) == 10 and row[0].strip().isdigit()


def _sts_original(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[list[str], list[str], list[float]]:
    """Original STS-B: genre, filename, year, id, score, sentence1, sentence2 (+ optional source columns);
    or GLUE's 10 columns when its header was dropped."""
    s1, s2, scores = [], [], []
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if _is_glue_row(row):
            score, a, b = row[9], row[7], row[8]
        elif len(row) >= 7:
            score, a, b = row[4], row[5], row[6]
        else:
            raise LeapError(
                f"{path}:{number}: expected 7 tab-separated fields (genre, filename, year, id, score, "
                f"sentence1, sentence2), found {len(row)}; for other layouts put a header line naming the "
                "columns sentence1, sentence2 and score (tab-separated)"
            )
        scores.append(_score(score, path, number))
        s1.append(a.strip())
        s2.append(b.strip())
    return s1, s2, scores


def load_sts_file(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Sentence pairs and gold scores from an STS file: original STS-B TSV (no header; GLUE's 10 columns
    without header too), a TSV with a header (GLUE STS-B: ``sentence1``, ``sentence2``, ``score``/``label``)
    or a CSV with such a header."""
    path = Path(path)
    if not path.is_file():
        raise LeapError(f"STS file {path} does not exist")
    lines = _decode_lines(path)
    delimiter = (
        "\t" if path.suffix.lower() in {".tsv", ".txt"} or "\t" in (lines[0] if lines else "") else ","
    )
    # Quotes are literal in STS-B TSV ("a" 'b' appear inside sentences); CSV uses standard quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=quoting)
    # (line, row): a quoted CSV field may span lines, so a row's number is the reader's, not its index
    rows = [(reader.line_num, row) for row in reader]
    first = next((i for i, (_, row) in enumerate(rows) if any(c.strip() for c in row)), None)
    if first is None:
        raise LeapError(f"STS file {path} is empty")
    header = {c.strip().lower() for c in rows[first][1]}
    if {"sentence1", "sentence2"} & header:
        s1, s2, scores = _sts_with_header(path, rows[first:])
    elif delimiter == "\t":
        s1, s2, scores = _sts_original(path, rows)
    else:
        raise LeapError(f"{path}:{rows[first][0]}: a CSV STS file needs a header: sentence1,sentence2,score")
    if not scores:
        raise LeapError(f"STS file {path} has a header but no pairs")
    # a layout misread puts one column into both sentences: Spearman would be meaningless (constant
    # scores are refused where the set is loaded, load_eval_sets)
    if all(a == b for a, b in zip(s1, s2, strict=True)):
        raise LeapError(
            f"STS file {path}: every pair holds the same text twice ({s1[0]!r}); are the sentence columns "
            "right? Put a header line naming sentence1, sentence2 and score"
        )
    return s1, s2, np.asarray(scores, dtype=np.float64)
