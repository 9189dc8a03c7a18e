"""The corpus builder: splitting, dedup, filters, user files, the Debian sources and the CLI command."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from leap_export.commands.corpus import SOURCE_NAMES
from leap_export.commands.corpus import command as corpus_command
from leap_export.data import corpus
from leap_export.data.corpus import (
    SOURCES,
    build_corpus,
    clean_osis,
    load_split,
    read_user_file,
    rst_paragraphs,
    split_sentences,
)
from leap_export.errors import LeapError

SENTENCES = [f"Sentence number {i} is a plain example of English text." for i in range(400)]


def _write_txt(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def user_txt(tmp_path: Path) -> Path:
    return _write_txt(tmp_path / "mine.txt", SENTENCES)


def _build(out: Path, files: list[Path], **kwargs) -> dict:
    return build_corpus(out, sources=[], user_files=files, progress=False, **kwargs)


def test_split_is_deterministic_disjoint_and_complete(tmp_path: Path, user_txt: Path) -> None:
    first = _build(tmp_path / "a", [user_txt], val_fraction=0.1, test_fraction=0.1)
    second = _build(tmp_path / "b", [user_txt], val_fraction=0.1, test_fraction=0.1)
    splits = {s: load_split(tmp_path / "a", s) for s in ("train", "val", "test")}
    assert splits == {s: load_split(tmp_path / "b", s) for s in ("train", "val", "test")}
    assert first["splits"] == second["splits"]
    assert set(splits["train"]).isdisjoint(splits["val"])
    assert set(splits["train"]).isdisjoint(splits["test"])
    assert set(splits["val"]).isdisjoint(splits["test"])
    assert sorted(itertools.chain(*splits.values())) == sorted(SENTENCES)
    # 10% each of 400: a hash split is approximately proportional, and never empty at this size.
    assert 15 <= len(splits["val"]) <= 65 and 15 <= len(splits["test"]) <= 65


def test_split_of_a_sentence_does_not_depend_on_the_rest(tmp_path: Path, user_txt: Path) -> None:
    _build(tmp_path / "all", [user_txt], val_fraction=0.2, test_fraction=0.2)
    half = _write_txt(tmp_path / "half.txt", SENTENCES[::2])
    _build(tmp_path / "half", [half], val_fraction=0.2, test_fraction=0.2)
    for split in ("train", "val", "test"):
        assert set(load_split(tmp_path / "half", split)) <= set(load_split(tmp_path / "all", split))


def test_seed_changes_the_split(tmp_path: Path, user_txt: Path) -> None:
    _build(tmp_path / "s0", [user_txt], val_fraction=0.2, seed=0)
    _build(tmp_path / "s1", [user_txt], val_fraction=0.2, seed=1)
    assert load_split(tmp_path / "s0", "val") != load_split(tmp_path / "s1", "val")


def test_dedup_length_filter_and_whitespace(tmp_path: Path) -> None:
    lines = [
        "  The   quick brown fox jumps over the lazy dog.  ",
        "The quick brown fox jumps\tover the lazy dog.",  # same after whitespace normalisation
        "exactly twenty chars",  # 20 characters: too short (must be > 20)
        "twenty-one characters",  # 21: kept
        "x" * 200,  # at the limit: kept
        "y" * 201,  # too long
        "",
    ]
    assert len("exactly twenty chars") == 20 and len("twenty-one characters") == 21
    file = _write_txt(tmp_path / "f.txt", lines)
    manifest = _build(tmp_path / "c", [file], val_fraction=0.0, test_fraction=0.0)
    train = load_split(tmp_path / "c", "train")
    assert sorted(train) == sorted(
        ["The quick brown fox jumps over the lazy dog.", "twenty-one characters", "x" * 200]
    )
    info = manifest["sources"]["file:f.txt"]
    assert info["yielded"] == 6 and info["unique"] == 3
    assert info["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()


def test_dedup_across_sources_credits_the_first(tmp_path: Path) -> None:
    a = _write_txt(tmp_path / "a.txt", SENTENCES[:10])
    b = _write_txt(tmp_path / "b.txt", SENTENCES[5:20])
    manifest = _build(tmp_path / "c", [a, b], val_fraction=0.0, test_fraction=0.0)
    assert manifest["sources"]["file:a.txt"]["unique"] == 10
    assert manifest["sources"]["file:b.txt"]["unique"] == 10
    assert manifest["total"] == 20


def test_max_sentences_is_a_deterministic_subset(tmp_path: Path, user_txt: Path) -> None:
    a = _build(tmp_path / "a", [user_txt], max_sentences=50)
    _build(tmp_path / "b", [user_txt], max_sentences=50)
    _build(tmp_path / "big", [user_txt], max_sentences=100)
    kept = [
        set(itertools.chain(*(load_split(tmp_path / d, s) for s in ("train", "val", "test")))) for d in "ab"
    ]
    big = set(itertools.chain(*(load_split(tmp_path / "big", s) for s in ("train", "val", "test"))))
    assert a["total"] == 50 and kept[0] == kept[1] and kept[0] <= big


def test_manifest_hashes_and_rebuild_replaces_folder(tmp_path: Path, user_txt: Path) -> None:
    out = tmp_path / "c"
    _build(out, [user_txt])
    manifest = _build(out, [_write_txt(tmp_path / "small.txt", SENTENCES[:30])])
    on_disk = json.loads((out / "corpus.json").read_text())
    assert on_disk == manifest and manifest["total"] == 30
    for split, info in manifest["splits"].items():
        assert hashlib.sha256((out / f"{split}.txt").read_bytes()).hexdigest() == info["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "mine.txt", "small.txt"]  # no temp leftovers
    (out / "val.txt").write_text("edited\n")
    with pytest.raises(LeapError, match="SHA-256"):
        load_split(out, "val")


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path, user_txt: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.md").write_text("keep me")
    with pytest.raises(LeapError, match="not a corpus folder"):
        _build(out, [user_txt])
    assert (out / "notes.md").read_text() == "keep me"


def test_refuses_a_file_inside_the_folder_it_replaces(tmp_path: Path, user_txt: Path) -> None:
    """An earlier corpus's train.txt given back as --file: the run would replace the folder holding it
    (its val and test splits lost, the input rewritten). Refused, through the CLI too, with nothing changed."""
    out = tmp_path / "c"
    _build(out, [user_txt])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LeapError, match="inside the output folder"):
        _build(out, [out / "train.txt"])
    result = CliRunner().invoke(
        corpus_command, ["--out", str(out), "--file", str(out / "train.txt"), "--no-debian", "--no-progress"]
    )
    assert isinstance(result.exception, LeapError) and "inside the output folder" in str(result.exception)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _build(tmp_path / "other", [out / "train.txt"])  # into another folder: fine


def test_bad_fractions_and_unknown_source(tmp_path: Path, user_txt: Path) -> None:
    with pytest.raises(LeapError, match="fraction"):
        _build(tmp_path / "c", [user_txt], val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(LeapError, match="unknown corpus source"):
        build_corpus(tmp_path / "c", sources=["nope"], progress=False)


def test_user_file_formats(tmp_path: Path) -> None:
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text(
        '{"text": "First  json line here."}\n\n{"text": "Second json line here."}\n', encoding="utf-8"
    )
    assert read_user_file(jsonl) == ["First json line here.", "Second json line here."]
    custom = tmp_path / "c.jsonl"
    custom.write_text('{"body": "A custom field holds it.", "id": 1}\n', encoding="utf-8")
    assert read_user_file(custom, field="body") == ["A custom field holds it."]
    with pytest.raises(LeapError, match=r"c\.jsonl: no field 'text' or 'sentence' \(found: body, id\)"):
        read_user_file(custom)
    csv_file = tmp_path / "s.csv"
    csv_file.write_text(
        'id,sentence\n1,"Comma, inside quotes stays."\n2,Plain second row here.\n', encoding="utf-8"
    )
    assert read_user_file(csv_file) == ["Comma, inside quotes stays.", "Plain second row here."]
    tsv = tmp_path / "s.tsv"
    tsv.write_text("label\tbody\n0\tTab separated text row.\n", encoding="utf-8")
    assert read_user_file(tsv, field="body") == ["Tab separated text row."]
    txt = _write_txt(tmp_path / "s.txt", ["\ufeffA byte order mark is dropped.", "  spaced   out  "])
    assert read_user_file(txt) == ["A byte order mark is dropped.", "spaced out"]
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(LeapError, match=r"bad\.jsonl:2: not valid JSON"):
        read_user_file(bad_json)
    with pytest.raises(LeapError, match="unsupported corpus file type .parquet"):
        read_user_file(tmp_path / "x.parquet")


def test_non_utf8_file_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("First line is fine.\nSecond line too.\nCaf\xe9 au lait is French.\n".encode("latin-1"))
    with pytest.raises(LeapError, match=r"latin\.txt, line 3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        read_user_file(path)
    with pytest.raises(LeapError, match=r"latin\.txt, line 3"):
        _build(tmp_path / "c", [path])


def test_an_empty_user_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    with pytest.raises(LeapError, match=r"empty\.txt holds no sentences"):  # it added 0 sentences, silently
        _build(tmp_path / "c", [empty])
    assert not (tmp_path / "c").exists()


def test_missing_source_is_skipped_with_apt_hint(tmp_path: Path, user_txt: Path, monkeypatch) -> None:
    # Point every Debian source at an empty folder: what a machine without the packages looks like.
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, fn in list(SOURCES.items()):
        target = empty / "gcide.dict.dz" if name == "gcide" else empty
        monkeypatch.setitem(SOURCES, name, functools.partial(fn, target))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = build_corpus(tmp_path / "c", user_files=[user_txt], progress=False)
        with pytest.raises(LeapError, match=r"no corpus source is available.*dict-gcide"):
            build_corpus(tmp_path / "d", progress=False)
    assert list(manifest["sources"]) == ["file:mine.txt"]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 * len(set(SOURCES) - corpus.PASSAGE_SOURCES)  # passages only when named
    assert any(
        re.search(r"skipping corpus source 'wordnet'.*apt-get install wordnet-base", m) for m in messages
    )
    with pytest.raises(LeapError, match="apt-get install fortunes fortunes-min"):
        build_corpus(tmp_path / "e", sources=["fortunes"], progress=False)


def test_text_helpers() -> None:
    assert split_sentences("Dr. Smith met J. R. Tolkien. He said hi! Then, e.g. Bob left? Yes.") == [
        "Dr. Smith met J. R. Tolkien.",
        "He said hi!",
        "Then, e.g. Bob left?",
        "Yes.",
    ]
    raw = '<w lemma="x">God</w><note placement="foot">A note.</note><w>made</w> the \\nd LORD ,¶ and <title>T</title>it.'
    assert clean_osis(raw) == "God made the LORD, and it."
    rst = """Title
=====

Some *emphasised* prose with :func:`os.path.join` and ``code``. Example::

    x = 1  # never prose

.. code-block:: python

   print("no")

.. note::

   A note with `a link <https://x.y>`_ stays.

>>> 1 + 1
"""
    assert list(rst_paragraphs(rst)) == [
        "Some emphasised prose with os.path.join and code. Example:",
        "A note with a link stays.",
    ]


def test_cli_names_match_library_sources() -> None:
    assert SOURCE_NAMES == tuple(SOURCES)


def test_cli_command_builds_and_prints_counts(tmp_path: Path, user_txt: Path) -> None:
    out = tmp_path / "c"
    result = CliRunner().invoke(
        corpus_command,
        [
            "--out",
            str(out),
            "--file",
            str(user_txt),
            "--source",
            "fortunes",
            "--no-progress",
            "--max-sentences",
            "1000",
            "--val-fraction",
            "0.05",
            "--seed",
            "3",
        ],
    )
    if not corpus.FORTUNES_DIR.exists():
        assert isinstance(result.exception, LeapError)
        pytest.skip("Debian package fortunes not installed (scripts/install_data_sources.sh)")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["total"] == 1000 and manifest["seed"] == 3 and manifest["val_fraction"] == 0.05
    assert "fortunes" in result.output and "file:mine.txt" in result.output and "1,000" in result.output


def test_cli_no_debian_uses_only_the_users_files(tmp_path: Path, user_txt: Path) -> None:
    out = tmp_path / "c"
    args = ["--out", str(out), "--file", str(user_txt), "--no-debian", "--no-progress"]
    result = CliRunner().invoke(corpus_command, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "corpus.json").read_text())
    assert list(manifest["sources"]) == ["file:mine.txt"]
    assert manifest["total"] == manifest["sources"]["file:mine.txt"]["unique"] > 0

    for extra, message in (([], "needs your own sentences"), (["--source", "fortunes"], "contradict")):
        bad = ["--out", str(tmp_path / "d"), "--no-debian", *extra]
        if "--source" in extra:
            bad += ["--file", str(user_txt)]
        result = CliRunner().invoke(corpus_command, bad)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "d").exists()


def test_cli_counts_what_length_and_duplicates_removed_and_warns_of_an_empty_split(tmp_path: Path) -> None:
    lines = [*SENTENCES[:30], "Too short.", "x" * 201, SENTENCES[0], SENTENCES[1], SENTENCES[1]]
    src = _write_txt(tmp_path / "few.txt", lines)
    out = tmp_path / "c"
    result = CliRunner().invoke(
        corpus_command,
        [
            "--out",
            str(out),
            "--file",
            str(src),
            "--no-debian",
            "--no-progress",
            "--val-fraction",
            "0.5",
            "--test-fraction",
            "0.001",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((out / "corpus.json").read_text())["sources"]["file:few.txt"]
    assert (info["yielded"], info["length_filtered"], info["duplicates"], info["unique"]) == (35, 2, 3, 30)
    assert "length-filtered" in result.output and "duplicates" in result.output
    assert "kept: 21-200 characters" in result.output
    assert "WARNING: the test split is empty" in result.output and "the val split" not in result.output


def test_cli_names_the_seed_when_an_earlier_train_split_is_given_back(tmp_path: Path) -> None:
    """Splits hash each sentence with the seed, so an earlier corpus's train.txt lands wholly in train again:
    the warning says so (and --seed fixes it) instead of asking for more sentences."""
    src = _write_txt(
        tmp_path / "many.txt", [f"Sentence number {i} is about topic {i * 7} and more." for i in range(300)]
    )
    fractions = ["--val-fraction", "0.2", "--test-fraction", "0.2", "--no-debian", "--no-progress"]
    first = CliRunner().invoke(corpus_command, ["--out", str(tmp_path / "a"), "--file", str(src), *fractions])
    assert first.exit_code == 0 and "WARNING" not in first.output, first.output
    again = CliRunner().invoke(
        corpus_command,
        ["--out", str(tmp_path / "b"), "--file", str(tmp_path / "a" / "train.txt"), *fractions],
    )
    assert again.exit_code == 0, again.output
    assert "the val split is empty" in again.output and "pass another --seed" in again.output, again.output
    reseeded = CliRunner().invoke(
        corpus_command,
        [
            "--out",
            str(tmp_path / "c"),
            "--file",
            str(tmp_path / "a" / "train.txt"),
            *fractions,
            "--seed",
            "1",
        ],
    )
    assert reseeded.exit_code == 0 and "WARNING" not in reseeded.output, reseeded.output


# ---------------------------------------------------------------------------------------------------------
# The Debian sources (installed in CI by scripts/install_data_sources.sh)

SOURCE_CHECKS = {
    # name: (required path, apt package, a sentence the source must contain within its first items)
    "fortunes": (corpus.FORTUNES_DIR / "fortunes", "fortunes", None),
    "wordnet": (corpus.WORDNET_DIR / "data.noun", "wordnet-base", None),
    "bible-kjv": (corpus.SWORD_DIR / "mods.d" / "engKJV2006eb.conf", "sword-text-kjv",
                  "In the beginning God created the heaven and the earth."),
    "bible-web": (corpus.SWORD_DIR / "mods.d" / "engWEB2015eb.conf", "sword-text-web",
                  "In the beginning, God created the heavens and the earth."),
    "gcide": (corpus.GCIDE_FILE, "dict-gcide", None),
    "python-docs": (corpus.PYDOC_DIR, "python3.11-doc", None),
    "fortune-passages": (corpus.FORTUNES_DIR / "fortunes", "fortunes", None),
    "python-passages": (corpus.PYDOC_DIR, "python3.11-doc", None),
}  # fmt: skip


def test_every_source_is_checked() -> None:
    assert set(SOURCE_CHECKS) == set(SOURCES)


@pytest.mark.parametrize("name", list(SOURCE_CHECKS))
def test_debian_source_yields_plausible_sentences(name: str) -> None:
    path, package, expected = SOURCE_CHECKS[name]
    if not path.exists():
        pytest.skip(f"Debian package {package} not installed (run scripts/install_data_sources.sh)")
    passage = name in corpus.PASSAGE_SOURCES
    want = 1000 if passage else 3000
    sample = [corpus.normalize(s) for s in itertools.islice(SOURCES[name](), want)]
    assert len(sample) == want
    kept = [s for s in sample if corpus.keep_length(s, passage)]
    assert len(kept) > (0.3 if passage else 0.5) * want
    for sentence in kept:
        assert not re.search(r"</?[a-z]+[ >/]|\\|\ufffd", sentence), sentence
        assert len(sentence.split()) >= (20 if passage else 3), sentence
        if passage:
            assert len(split_sentences(sentence)) >= 2 or len(sentence.split()) >= corpus.PASSAGE_MIN_WORDS
    assert sum(s[-1] in '.!?"”’' for s in kept) > 0.3 * len(kept) or name == "wordnet"
    if expected:
        assert expected in sample
    if name == "bible-kjv":
        assert not any("¶" in s for s in sample)


def test_python_passages_join_consecutive_prose_paragraphs(tmp_path: Path) -> None:
    (tmp_path / "contents.rst.txt").write_text("Contents\n========\n", encoding="utf-8")
    words = lambda n, w: " ".join([w] * (n - 1)) + " end."  # noqa: E731
    page = "\n\n".join(
        [
            f"Alpha {words(30, 'a')} Second sentence here.",  # 30 + 3 words: not yet a passage
            f"Beta {words(20, 'b')}",  # joined with the first: 56 words
            f"Gamma {words(40, 'c')}",  # 40 words, then code ends it unjoined
            "Use x = f(y) here. It is code.",
            f"Delta {words(60, 'd')} And more here.",  # long enough alone
        ]
    )
    (tmp_path / "page.rst.txt").write_text(page + "\n", encoding="utf-8")
    got = list(corpus.iter_python_passages(tmp_path))
    assert [p.split()[0] for p in got] == ["Alpha", "Delta"]
    assert "Beta" in got[0] and "Gamma" not in got[0]
    assert all(len(p.split()) >= corpus.PASSAGE_MIN_WORDS for p in got)
    with pytest.raises(corpus.SourceUnavailable, match="python3.11-doc"):
        next(corpus.iter_python_passages(tmp_path / "missing"))
