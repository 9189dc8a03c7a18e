"""Metrics on hand-computed cases, and the evaluations end to end with a real (bag-of-words) encoder."""

from __future__ import annotations

import importlib.util
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from leap_export.data import corpus
from leap_export.errors import LeapError
from leap_export.evaluation import (
    evaluate_bible,
    evaluate_lee,
    evaluate_sts,
    pair_cosines,
    relevant_ranks,
    retrieval_metrics,
    spearman,
)


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred = rng.integers(0, 5, size=40).astype(float)  # many ties
        gold = pred + rng.normal(0, 2, size=40)
        assert spearman(pred, gold) == pytest.approx(spearmanr(pred, gold).statistic, abs=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(LeapError, match="equally long"):
        spearman([1, 2], [1, 2, 3])


def test_pair_cosines() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    b = np.array([[0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(pair_cosines(a, b), [0.0, 1.0, -1.0], atol=1e-6)


def test_retrieval_metrics_hand_computed() -> None:
    # Corpus: 12 unit vectors at decreasing similarity to the query direction e0.
    angles = np.linspace(0.0, 1.5, 12)
    corpus_emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    query = np.array([[1.0, 0.0]] * 3)
    relevant = np.array([0, 2, 11])  # ranks 1, 3 and 12 (outside the top 10)
    assert relevant_ranks(query, corpus_emb, relevant).tolist() == [1, 3, 12]
    m = retrieval_metrics(query, corpus_emb, relevant, k=10, chunk=2)  # chunking must not matter
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 0) / 3)


def test_retrieval_metrics_at_rank_2_and_rank_k_agree_with_sklearn() -> None:
    """Rank 2 is not a Recall@1 hit, rank k = 10 is still inside NDCG@10 and Recall@10 (the cut-offs
    are inclusive); NDCG@10 agrees with sklearn's on the same scores."""
    from sklearn.metrics import ndcg_score

    angles = np.linspace(0.0, 1.5, 12)
    corpus_emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    query = np.array([[1.0, 0.0]] * 3)
    relevant = np.array([1, 9, 10])
    assert relevant_ranks(query, corpus_emb, relevant).tolist() == [2, 10, 11]
    m = retrieval_metrics(query, corpus_emb, relevant, k=10)
    assert m["recall@1"] == 0.0
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 10 + 1 / 11) / 3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(11)) / 3)
    scores = query @ corpus_emb.T
    truth = np.zeros_like(scores)
    truth[np.arange(3), relevant] = 1.0
    assert m["ndcg@10"] == pytest.approx(ndcg_score(truth, scores, k=10, ignore_ties=True), abs=1e-12)


def test_ties_count_against_the_query() -> None:
    constant = np.ones((4, 3))
    m = retrieval_metrics(constant[:2], constant, np.array([0, 3]))
    assert m["recall@1"] == 0.0 and m["mrr"] == pytest.approx(0.25)


def test_retrieval_shape_errors() -> None:
    with pytest.raises(LeapError, match="relevant indices"):
        retrieval_metrics(np.eye(2), np.eye(2), np.array([0, 5]))
    with pytest.raises(LeapError, match="shapes disagree"):
        retrieval_metrics(np.eye(2), np.eye(3), np.array([0, 1]))


def bag_of_words(texts: list[str], dim: int = 4096) -> np.ndarray:
    """A real, tiny, deterministic encoder: hashed counts of lower-cased words of 4+ letters (a crude
    stop-word filter), L2-normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            word = word.strip(".,;:!?\"'“”‘’()")
            if len(word) >= 4:
                out[row, zlib.crc32(word.encode()) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def random_encoder(texts: list[str]) -> np.ndarray:
    return np.random.default_rng(len(texts)).normal(size=(len(texts), 64))


def test_evaluate_sts_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "sts.csv"
    rows = [
        ("A man is playing a guitar.", "A man is playing a guitar.", 5.0),
        ("A man is playing a guitar.", "A man plays the guitar.", 4.0),
        ("A woman is slicing an onion.", "A woman is cutting a tomato.", 2.0),
        ("The cat sleeps on the sofa.", "Stock markets fell sharply today.", 0.0),
    ]
    path.write_text(
        "sentence1,sentence2,score\n" + "".join(f"{a},{b},{s}\n" for a, b, s in rows), encoding="utf-8"
    )
    result = evaluate_sts(bag_of_words, path)
    assert result["pairs"] == 4 and result["spearman"] == pytest.approx(1.0)


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="pip install --no-deps gensim==4.4.0")
def test_evaluate_lee_separates_a_real_encoder_from_noise() -> None:
    real, noise = evaluate_lee(bag_of_words), evaluate_lee(random_encoder)
    assert real["pairs"] == 1225
    assert real["spearman"] > 0.2 and abs(noise["spearman"]) < 0.1


@pytest.mark.skipif(
    not (corpus.SWORD_DIR / "mods.d" / "engWEB2015eb.conf").exists()
    or importlib.util.find_spec("pysword") is None,
    reason="needs Debian sword-text-kjv + sword-text-web and pip pysword (scripts/install_data_sources.sh)",
)
def test_evaluate_bible_on_a_subset() -> None:
    real = evaluate_bible(bag_of_words, limit=200, corpus_limit=2000)
    noise = evaluate_bible(random_encoder, limit=200, corpus_limit=2000)
    assert real["queries"] == 200 and real["corpus"] == 2000
    assert real["recall@1"] > 0.5 and real["ndcg@10"] > real["recall@1"] * 0.9
    assert noise["recall@1"] < 0.05
