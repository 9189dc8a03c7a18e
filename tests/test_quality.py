"""evaluate_artifacts on the tiny built artifacts with the real evaluation sets (Lee, a Bible subset, an STS file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from leap_export.calibrate import calibrate, trace_boundaries
from leap_export.errors import LeapError
from leap_export.evaluation import evaluate_bible, evaluate_lee, evaluate_sts
from leap_export.quality import (
    EVAL_METRICS,
    evaluate_artifacts,
    exit_statistics,
    label_free_set,
    load_eval_sets,
    parse_eval_sets,
    relative_drop,
)
from leap_export.textio import sample_sentences
from tests.test_calibrate import splitting_thetas
from trt_runtime.encoder import EarlyExitEncoder
from trt_runtime.manifest import load_manifest

BIBLE = {"bible_limit": 12, "bible_corpus_limit": 60}  # small: the tiny models are random anyway


@pytest.fixture
def sts_file(tmp_path):
    """A small STS CSV: neighbouring sample sentences with made-up (but varied) gold scores."""
    s = sample_sentences()
    rows = [f'"{a}","{b}",{(i * 7) % 5 + 0.5}' for i, (a, b) in enumerate(zip(s, s[1:], strict=False))]
    path = tmp_path / "sts.csv"
    path.write_text("sentence1,sentence2,score\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_every_metric_and_no_drop_without_exits(tiny_artifacts, sts_file, tmp_path):
    art = tiny_artifacts["bert"]
    kwargs = {"eval_sets": ("lee", "bible", "sts"), "sts_file": sts_file, **BIBLE}
    off = evaluate_artifacts(art, theta=1.0, report_path=tmp_path / "off.json", **kwargs)
    on = evaluate_artifacts(art, theta=0.5, **kwargs)

    expected = [(name, m) for name in ("lee", "bible", "sts") for m in EVAL_METRICS[name]]
    assert [(m["set"], m["metric"]) for m in off["metrics"]] == expected
    for m in off["metrics"]:  # theta 1.0: nobody exits, so exited == full depth exactly
        assert m["exited"] == m["full"] and m["drop"] == 0.0
    assert off["label_free"]["exit_rate_before_final"] == 0.0 and off["label_free"]["expected_layers"] == 4
    assert off["label_free"]["nn_at_10"] == 1.0 and off["label_free"]["min_similarity"] > 0.99999
    assert json.loads((tmp_path / "off.json").read_text())["metrics"] == off["metrics"]

    # full depth does not depend on the policy; the exited side does (theta 0.5: all exit at layer 2)
    assert [m["full"] for m in on["metrics"]] == [m["full"] for m in off["metrics"]]
    assert on["label_free"]["exit_rate"] == {"2": 1.0, "3": 0.0, "4": 0.0}
    assert on["label_free"]["expected_layers"] == 2.0 and on["label_free"]["layer_reduction"] == 2.0
    for m in on["metrics"]:
        assert m["drop"] == pytest.approx((m["full"] - m["exited"]) / abs(m["full"]))
    assert on["label_free"]["mean_similarity"] < 1.0

    # the same numbers as leap_export.evaluation computes from the runtime's encode
    full = EarlyExitEncoder(art, exits=False).encode
    exited = EarlyExitEncoder(art, theta=0.5).encode
    want = {
        "lee": (evaluate_lee(full), evaluate_lee(exited)),
        "bible": (
            evaluate_bible(full, limit=12, corpus_limit=60),
            evaluate_bible(exited, limit=12, corpus_limit=60),
        ),
        "sts": (evaluate_sts(full, sts_file), evaluate_sts(exited, sts_file)),
    }
    for m in on["metrics"]:
        assert m["full"] == pytest.approx(want[m["set"]][0][m["metric"]], abs=1e-6)
        assert m["exited"] == pytest.approx(want[m["set"]][1][m["metric"]], abs=1e-6)
    assert on["sets"]["bible"]["queries"] == 12 and on["sets"]["lee"]["pairs"] == 1225


def test_evaluate_agrees_with_the_calibration_sweep(tiny_artifacts, tmp_path):
    """The real runtime (evaluate) and the one-pass simulation (calibrate) report the same row."""
    art = tiny_artifacts["mpnet"]
    texts = sample_sentences()
    theta = splitting_thetas(trace_boundaries(art, texts), load_manifest(art).default_policy)[0]
    ev = evaluate_artifacts(art, eval_sets=("lee",), label_free_sentences=texts, theta=theta)
    cal = calibrate(art, thetas=[theta], eval_sets=("lee",), sentences=texts, write=False)
    row, lf = cal["rows"][0], ev["label_free"]
    assert len(set(lf["exit_rate"].values()) - {0.0}) >= 2  # the theta splits the samples
    assert row["expected_layers"] == pytest.approx(lf["expected_layers"])
    assert row["exit_rate"] == pytest.approx(lf["exit_rate"])
    assert row["nn_at_10"] == pytest.approx(lf["nn_at_10"])
    assert row["quality"]["lee"]["spearman"] == pytest.approx(ev["metrics"][0]["exited"], abs=1e-6)
    assert cal["full_quality"]["lee"]["spearman"] == pytest.approx(ev["metrics"][0]["full"], abs=1e-6)
    # a set's E[layers] is over that set's texts alone, not over everything encoded (here also the label-free set)
    from leap_export.data.evalsets import load_lee

    docs = load_lee()[0]
    lee_layers = EarlyExitEncoder(art, theta=theta).encode_with_exits(docs).exit_layers
    everything = (
        EarlyExitEncoder(art, theta=theta).encode_with_exits(list(dict.fromkeys(docs + texts))).exit_layers
    )
    assert lee_layers.mean() != pytest.approx(everything.mean())
    assert ev["sets"]["lee"]["expected_layers"] == pytest.approx(lee_layers.mean())
    # by length covers every text encoded; Lee's documents (45-126 words, truncated at this build's maximum)
    # fill the longest bucket
    rows = ev["by_length"]
    max_len = load_manifest(art).tokenizer.max_length
    assert sum(r["count"] for r in rows) == len(everything)
    assert sum(r["count"] * r["expected_layers"] for r in rows) == pytest.approx(everything.sum())
    assert rows[0]["tokens"] == "1-16" and rows[-1]["tokens"].endswith(f"-{max_len}")


def test_compare_with_a_reference_model(tiny_artifacts):
    bert, mpnet = tiny_artifacts["bert"], tiny_artifacts["mpnet"]
    report = evaluate_artifacts(bert, eval_sets=("lee",), reference_artifacts=mpnet, theta=0.5)
    ref_full = evaluate_lee(EarlyExitEncoder(mpnet, exits=False).encode)["spearman"]
    (m,) = report["metrics"]
    assert m["reference"] == pytest.approx(ref_full, abs=1e-6)
    assert m["drop_vs_reference"] == pytest.approx((ref_full - m["exited"]) / abs(ref_full))
    assert report["reference"]["within_target"] == (m["drop_vs_reference"] <= 0.03)
    # against itself at full depth, exits off, the drop is exactly 0 and the target met
    same = evaluate_artifacts(bert, eval_sets=("lee",), reference_artifacts=bert, theta=1.0)
    assert same["metrics"][0]["drop_vs_reference"] == 0.0 and same["reference"]["within_target"]


def test_helpers(tmp_path):
    assert relative_drop(0.8, 0.78) == pytest.approx(0.025)
    assert relative_drop(-0.5, -0.6) == pytest.approx(0.2)  # worse is a positive drop whatever the sign
    assert relative_drop(0.0, 0.1) is None and relative_drop(float("nan"), 0.1) is None
    assert parse_eval_sets(" Lee, bible ,lee") == ("lee", "bible")
    assert parse_eval_sets(None) == ("lee",) and parse_eval_sets(None, sts_file="x.tsv") == ("lee", "sts")
    assert parse_eval_sets("lee,sts", sts_file="x.tsv") == ("lee", "sts")
    with pytest.raises(
        LeapError, match=r"an STS file was given \(x.tsv\) .* ignored: add it \(--eval lee,sts\)"
    ):
        parse_eval_sets("lee", sts_file="x.tsv")  # evaluated Lee alone, silently
    assert parse_eval_sets("") == ()
    with pytest.raises(LeapError, match="unknown evaluation set"):
        parse_eval_sets("lee,stsb")
    with pytest.raises(LeapError, match="at least 11"):
        label_free_set([], ["a"] * 30)  # 30 lines, one distinct sentence
    constant = tmp_path / "constant.tsv"
    constant.write_text("sentence1\tsentence2\tscore\na\tb\t3\nc\td\t3\n", encoding="utf-8")
    with pytest.raises(LeapError, match="every gold score is 3, so Spearman's correlation is undefined"):
        load_eval_sets(("sts",), sts_file=constant)  # calibrate crashed formatting its None, before
    with pytest.raises(LeapError, match="no evaluation set was named .* pass --sentences FILE"):
        label_free_set([], None)  # `--eval ''` alone said "need at least 11 sentences, got 0"
    stats = exit_statistics(np.array([2, 2, 3, 4]), [2, 3, 4], num_layers=4, min_layer=2)
    assert stats["exit_rate"] == {"2": 0.5, "3": 0.25, "4": 0.25}
    assert stats["cumulative_exit_rate"] == {"2": 0.5, "3": 0.75, "4": 1.0}
    assert stats["exit_at"] == 0.75 and stats["exit_rate_before_final"] == 0.75
    assert stats["expected_layers"] == 2.75 and stats["layer_reduction"] == pytest.approx(4 / 2.75)
    # the layer acts from the plan's first check at or above min_layer, and never counts the last layer
    # (where every sample has "exited"): then it is the share that exits early at all
    layers = np.array([3, 3, 4, 6, 6])
    assert exit_statistics(layers, [3, 4, 5, 6], 6, min_layer=1)["exit_at_layer"] == 4  # acts as 3
    assert exit_statistics(layers, [3, 4, 5, 6], 6, min_layer=1)["exit_at"] == 0.6
    late = exit_statistics(layers, [3, 4, 5, 6], 6, min_layer=5)
    assert late["exit_at_layer"] == 5 and late["exit_at"] == late["exit_rate_before_final"] == 0.6
    assert exit_statistics(np.array([2, 3]), [1, 2, 3], 3, min_layer=1)["exit_at_layer"] == 2  # l > k
    assert (
        exit_statistics(np.array([2, 4]), [1, 2, 3, 4], 4, min_layer=1)["exit_at_layer"] == 3
    )  # 1 = k cannot exit


def test_cli(tiny_artifacts, tmp_path):
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "leap_export.cli", "evaluate", str(tiny_artifacts["bert"]), "--eval", "lee",
         "--theta", "1.0", "--compare", str(tiny_artifacts["mpnet"]), "--report", str(report)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "spearman" in proc.stdout and "drop vs ref" in proc.stdout and "NN@10 1.000" in proc.stdout
    data = json.loads(report.read_text())
    assert data["metrics"][0]["drop"] == 0.0 and data["reference"]["artifacts"] == str(
        tiny_artifacts["mpnet"]
    )

    proc = subprocess.run(
        [sys.executable, "-m", "leap_export.cli", "evaluate", str(tiny_artifacts["bert"]), "--eval", "sts"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "--sts-file" in proc.stderr and "Traceback" not in proc.stderr


def test_nn_failure_rates_are_strictly_below_the_threshold(monkeypatch):
    """Table 8/13: "NN@10 Fail = % samples with NN overlap < 0.5". Overlaps are multiples of 0.1, so a sample
    at exactly 0.5 (or 0.3) is common and must not count as a failure."""
    import leap_export.quality as quality

    monkeypatch.setattr(quality, "nn_overlap", lambda a, b, k=10: np.array([0.5, 0.3, 0.4, 1.0]))
    emb = np.eye(4, dtype=np.float32)
    got = quality.agreement(emb, emb)
    assert got["nn_at_10"] == pytest.approx(0.55)
    assert got["nn_fail_lt_0.5"] == pytest.approx(0.5)  # 0.3 and 0.4; not 0.5
    assert got["nn_fail_lt_0.3"] == 0.0  # not 0.3
