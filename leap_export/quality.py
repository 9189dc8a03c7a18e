"""Quality of early-exit embeddings: exited vs full depth (vs another model), labelled and label-free.

Two kinds of evidence, both in one report (LEAP paper §4.5, §5.1, C.7):

- labelled: each evaluation set's metrics (Lee Spearman; Bible paraphrase NDCG@10 / Recall@1 / MRR; a user
  STS file's Spearman) on the *exited* embeddings (the runtime with its exit policy) and on full-depth
  embeddings (the same segments, exits off), with the relative quality drop ``(full - exited) / |full|``;
  optionally also against a reference model's full-depth embeddings (e.g. the stock model: the issue's
  target is at most 3 % relative loss);
- label-free, on a sentence list: similarity of each exited embedding to its full-depth embedding, NN@10
  overlap of exited vs full depth with the Table 13 failure rates, exit rate per layer and E[layers].

An :class:`EvalSet` holds its texts and scores any embedding lookup, so calibration can score many
thresholds from one model run (:mod:`leap_export.calibrate`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from leap_export.diagnostics import NN_FAIL_THRESHOLDS, by_length, exit_at_layer, nn_overlap
from leap_export.errors import LeapError
from leap_export.evaluation import pair_cosines, retrieval_metrics, spearman
from trt_runtime.fileio import write_json_atomic

REPORT_SCHEMA = "leap-export/evaluate-report"
REPORT_VERSION = 1
EVAL_SETS = ("lee", "bible", "sts")
# The metrics reported per set; the first is the one a calibration budget is checked against.
EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "lee": ("spearman",),
    "bible": ("ndcg@10", "recall@1", "mrr"),
    "sts": ("spearman",),
}
NN_K = 10  # the paper's NN@10 (B.5, Table 8, Table 13)
LABEL_FREE_LIMIT = 5000  # default label-free set: at most this many eval texts (NN@k is O(N^2))
REFERENCE_TARGET_DROP = 0.03  # the target: exited embeddings within 3 % of the stock model

EmbeddingLookup = Callable[[list[str]], np.ndarray]


# --- evaluation sets ------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """A labelled set, loaded once: its texts, and how to score a text -> embedding lookup on them."""

    name: str
    texts: list[str]
    size: dict[str, int]
    _score: Callable[[EmbeddingLookup], dict[str, float]]

    def score(self, embed: EmbeddingLookup) -> dict[str, float]:
        return self._score(embed)

    @property
    def primary_metric(self) -> str:
        return EVAL_METRICS[self.name][0]


def parse_eval_sets(value: str | Iterable[str] | None, *, sts_file: str | os.PathLike | None = None) -> tuple:
    """``"lee,bible"`` -> ``("lee", "bible")``; None: Lee, plus STS when an STS file is given."""
    if value is None:
        return ("lee", "sts") if sts_file is not None else ("lee",)
    names = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value)]
    names = list(dict.fromkeys(n for n in names if n))
    unknown = [n for n in names if n not in EVAL_SETS]
    if unknown:
        raise LeapError(f"unknown evaluation set(s) {', '.join(unknown)}; choose from {', '.join(EVAL_SETS)}")
    if sts_file is not None and "sts" not in names:
        raise LeapError(
            f"an STS file was given ({sts_file}) but the evaluation sets ({', '.join(names) or 'none'}) do not "
            f"include sts, so it would be ignored: add it (--eval {','.join([*names, 'sts'])}) or drop --sts-file"
        )
    return tuple(names)


def load_eval_sets(
    names: Sequence[str],
    *,
    sts_file: str | os.PathLike | None = None,
    bible_limit: int | None = 1000,
    bible_corpus_limit: int | None = None,
) -> list[EvalSet]:
    """Load the named sets (see :mod:`leap_export.data.evalsets`); the same metrics as
    :mod:`leap_export.evaluation`'s ``evaluate_*`` functions, on data loaded once."""
    from leap_export.data.evalsets import load_bible_paraphrase, load_lee, load_sts_file

    names = parse_eval_sets(names)
    if "sts" in names and sts_file is None:
        raise LeapError("the 'sts' evaluation needs an STS file: pass --sts-file FILE (STS-B TSV or CSV)")
    sets = []
    for name in names:
        if name == "lee":
            docs, pairs = load_lee()
            i, j, gold = (np.array(col) for col in zip(*pairs, strict=True))
            left, right = [docs[a] for a in i], [docs[b] for b in j]
            sets.append(
                EvalSet(
                    "lee", docs, {"pairs": len(pairs), "texts": len(docs)}, _pair_scorer(left, right, gold)
                )
            )
        elif name == "bible":
            queries, corpus, relevant = load_bible_paraphrase(
                limit=bible_limit, corpus_limit=bible_corpus_limit
            )

            def score_bible(embed, queries=queries, corpus=corpus, relevant=relevant):
                return retrieval_metrics(embed(queries), embed(corpus), relevant, k=10)

            sets.append(
                EvalSet(
                    "bible", queries + corpus, {"queries": len(queries), "corpus": len(corpus)}, score_bible
                )
            )
        else:
            s1, s2, gold = load_sts_file(sts_file)
            if len(np.unique(gold)) < 2:
                raise LeapError(
                    f"STS file {sts_file}: every gold score is {gold[0]:g}, so Spearman's correlation is "
                    "undefined; an STS set needs pairs with different scores"
                )
            sets.append(EvalSet("sts", s1 + s2, {"pairs": len(gold)}, _pair_scorer(s1, s2, gold)))
    return sets


def _pair_scorer(left, right, gold) -> Callable[[EmbeddingLookup], dict[str, float]]:
    def score(embed: EmbeddingLookup) -> dict[str, float]:
        return {"spearman": spearman(pair_cosines(embed(left), embed(right)), gold)}

    return score


class Lookup:
    """``texts -> embeddings`` over a fixed table (rows in ``texts`` order); unknown texts are an error."""

    def __init__(self, texts: Sequence[str], embeddings: np.ndarray) -> None:
        self.index = {t: i for i, t in enumerate(texts)}
        self.embeddings = embeddings
        if len(self.index) != len(texts) or embeddings.shape[0] != len(texts):
            raise LeapError("Lookup needs unique texts and one embedding row per text")

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        try:
            return np.fromiter((self.index[t] for t in texts), dtype=np.int64, count=len(texts))
        except KeyError as e:
            raise LeapError(f"no embedding for text {str(e)[:80]}") from None

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.embeddings[self.rows(texts)]


def union_texts(sets: Sequence[EvalSet], extra: Sequence[str] = ()) -> list[str]:
    """Every distinct text the sets and ``extra`` need, first occurrence order."""
    return list(dict.fromkeys([t for s in sets for t in s.texts] + list(extra)))


def label_free_set(
    sets: Sequence[EvalSet], sentences: Sequence[str] | None, limit: int = LABEL_FREE_LIMIT
) -> tuple[list[str], str]:
    """The label-free set and where it came from: ``sentences`` if given, else the eval texts (an evenly
    spaced, deterministic subset of at most ``limit`` when there are more)."""
    if sentences is None and not sets:
        raise LeapError(
            "no evaluation set was named (--eval is empty) and no --sentences given: name a set "
            f"({', '.join(EVAL_SETS)}), or pass --sentences FILE for the label-free metrics alone"
        )
    if sentences is not None:
        texts = list(dict.fromkeys(s for s in sentences if s.strip()))
        origin = "given sentences"
    else:
        texts = union_texts(sets)
        origin = "texts of " + ", ".join(s.name for s in sets)
        if len(texts) > limit:
            texts = [texts[i] for i in np.unique(np.linspace(0, len(texts) - 1, limit).round().astype(int))]
            origin += f" (evenly spaced subset of {limit})"
    if len(texts) < NN_K + 1:
        raise LeapError(
            f"label-free metrics (NN@{NN_K}) need at least {NN_K + 1} distinct non-empty sentences, "
            f"got {len(texts)}; pass more sentences or an evaluation set"
        )
    return texts, origin


# --- metrics shared with calibration ----------------------------------------------------------------------


def relative_drop(full: float | None, other: float | None) -> float | None:
    """``(full - other) / |full|``: the fraction of quality lost (negative: a gain). None when undefined."""
    if full is None or other is None or not (math.isfinite(full) and math.isfinite(other)) or full == 0:
        return None
    return (full - other) / abs(full)


def exit_statistics(
    exit_layers: np.ndarray, boundaries: Sequence[int], num_layers: int, min_layer: int, patience: int = 1
) -> dict[str, Any]:
    """Exit rate per boundary (and cumulative), E[layers], L / E[layers], and the paper's "Exit@L7": the
    share exiting at or before :func:`exit_at_layer`."""
    n = exit_layers.size
    at = exit_at_layer(boundaries, num_layers, min_layer, patience)
    counts = {b: int((exit_layers == b).sum()) for b in boundaries}
    cumulative, running = {}, 0
    for b in boundaries:
        running += counts[b]
        cumulative[str(b)] = running / n
    expected = float(exit_layers.mean())
    return {
        "samples": int(n),
        "exit_rate": {str(b): counts[b] / n for b in boundaries},
        "cumulative_exit_rate": cumulative,
        "exit_rate_before_final": float((exit_layers < num_layers).mean()),
        "exit_at_layer": at,
        "exit_at": float((exit_layers <= at).mean()),
        "expected_layers": expected,
        "layer_reduction": num_layers / expected,
    }


def agreement(exited: np.ndarray, full: np.ndarray, k: int = NN_K) -> dict[str, float]:
    """Exited vs full-depth embeddings of the same samples: cosine (mean, min) and NN@k with failure rates."""
    sims = pair_cosines(exited, full)
    nn = nn_overlap(exited, full, k=k)
    return {
        "mean_similarity": float(sims.mean()),
        "min_similarity": float(sims.min()),
        f"nn_at_{k}": float(nn.mean()),
        **{f"nn_fail_lt_{t}": float((nn < t).mean()) for t in NN_FAIL_THRESHOLDS},
    }


def jsonable(obj):
    """NaN/inf -> None and numpy scalars -> Python, so the report is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def save_report(report: dict, path: str | os.PathLike) -> Path:
    return write_json_atomic(path, jsonable(report))


# --- evaluate an artifact folder --------------------------------------------------------------------------


def _encode_all(encoder, texts: list[str], batch_size: int, bar) -> tuple[np.ndarray, np.ndarray]:
    result = encoder.encode_with_exits(
        texts, batch_size=batch_size, show_progress_bar=False, on_batch=bar.update
    )
    return result.embeddings, result.exit_layers


def artifact_summary(artifacts, manifest, variant: str | None) -> dict[str, Any]:
    """Which build a report describes: folder, variant, model and segment geometry."""
    return {
        "artifacts": str(artifacts),
        "variant": variant or manifest.data.get("default_variant"),
        "model": manifest.data.get("source", {}).get("name"),
        "num_layers": manifest.num_layers,
        "boundaries": manifest.boundaries,
    }


def evaluate_artifacts(
    artifacts: str | os.PathLike,
    *,
    eval_sets: Sequence[str] = ("lee", "bible"),
    sts_file: str | os.PathLike | None = None,
    theta: float | None = None,
    min_layer: int | None = None,
    variant: str | None = None,
    bible_limit: int | None = 1000,
    bible_corpus_limit: int | None = None,
    label_free_sentences: Sequence[str] | None = None,
    reference_artifacts: str | os.PathLike | None = None,
    batch_size: int = 32,
    report_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Quality of the exited embeddings (the runtime with its policy; ``theta`` / ``min_layer`` override
    the manifest's) and of full-depth embeddings (exits off) of one artifact folder.

    ``reference_artifacts``: another artifact folder (e.g. the stock model's) whose full-depth quality the
    exited embeddings are also compared with (target: at most :data:`REFERENCE_TARGET_DROP` relative loss).
    """
    from tqdm.auto import tqdm

    from trt_runtime.encoder import EarlyExitEncoder
    from trt_runtime.manifest import load_manifest

    t0 = time.perf_counter()
    manifest = load_manifest(artifacts, variant=variant)
    if min_layer is not None and not min_layer < manifest.num_layers:  # as calibrate: no exit could happen
        raise LeapError(f"min_layer must be below the {manifest.num_layers} layers, got {min_layer}")
    sets = load_eval_sets(
        eval_sets, sts_file=sts_file, bible_limit=bible_limit, bible_corpus_limit=bible_corpus_limit
    )
    lf_texts, lf_origin = label_free_set(sets, label_free_sentences)
    texts = union_texts(sets, lf_texts)
    exited_enc = EarlyExitEncoder(
        artifacts, theta=theta, min_layer=min_layer, variant=variant, check_files=False
    )
    full_enc = EarlyExitEncoder(artifacts, exits=False, variant=variant, check_files=False)
    policy = exited_enc.policy
    ref_enc = EarlyExitEncoder(reference_artifacts, exits=False) if reference_artifacts is not None else None
    passes = 2 if ref_enc is None else 3
    # one bar over every pass, on a terminal (disable=None)
    with tqdm(
        total=passes * len(texts), desc="evaluate", unit="sentence", disable=None if progress else True
    ) as bar:
        exited_emb, exit_layers = _encode_all(exited_enc, texts, batch_size, bar)
        full_emb, _ = _encode_all(full_enc, texts, batch_size, bar)
        t1 = time.perf_counter()
        reference = (
            None if ref_enc is None else Lookup(texts, _encode_all(ref_enc, texts, batch_size, bar)[0])
        )
    exited, full = Lookup(texts, exited_emb), Lookup(texts, full_emb)

    metrics, set_info = [], {}
    for s in sets:
        got_full, got_exited = s.score(full), s.score(exited)
        got_ref = s.score(reference) if reference is not None else {}
        layers = exit_layers[exited.rows(s.texts)]
        set_info[s.name] = {
            **s.size,
            "expected_layers": float(layers.mean()),
            "exit_rate_before_final": float((layers < manifest.num_layers).mean()),
        }
        for name in EVAL_METRICS[s.name]:
            row = {
                "set": s.name,
                "metric": name,
                "primary": name == s.primary_metric,
                "full": got_full[name],
                "exited": got_exited[name],
                "drop": relative_drop(got_full[name], got_exited[name]),
            }
            if reference is not None:
                row["reference"] = got_ref[name]
                row["drop_vs_reference"] = relative_drop(got_ref[name], got_exited[name])
            metrics.append(row)

    rows = exited.rows(lf_texts)
    label_free = {
        "source": lf_origin,
        "count": len(lf_texts),
        **agreement(exited_emb[rows], full_emb[rows]),
        **exit_statistics(
            exit_layers[rows], manifest.boundaries, manifest.num_layers, policy.min_layer, policy.patience
        ),
    }
    lengths = np.array([len(ids) for ids in exited_enc.tokenizer.encode(texts)])
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        **artifact_summary(artifacts, manifest, variant),
        "policy": policy.to_dict(),
        "eval_sets": [s.name for s in sets],
        "sets": set_info,
        "metrics": metrics,
        "label_free": label_free,
        # every text encoded (the sets' and the label-free ones): long documents are in the sets
        "by_length": by_length(lengths, exit_layers, pair_cosines(exited_emb, full_emb), manifest.num_layers),
        "reference": None,
        "timing_s": {"encode": round(t1 - t0, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    if reference is not None:
        drops = [m["drop_vs_reference"] for m in metrics if m["primary"]]
        report["reference"] = {
            "artifacts": str(reference_artifacts),
            "model": ref_enc.manifest.data.get("source", {}).get("name"),
            "target_drop": REFERENCE_TARGET_DROP,
            "within_target": bool(drops) and all(d is not None and d <= REFERENCE_TARGET_DROP for d in drops),
        }
    if report_path is not None:
        save_report(report, report_path)
    return jsonable(report)
