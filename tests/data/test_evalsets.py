"""Offline labelled evaluation sets: Lee, Bible paraphrase retrieval, user STS files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from leap_export.data import corpus
from leap_export.data.evalsets import bible_pairs, load_bible_paraphrase, load_lee, load_sts_file
from leap_export.errors import LeapError

needs_gensim = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None,
    reason="pip install --no-deps gensim==4.4.0 (holds the Lee data)",
)
needs_bibles = pytest.mark.skipif(
    not (corpus.SWORD_DIR / "mods.d" / "engKJV2006eb.conf").exists()
    or not (corpus.SWORD_DIR / "mods.d" / "engWEB2015eb.conf").exists()
    or importlib.util.find_spec("pysword") is None,
    reason="needs Debian sword-text-kjv + sword-text-web (scripts/install_data_sources.sh) and pip pysword",
)


@needs_gensim
def test_lee_has_50_docs_and_1225_rated_pairs() -> None:
    docs, pairs = load_lee()
    assert len(docs) == 50 and len(pairs) == 1225
    assert docs[0].startswith("The national executive of the strife-torn Democrats")
    assert all(0 <= i < j < 50 for i, j, _ in pairs)
    assert len({(i, j) for i, j, _ in pairs}) == 1225
    ratings = np.array([r for _, _, r in pairs])
    assert 0 <= ratings.min() and ratings.max() <= 1 and ratings.std() > 0.05
    assert pairs[0] == (0, 1, 0.3)  # first row of similarities0-1.txt: 1, 0.3, 0.24, ...


@needs_bibles
def test_bible_alignment_and_john_3_16() -> None:
    pairs = bible_pairs()
    assert 30_000 < len(pairs) < 31_102  # every pair is a reference present in both translations
    queries, docs, relevant = load_bible_paraphrase()
    # each distinct KJV text once: its copies (72 of "And the LORD spake unto Moses, saying,") would tie
    # with the relevant verse and count against the query whatever the encoder
    assert len(queries) == len(pairs) == len(relevant) and len(docs) == len(set(docs)) == 30_834
    assert all(docs[r] == kjv for r, (_, _, kjv) in zip(relevant.tolist(), pairs, strict=True))
    i = next(n for n, (ref, _, _) in enumerate(pairs) if ref == ("John", 3, 16))
    assert queries[i].startswith("For God so loved the world, that he gave his only born Son")
    assert docs[relevant[i]].startswith("For God so loved the world, that he gave his only begotten Son")
    assert "μονογενη" not in queries[i]  # the WEB footnote is gone


@needs_bibles
def test_bible_limits_are_deterministic_and_keep_the_answers() -> None:
    q1, c1, r1 = load_bible_paraphrase(limit=50, corpus_limit=500)
    q2, c2, r2 = load_bible_paraphrase(limit=50, corpus_limit=500)
    assert (q1, c1) == (q2, c2) and np.array_equal(r1, r2)
    assert len(q1) == 50 and len(c1) == 500
    full_q, full_c, full_r = load_bible_paraphrase()
    answer = dict(zip(full_q, (full_c[r] for r in full_r), strict=True))
    assert all(c1[r] == answer[q] for q, r in zip(q1, r1, strict=True))
    with pytest.raises(LeapError, match="--bible-corpus-limit 10 is smaller"):
        load_bible_paraphrase(limit=50, corpus_limit=10)


def test_sts_original_tsv(tmp_path: Path) -> None:
    path = tmp_path / "sts-dev.csv.tsv"
    path.write_text(
        "main-captions\tMSRvid\t2012test\t0000\t5.000\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\n"
        'main-news\theadlines\t2013\t0001\t0.5\tHe said "no".\tIt\'s raining.\textra-source\n',
        encoding="utf-8",
    )
    s1, s2, scores = load_sts_file(path)
    assert s1 == ["A man with a hard hat is dancing.", 'He said "no".']
    assert s2 == ["A man wearing a hard hat is dancing.", "It's raining."]
    assert scores.tolist() == [5.0, 0.5]


def test_sts_glue_tsv_and_csv(tmp_path: Path) -> None:
    glue = tmp_path / "dev.tsv"
    glue.write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a flute.\tA man slices cheese.\t0.500\n",
        encoding="utf-8",
    )
    want = (["A plane is taking off.", "A man is playing a flute."],
            ["An air plane is taking off.", "A man slices cheese."], [5.0, 0.5])  # fmt: skip
    s1, s2, scores = load_sts_file(glue)
    assert (s1, s2, scores.tolist()) == want
    # the same rows without GLUE's header: read as GLUE, not as the original layout (score = old_index,
    # both sentences "none", which made Spearman undefined and the evaluation print "-")
    glue.write_text("".join(glue.read_text(encoding="utf-8").splitlines(keepends=True)[1:]), encoding="utf-8")
    s1, s2, scores = load_sts_file(glue)
    assert (s1, s2, scores.tolist()) == want
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(
        'sentence1,sentence2,label\n"One, two.",Three.,1.5\nFour.,Five.,0\n', encoding="utf-8"
    )
    s1, s2, scores = load_sts_file(csv_file)
    assert (s1, s2, scores.tolist()) == (["One, two.", "Four."], ["Three.", "Five."], [1.5, 0.0])


def test_sts_errors_name_file_and_line(tmp_path: Path) -> None:
    short = tmp_path / "short.tsv"
    short.write_text("g\tf\t2012\t0\t1.0\tOnly one sentence.\n", encoding="utf-8")
    with pytest.raises(LeapError, match=r"short\.tsv:1: expected 7 tab-separated fields"):
        load_sts_file(short)
    bad_score = tmp_path / "bad.csv"
    bad_score.write_text("sentence1,sentence2,score\nA.,B.,1\nC.,D.,high\n", encoding="utf-8")
    with pytest.raises(LeapError, match=r"bad\.csv:3: score 'high' is not a number"):
        load_sts_file(bad_score)
    bad_score.write_text("sentence1,sentence2,score\nA.,B.,1\nC.,D.,nan\n", encoding="utf-8")
    with pytest.raises(LeapError, match=r"bad\.csv:3: score 'nan' is not a finite number"):
        load_sts_file(bad_score)  # nan was ranked by Spearman somewhere, silently
    no_header = tmp_path / "nohead.csv"
    no_header.write_text("A.,B.,1\n", encoding="utf-8")
    with pytest.raises(LeapError, match=r"nohead\.csv:1: a CSV STS file needs a header"):
        load_sts_file(no_header)
    missing_col = tmp_path / "cols.csv"
    missing_col.write_text("sentence1,sentence2,rating\nA.,B.,1\n", encoding="utf-8")
    with pytest.raises(LeapError, match=r"cols\.csv:1: the header needs columns"):
        load_sts_file(missing_col)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sentence1,sentence2,score\nCaf\xe9.,B.,1\n".encode("latin-1"))
    with pytest.raises(LeapError, match=r"latin\.csv, line 2: not valid UTF-8"):
        load_sts_file(latin)
    with pytest.raises(LeapError, match="does not exist"):
        load_sts_file(tmp_path / "absent.tsv")
    three = tmp_path / "three.tsv"  # a simple layout needs its header
    three.write_text("A.\tB.\t1\n", encoding="utf-8")
    with pytest.raises(LeapError, match=r"three\.tsv:1: expected 7 .* put a header line naming the columns"):
        load_sts_file(three)
    multi = tmp_path / "multi.csv"  # a quoted field over two lines: errors name the physical line
    multi.write_text('sentence1,sentence2,score\nA.,B.,1\n"C\nstill C.",D.,2\nE.,F.,oops\n', encoding="utf-8")
    with pytest.raises(LeapError, match=r"multi\.csv:5: score 'oops'"):
        load_sts_file(multi)


def test_sts_files_that_cannot_be_scored_are_refused(tmp_path: Path) -> None:
    same = tmp_path / "same.tsv"  # a misread layout: one column in both sentences
    same.write_text("g\tf\t2012\t0\t1.0\tnone\tnone\ng\tf\t2012\t1\t2.0\tnone\tnone\n", encoding="utf-8")
    with pytest.raises(LeapError, match="every pair holds the same text twice"):
        load_sts_file(same)
