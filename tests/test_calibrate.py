"""Calibration on the tiny built artifacts: the one-pass sweep agrees with the runtime, and the manifest update."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from leap_export.calibrate import BoundaryTrace, calibrate, trace_boundaries
from leap_export.errors import LeapError
from leap_export.textio import sample_sentences
from trt_runtime.encoder import EarlyExitEncoder
from trt_runtime.manifest import load_manifest
from trt_runtime.policy import ExitPolicy

# The CLI as a user runs it, with torch and transformers made unimportable: calibration is a CPU runtime path.
NO_TORCH = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {'torch', 'transformers', 'sentence_transformers'}:\n"
    "            raise ImportError('blocked for this test: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "from leap_export.cli import main\n"
    "sys.argv = ['leap-export'] + sys.argv[1:]\n"
    "main()\n"
)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def texts(sentences) -> list[str]:
    return list(dict.fromkeys(s for s in sentences + sample_sentences() if s.strip()))


@pytest.fixture
def artifacts(tiny_artifacts, tmp_path):
    """A private copy of the tiny BERT artifacts (calibration rewrites the manifest), with theta 1.0.

    The random tiny model's scores are high: at the build's theta 0.95 every sample exits at the first
    check, the cheapest any theta can be, and calibrate keeps a current policy no swept theta undercuts.
    Theta 1.0 (exact convergence only) lets the sweep's thetas win.
    """
    art = shutil.copytree(tiny_artifacts["bert"], tmp_path / "art")
    set_theta(art, 1.0)
    return art


def set_theta(art, theta: float) -> bytes:
    """Edit the manifest's default theta (the manifest itself is not hashed); returns its new bytes."""
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["exit_policy"]["theta"] = theta
    (art / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return (art / "manifest.json").read_bytes()


def splitting_thetas(trace: BoundaryTrace, policy: ExitPolicy, count: int = 4) -> list[float]:
    """Thresholds inside the score range of the exit boundaries, each > 1e-6 from every score there.

    Scores from a compacted (trimmed) batch differ from the full-depth ones by float rounding (~2e-7 here),
    so a theta that close to a score could flip that sample legitimately.
    """
    exit_rows = [s for s, b in enumerate(trace.boundaries[:-1]) if policy.may_exit_at(b)]
    scores = np.unique(trace.scores[exit_rows].astype(np.float64))
    lo, hi = len(scores) // 10, len(scores) - len(scores) // 10  # central 80 %: thetas that split
    gaps = np.diff(scores[lo:hi])
    widest = np.argsort(-gaps, kind="stable")[:count]
    assert gaps[widest].min() > 2e-6, "no clear gaps to put thresholds in"
    return sorted(round(float(scores[lo + i] + gaps[i] / 2), 9) for i in widest)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_sweep_exit_layers_equal_the_runtime(tiny_artifacts, texts, arch):
    art = tiny_artifacts[arch]
    trace = trace_boundaries(art, texts, batch_size=7)
    policy = load_manifest(art).default_policy
    mixed = 0
    for min_layer in (policy.min_layer, 3):  # 3: the first boundary (layer 2) may not exit
        rule = ExitPolicy(theta=0.5, patience=policy.patience, min_layer=min_layer)
        for theta in [*splitting_thetas(trace, rule), 0.5, 1.0]:
            got = EarlyExitEncoder(art, theta=theta, min_layer=min_layer).encode_with_exits(
                texts, batch_size=7
            )
            sim = trace.exit_layers(ExitPolicy(theta=theta, patience=policy.patience, min_layer=min_layer))
            np.testing.assert_array_equal(
                sim, got.exit_layers, err_msg=f"theta {theta}, min layer {min_layer}"
            )
            cos = np.sum(trace.embeddings(sim) * got.embeddings, axis=1)
            assert cos.min() >= 0.99999, f"theta {theta}, min layer {min_layer}"
            mixed += len(np.unique(sim)) >= 2
            assert min_layer < 3 or sim.min() >= 3
    assert mixed >= 6, "the thetas must split the samples, or the comparison proves little"
    # theta 1.0: nobody exits; the exited embeddings are the full-depth ones
    full = EarlyExitEncoder(art, exits=False).encode(texts, batch_size=7)
    np.testing.assert_allclose(trace.full(), full, atol=1e-6)


def test_calibrate_rows_match_the_runtime_and_the_manifest_gets_the_choice(artifacts, texts):
    before = load_manifest(artifacts)
    old = before.default_policy
    trace = trace_boundaries(artifacts, texts)
    thetas = splitting_thetas(trace, old)
    report = calibrate(
        artifacts, thetas=thetas, eval_sets=(), sentences=texts, min_nn10=0.0, max_quality_drop=1.0
    )
    rows = report["rows"]
    assert [r["theta"] for r in rows] == sorted(thetas)
    for row in rows:  # every row is what the runtime does at that theta
        got = EarlyExitEncoder(artifacts, theta=row["theta"]).encode_with_exits(texts)
        assert row["expected_layers"] == pytest.approx(got.exit_layers.mean())
        assert row["speedup"] == pytest.approx(4 / got.exit_layers.mean())
        for layer, rate in row["exit_rate"].items():
            assert rate == pytest.approx((got.exit_layers == int(layer)).mean())
        assert row["exit_at"] == pytest.approx((got.exit_layers <= old.min_layer + 1).mean())
        assert 0.0 <= row["nn_at_10"] <= 1.0 and row["meets_budget"]
    assert len({r["expected_layers"] for r in rows}) >= 2  # the sweep distinguishes the thresholds

    chosen = report["chosen"]
    assert chosen["expected_layers"] == min(r["expected_layers"] for r in rows)
    assert chosen["pareto"]  # the cheapest row is never dominated
    assert report["written"] and report["changed"]
    after = load_manifest(artifacts)  # still loads: files and hashes untouched
    assert after.data["exit_policy"] == {**old.to_dict(), "theta": chosen["theta"]}
    history = after.data["policy_history"]
    assert len(history) == len(before.data["policy_history"]) + 1
    assert history[-1]["theta"] == old.theta and history[-1]["min_layer"] == old.min_layer
    assert history[-1]["reason"] == report["message"] and history[-1]["replaced_at"]
    assert history[-1]["calibration"]["chosen"]["theta"] == chosen["theta"]
    assert (
        history[-1]["calibration"]["variant"] == "fp32"
    )  # the build it was measured on (the policy is shared)
    assert EarlyExitEncoder(artifacts).policy.theta == chosen["theta"]
    advice = report["boundary_advice"]  # read off the chosen row's exit rates
    assert advice["theta"] == chosen["theta"] and set(advice["exit_rate"]) == {"2", "3"}
    assert advice["quiet"] == [b for b in (2, 3) if chosen["exit_rate"][str(b)] < 0.01]

    again = calibrate(
        artifacts, thetas=thetas, eval_sets=(), sentences=texts, min_nn10=0.0, max_quality_drop=1.0
    )
    assert not again["changed"] and not again["written"]  # already the choice: no new history entry
    assert load_manifest(artifacts).data["policy_history"] == history


def test_no_quality_budget_is_inf_and_the_manifest_stays_strict_json(artifacts, texts):
    report = calibrate(artifacts, thetas=(0.5,), eval_sets=("lee",), sentences=texts, min_nn10=0.0,
                       max_quality_drop=float("inf"))  # fmt: skip
    assert report["chosen"]["theta"] == 0.5 and report["budget"]["max_quality_drop"] is None
    assert "no quality budget" in report["message"]

    def refuse(constant):
        raise AssertionError(f"{constant} in the manifest: not JSON")

    manifest = json.loads((artifacts / "manifest.json").read_text(), parse_constant=refuse)
    assert manifest["policy_history"][-1]["calibration"]["budget"]["max_quality_drop"] is None


def test_a_choice_that_saves_little_says_so():
    from leap_export.calibrate import _message

    row = {"theta": 0.99, "expected_layers": 5.96, "speedup": 6 / 5.96, "nn_at_10": 0.99, "drop": {}}
    old, new = ExitPolicy(theta=0.95, min_layer=3), ExitPolicy(theta=0.99, min_layer=3)
    text = _message(row, [row], old, new, True, 0.8, 0.02, 6)
    assert "early exit saves little (1.01x): train the model with LEAP" in text
    row = {**row, "expected_layers": 5.43, "speedup": 6 / 5.43}  # saves 9.5 % of layers (1.10x): under 10 %
    assert "saves little (1.10x)" in _message(row, [row], old, new, True, 0.8, 0.02, 6)
    row = {**row, "expected_layers": 3.4, "speedup": 6 / 3.4}
    assert "saves little" not in _message(row, [row], old, new, True, 0.8, 0.02, 6)


def test_no_theta_in_budget_names_the_one_that_misses_it_least():
    from leap_export.calibrate import _message

    rows = [
        {"theta": t, "violations": [f"NN@10 {nn} < 0.995"], "budget_shortfall": 0.995 - nn}
        for t, nn in ((0.97, 0.87), (0.98, 0.903), (0.99, 0.992))
    ]
    text = _message(None, rows, ExitPolicy(theta=0.95, min_layer=3), None, False, 0.995, 0.02, 6)
    assert text.endswith("Closest: theta 0.99: NN@10 0.992 < 0.995")


def test_a_cheaper_current_policy_outside_the_sweep_is_kept(artifacts, texts):
    """A sweep that leaves out the current theta must not swap it for a costlier one "within the budget"."""
    cheap = calibrate(
        artifacts, thetas=[0.5], eval_sets=(), sentences=texts, min_nn10=0.0, max_quality_drop=1.0
    )
    assert cheap["written"] and load_manifest(artifacts).default_policy.theta == 0.5
    manifest = artifacts / "manifest.json"
    before = manifest.read_bytes()
    policy = ExitPolicy(theta=0.5, min_layer=load_manifest(artifacts).default_policy.min_layer)
    costlier = splitting_thetas(trace_boundaries(artifacts, texts), policy)
    report = calibrate(
        artifacts, thetas=costlier, eval_sets=(), sentences=texts, min_nn10=0.0, max_quality_drop=1.0
    )
    assert all(r["expected_layers"] > report["current_row"]["expected_layers"] for r in report["rows"])
    assert report["chosen"]["theta"] == 0.5 and not report["changed"] and not report["written"]
    assert report["message"].startswith("the current policy is already the cheapest within the budget")
    assert manifest.read_bytes() == before


def test_boundary_advice_drops_exit_checks_nobody_uses():
    from leap_export.calibrate import boundary_advice

    row = {"theta": 0.98, "exit_rate": {"3": 0.0, "4": 0.42, "5": 0.453, "6": 0.127}}
    advice = boundary_advice(row, [3, 4, 5, 6], 6)
    assert advice["quiet"] == [3] and advice["suggested_boundaries"] == [4, 5]
    row = {"theta": 0.95, "exit_rate": {"3": 0.617, "4": 0.381, "5": 0.002, "6": 0.0}}
    assert boundary_advice(row, [3, 4, 5, 6], 6)["suggested_boundaries"] == [3, 4]
    assert boundary_advice(row, [3, 4, 5, 6], 6, min_rate=0.001)["quiet"] == []
    row = {"theta": 0.99, "exit_rate": {"3": 0.0, "4": 0.0, "5": 0.0, "6": 1.0}}
    nobody = boundary_advice(row, [3, 4, 5, 6], 6)
    assert nobody["quiet"] == [3, 4, 5] and nobody["suggested_boundaries"] is None


def test_dry_run_writes_nothing(artifacts, texts, tmp_path):
    manifest = artifacts / "manifest.json"
    before = manifest.read_bytes()
    report = calibrate(
        artifacts,
        thetas=[0.5],
        eval_sets=(),
        sentences=texts,
        min_nn10=0.0,
        max_quality_drop=1.0,
        write=False,
        report_path=tmp_path / "r.json",
    )
    assert report["changed"] and not report["written"]
    assert manifest.read_bytes() == before
    assert json.loads((tmp_path / "r.json").read_text())["chosen"]["theta"] == 0.5


def test_unattainable_budget_keeps_the_policy(artifacts, texts):
    manifest = artifacts / "manifest.json"
    before = set_theta(artifacts, 0.5)  # the current policy misses the budget too (theta 1.0 would meet it)
    # theta 0.5: every sample exits at the first exit boundary, so NN@10 falls short of a perfect 1.0
    report = calibrate(artifacts, thetas=[0.5], eval_sets=(), sentences=texts, min_nn10=1.0)
    (row,) = report["rows"]
    assert row["exit_rate_before_final"] == 1.0 and row["nn_at_10"] < 1.0
    assert not row["meets_budget"] and row["violations"]
    assert report["chosen"] is None and not report["changed"] and not report["written"]
    assert (
        "no theta meets the budget" in report["message"] and "keeping the current policy" in report["message"]
    )
    assert manifest.read_bytes() == before


def test_calibrate_on_lee_scores_like_the_evaluation(artifacts):
    from leap_export.evaluation import evaluate_lee

    report = calibrate(artifacts, thetas=[0.5, 1.0], eval_sets=("lee",), write=False)
    full = evaluate_lee(EarlyExitEncoder(artifacts, exits=False).encode)["spearman"]
    assert report["full_quality"]["lee"]["spearman"] == pytest.approx(full, abs=1e-6)
    assert report["label_free"]["count"] == 50  # the Lee documents
    at_half, at_one = report["rows"]
    exited = evaluate_lee(EarlyExitEncoder(artifacts, theta=0.5).encode)["spearman"]
    assert at_half["quality"]["lee"]["spearman"] == pytest.approx(exited, abs=1e-6)
    assert at_one["drop"]["lee/spearman"] == 0.0 and at_one["expected_layers"] == 4.0
    assert report["budget"]["metrics"] == ["lee/spearman"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"thetas": [0.0]}, "(0, 1]"),
        ({"thetas": []}, "at least one theta"),
        ({"eval_sets": ("sts",)}, "needs an STS file"),
        ({"eval_sets": ("glue",)}, "unknown evaluation set"),
        ({"eval_sets": ()}, "nothing to calibrate on"),
        ({"eval_sets": (), "sentences": ["one", "two"]}, "at least 11"),
        ({"min_nn10": 1.5}, "min_nn10"),
        ({"max_quality_drop": -0.1}, "max_quality_drop"),
        ({"max_quality_drop": 2.0}, "did you mean 0.02"),  # a percentage where a fraction is meant
        ({"min_layer": 4}, "below the 4 layers"),
    ],
)
def test_bad_input_is_a_clear_error(artifacts, kwargs, message):
    with pytest.raises(LeapError, match=message.replace("(", r"\(").replace(")", r"\)")):
        calibrate(artifacts, write=False, **kwargs)


def test_cli_without_torch(artifacts, texts, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    manifest = artifacts / "manifest.json"
    before = manifest.read_bytes()

    proc = cli("calibrate", artifacts, "--eval", "lee", "--thetas", "0.5,1.0", "--max-drop", "inf",
               "--min-nn10", "0", "--dry-run", "--report", tmp_path / "r.json")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "E[layers]" in proc.stdout and "chose theta 0.5" in proc.stdout and "dry run" in proc.stdout
    assert [r["theta"] for r in json.loads((tmp_path / "r.json").read_text())["rows"]] == [0.5, 1.0]
    assert manifest.read_bytes() == before

    before = set_theta(artifacts, 0.5)  # a current policy that misses the budget too (theta 1.0 meets it)
    proc = cli("calibrate", artifacts, "--eval", "", "--sentences", src, "--thetas", "0.5", "--min-nn10", "1",
               "--strict")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no theta meets the budget" in proc.stdout
    assert manifest.read_bytes() == before
    set_theta(artifacts, 1.0)

    proc = cli("calibrate", artifacts, "--eval", "", "--sentences", src, "--thetas", "0.5", "--min-nn10", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "manifest updated" in proc.stdout
    assert load_manifest(artifacts).data["exit_policy"]["theta"] == 0.5

    proc = cli("calibrate", artifacts, "--thetas", "0.9,x")
    assert proc.returncode == 2 and "comma-separated numbers" in proc.stderr


def test_budget_edges_ties_and_policy_history(artifacts, texts, monkeypatch):
    """The budget is inclusive (NN@10 >= min_nn10, drop <= max_quality_drop, as documented); among equally
    cheap thetas an undominated one wins, then the higher theta; every replaced policy stays in the history."""
    import leap_export.calibrate as cal

    kw = dict(eval_sets=(), sentences=texts, max_quality_drop=1.0)
    # theta 1.0 (the fixture's policy) exits nobody: NN@10 exactly 1 and no drop meet a budget of exactly that
    edge = calibrate(
        artifacts,
        thetas=[1.0],
        eval_sets=("lee",),
        sentences=texts,
        min_nn10=1.0,
        max_quality_drop=0.0,
        write=False,
    )
    assert edge["rows"][0]["nn_at_10"] == 1.0 and edge["rows"][0]["drop"] == {"lee/spearman": 0.0}
    assert edge["rows"][0]["meets_budget"] and edge["chosen"]["theta"] == 1.0

    # 0.3 and 0.5 both exit every sample at the first check: equally cheap, the higher theta has more margin
    tie = calibrate(artifacts, thetas=[0.3, 0.5], min_nn10=0.0, write=False, **kw)
    assert tie["rows"][0]["expected_layers"] == tie["rows"][1]["expected_layers"]
    assert tie["chosen"]["theta"] == 0.5
    real = cal._mark_pareto

    def half_dominated(rows, metrics):  # as if 0.5 were beaten by an equally cheap row
        real(rows, metrics)
        for r in rows:
            r["pareto"] = r["pareto"] and r["theta"] != 0.5

    monkeypatch.setattr(cal, "_mark_pareto", half_dominated)
    assert calibrate(artifacts, thetas=[0.3, 0.5], min_nn10=0.0, write=False, **kw)["chosen"]["theta"] == 0.3
    monkeypatch.undo()

    before = load_manifest(artifacts).data.get("policy_history", [])
    assert calibrate(artifacts, thetas=[0.5], min_nn10=0.0, **kw)["written"]  # 1.0 -> 0.5
    back = calibrate(artifacts, thetas=[1.0], min_nn10=1.0, **kw)  # 0.5 misses NN@10 1.0: back to 1.0
    assert back["written"] and back["chosen"]["theta"] == 1.0
    history = load_manifest(artifacts).data["policy_history"]
    assert history[: len(before)] == before and [h["theta"] for h in history[len(before) :]] == [1.0, 0.5]


def test_pareto_marks_rows_another_row_beats_or_equals_everywhere():
    from leap_export.calibrate import _mark_pareto

    def row(theta, e, nn, q):
        return {"theta": theta, "expected_layers": e, "nn_at_10": nn, "quality": {"lee": {"spearman": q}}}

    rows = [
        row(0.90, 3.0, 0.8, 0.5),
        row(0.92, 3.0, 0.7, 0.5),  # as cheap as 0.90, worse NN@10: dominated
        row(0.95, 3.5, 0.9, 0.4),  # costlier, better NN@10: undominated
        row(0.97, 3.5, 0.9, 0.4),  # equal to 0.95: neither dominates the other
        row(0.99, 4.0, 0.9, float("nan")),
    ]  # undefined quality counts as the worst: dominated by 0.95
    _mark_pareto(rows, [("lee", "spearman")])
    assert [r["pareto"] for r in rows] == [True, False, True, True, False]


def test_a_min_layer_override_is_written_with_the_theta(artifacts, texts):
    """The rows are measured at the given min_layer, so the written policy carries it, not the old one."""
    old = load_manifest(artifacts).default_policy
    assert old.min_layer != 3
    report = calibrate(
        artifacts,
        thetas=[0.5],
        min_layer=3,
        eval_sets=(),
        sentences=texts,
        min_nn10=0.0,
        max_quality_drop=1.0,
    )
    assert report["written"] and report["new_policy"]["min_layer"] == 3
    assert load_manifest(artifacts).default_policy.min_layer == 3
    assert load_manifest(artifacts).default_policy.theta == 0.5


def test_budget_shortfall_adds_every_miss_so_the_closest_theta_is_the_nearest(artifacts, texts, tmp_path):
    """When no theta meets the budget, the message names the row with the fewest violations and, among
    those, the smallest shortfall: NN@10 missed by (min_nn10 - NN@10) plus each primary-metric drop over
    the budget by (drop - max_quality_drop). The STS file's gold scores are the full-depth similarities, so
    full depth scores Spearman 1.0 and every exit that reorders the pairs is a drop."""
    full = EarlyExitEncoder(artifacts, exits=False).encode(texts)
    pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))][:60]
    sts = tmp_path / "gold.tsv"
    sts.write_text(
        "sentence1\tsentence2\tscore\n"
        + "".join(f"{texts[i]}\t{texts[j]}\t{float(full[i] @ full[j]):.6f}\n" for i, j in pairs),
        encoding="utf-8",
    )
    thetas = [
        t
        for t in splitting_thetas(trace_boundaries(artifacts, texts), load_manifest(artifacts).default_policy)
        if t < 1.0
    ]
    set_theta(
        artifacts, 0.5
    )  # the current policy misses the budget too (every sample exits at the first check)
    report = calibrate(
        artifacts,
        thetas=thetas,
        eval_sets=("sts",),
        sts_file=sts,
        sentences=texts,
        min_nn10=1.0,
        max_quality_drop=0.0,
        write=False,
        progress=False,
    )
    drops = [r["drop"]["sts/spearman"] for r in report["rows"]]
    assert sum(d > 0 for d in drops) >= 2, (
        f"two thetas must lose quality for this test to mean anything: {drops}"
    )
    for r in report["rows"]:
        drop = r["drop"]["sts/spearman"]
        want = max(0.0, 1.0 - r["nn_at_10"]) + max(0.0, drop)
        assert r["budget_shortfall"] == pytest.approx(want), r["theta"]
    fewest = min(len(r["violations"]) for r in report["rows"])
    closest = min(
        (r for r in report["rows"] if len(r["violations"]) == fewest), key=lambda r: r["budget_shortfall"]
    )
    assert report["chosen"] is None
    assert report["message"].endswith(
        f"Closest: theta {closest['theta']:g}: {'; '.join(closest['violations'])}"
    )
