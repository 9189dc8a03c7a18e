"""Quality metrics on embeddings (pure numpy) and the offline labelled evaluations built on them.

``encode_fn(list[str]) -> np.ndarray`` of shape (n, dim) is any encoder: full depth, early exit, PyTorch or
ONNX Runtime. Embeddings are L2-normalised again here, so an encoder that does not normalise still works.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from leap_export.errors import LeapError

EncodeFn = Callable[[list[str]], np.ndarray]


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span (as in Spearman's definition)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks are 1-based: (start+1 + end) / 2
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(pred: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of tie-averaged ranks); NaN when either is constant."""
    pred, gold = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(gold, dtype=np.float64).ravel()
    if pred.shape != gold.shape or pred.size < 2:
        raise LeapError(
            f"spearman needs two equally long score lists of 2+ items, got {pred.size} and {gold.size}"
        )
    rp, rg = _rank(pred) - (pred.size + 1) / 2, _rank(gold) - (gold.size + 1) / 2
    denominator = np.sqrt((rp * rp).sum() * (rg * rg).sum())
    return float((rp * rg).sum() / denominator) if denominator > 0 else float("nan")


def _normalize_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise LeapError(f"{what} must be a 2-D array (n, dim), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pair_cosines(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays."""
    a, b = _normalize_rows(emb_a, "emb_a"), _normalize_rows(emb_b, "emb_b")
    if a.shape != b.shape:
        raise LeapError(f"pair_cosines needs equal shapes, got {a.shape} and {b.shape}")
    return np.einsum("ij,ij->i", a, b).astype(np.float64)


def relevant_ranks(
    query_emb: np.ndarray, corpus_emb: np.ndarray, relevant: np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """1-based rank of each query's single relevant document under cosine similarity.

    Ties count against the query (a document scoring equal to the relevant one ranks before it), so a
    degenerate encoder cannot score well. Queries are scored ``chunk`` at a time: memory is chunk x corpus.
    """
    q, c = _normalize_rows(query_emb, "query_emb"), _normalize_rows(corpus_emb, "corpus_emb")
    relevant = np.asarray(relevant, dtype=np.int64).ravel()
    if q.shape[1] != c.shape[1] or len(relevant) != len(q):
        raise LeapError(
            f"retrieval shapes disagree: queries {q.shape}, corpus {c.shape}, relevant {relevant.shape}"
        )
    if len(relevant) and (relevant.min() < 0 or relevant.max() >= len(c)):
        raise LeapError(f"relevant indices must lie in [0, {len(c)}), got {relevant.min()}..{relevant.max()}")
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk):
        scores = q[start : start + chunk] @ c.T  # (chunk, n_corpus)
        rows = np.arange(scores.shape[0])
        target = scores[rows, relevant[start : start + chunk]][:, None]
        ranks[start : start + chunk] = (scores >= target).sum(axis=1)  # includes the relevant doc itself
    return ranks


def retrieval_metrics(
    query_emb: np.ndarray, corpus_emb: np.ndarray, relevant: np.ndarray, k: int = 10, chunk: int = 1024
) -> dict[str, float]:
    """NDCG@k, Recall@1, Recall@k and MRR with exactly one relevant document per query."""
    ranks = relevant_ranks(query_emb, corpus_emb, relevant, chunk)
    if ranks.size == 0:
        raise LeapError("retrieval_metrics needs at least one query")
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)  # ideal DCG is 1 with one relevant doc
    return {
        f"ndcg@{k}": float(gains.mean()),
        "recall@1": float((ranks == 1).mean()),
        f"recall@{k}": float((ranks <= k).mean()),
        "mrr": float((1.0 / ranks).mean()),
    }


def _encode(encode_fn: EncodeFn, texts: list[str]) -> np.ndarray:
    emb = np.asarray(encode_fn(texts))
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise LeapError(f"encode_fn returned shape {emb.shape} for {len(texts)} texts; expected (n, dim)")
    return emb


def evaluate_lee(encode_fn: EncodeFn) -> dict[str, float]:
    """Spearman correlation of cosine similarity with the 1,225 human Lee document-pair ratings."""
    from leap_export.data.evalsets import load_lee

    docs, pairs = load_lee()
    emb = _encode(encode_fn, docs)
    i, j, gold = (np.array(col) for col in zip(*pairs, strict=True))
    return {"spearman": spearman(pair_cosines(emb[i], emb[j]), gold), "pairs": len(pairs)}


def evaluate_bible(
    encode_fn: EncodeFn, limit: int | None = 1000, corpus_limit: int | None = None, k: int = 10
) -> dict[str, float]:
    """WEB-verse -> KJV-verse paraphrase retrieval: ``limit`` queries (None: all ~31k) against the KJV."""
    from leap_export.data.evalsets import load_bible_paraphrase

    queries, corpus, relevant = load_bible_paraphrase(limit=limit, corpus_limit=corpus_limit)
    metrics = retrieval_metrics(_encode(encode_fn, queries), _encode(encode_fn, corpus), relevant, k=k)
    return {**metrics, "queries": len(queries), "corpus": len(corpus)}


def evaluate_sts(encode_fn: EncodeFn, path: str | os.PathLike) -> dict[str, float]:
    """Spearman correlation of cosine similarity with the gold scores of a user STS file."""
    from leap_export.data.evalsets import load_sts_file

    s1, s2, gold = load_sts_file(path)
    cosines = pair_cosines(_encode(encode_fn, s1), _encode(encode_fn, s2))
    return {"spearman": spearman(cosines, gold), "pairs": len(gold)}
