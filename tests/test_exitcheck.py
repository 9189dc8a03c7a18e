"""leap_export/exitcheck.py: a build exits early by default only if its model passes the deployment checklist.

Two tiny models: the random one of conftest, whose layers (initialised with std 0.02) barely move the
embedding output, so every layer agrees with the final one and it passes; and one whose layer matrices are
redrawn with std 0.3, so every layer moves far from the last one: it fails, like the stock all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from leap_export.diagnostics import run_diagnose
from leap_export.export import build
from leap_export.verify import verify
from trt_runtime import EarlyExitEncoder, ExitPolicy, load_manifest
from trt_runtime.errors import RuntimeInputError


@pytest.fixture(scope="module")
def diverging_bert(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel

    from tests.conftest import TINY, _minilm_path, write_st_folder

    torch.manual_seed(0)
    model = BertModel(
        BertConfig(vocab_size=30522, max_position_embeddings=128, **TINY), add_pooling_layer=False
    )
    with torch.no_grad():
        for layer in model.encoder.layer:
            for weight in (p for p in layer.parameters() if p.dim() == 2):
                weight.normal_(0.0, 0.3)
    return write_st_folder(model.eval(), tmp_path_factory.mktemp("diverging") / "bert", _minilm_path())


@pytest.fixture(scope="module")
def diverging_art(diverging_bert, tmp_path_factory):
    return build(
        diverging_bert, tmp_path_factory.mktemp("diverging-art") / "art", min_layer=2, progress=False
    )


def test_a_model_that_fails_the_check_ships_with_exits_off_and_says_why(diverging_art, sentences):
    m = load_manifest(diverging_art)
    check = m.exit_check
    assert m.default_policy.enabled is False and check["passed"] is False
    assert check["failed"] and check["reason"].startswith("exits off by default: the model failed")
    assert check["sentences"] > 300 and check["boundaries"] == m.boundaries
    assert {c["name"] for c in check["checklist"]} == {"similarity to final", "NN@10", "exit rate"}
    enc = EarlyExitEncoder(diverging_art)
    assert enc.policy.enabled is False
    assert set(enc.encode_with_exits(sentences).exit_layers.tolist()) == {m.num_layers}


def test_a_model_that_passes_and_ships_with_exits_on(tiny_artifacts, sentences):
    m = load_manifest(tiny_artifacts["bert"])
    assert m.exit_check["passed"] is True and m.exit_check["failed"] == []
    assert m.default_policy.enabled is True
    assert m.exit_check["reason"] == "exits on by default: the model passed the exit-compatibility check"
    layers = EarlyExitEncoder(tiny_artifacts["bert"]).encode_with_exits(sentences).exit_layers
    assert (layers < m.num_layers).all()  # layers 3 and 4 change nothing: every sentence exits at layer 3


def test_build_and_diagnose_agree(diverging_bert, tiny_bert, tiny_artifacts, diverging_art):
    """The build's decision is diagnose's verdict on the same sentences and policy."""
    from leap_export.exitcheck import probe_sentences

    for model, art in ((diverging_bert, diverging_art), (tiny_bert, tiny_artifacts["bert"])):
        m = load_manifest(art)
        p = m.exit_check["policy"]
        report = run_diagnose(model, probe_sentences(), theta=p["theta"], patience=p["patience"],
                              min_layer=p["min_layer"])  # fmt: skip
        assert (report["verdict"] == "exit-compatible") is m.exit_check["passed"]
        assert [c["passed"] for c in report["checklist"]["checks"]] == [
            c["passed"] for c in m.exit_check["checklist"]
        ]


def test_exits_on_or_off_decides_regardless_and_is_recorded(diverging_bert, tiny_bert, tmp_path):
    on = load_manifest(build(diverging_bert, tmp_path / "on", min_layer=2, exits="on", progress=False))
    assert on.default_policy.enabled is True and on.exit_check["passed"] is False
    assert (
        "build --exits on" in on.exit_check["reason"]
        and "although the exit check failed" in on.exit_check["reason"]
    )
    off = load_manifest(build(tiny_bert, tmp_path / "off", min_layer=2, exits="off", progress=False))
    assert off.default_policy.enabled is False and off.exit_check["passed"] is True
    assert off.exit_check["decision"] == "off"
    with pytest.raises(Exception, match="exits must be one of auto, on, off"):
        build(diverging_bert, tmp_path / "x", exits="yes", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_policy_no_sample_could_exit_under_is_recorded_without_a_checklist(diverging_bert, tmp_path):
    m = load_manifest(build(diverging_bert, tmp_path / "a", boundaries=[2], min_layer=4, progress=False))
    assert m.default_policy.enabled is False
    assert "no exit is possible under the build's policy (min_layer 4" in m.exit_check["failed"][0]


@pytest.mark.parametrize(
    "kwargs,enabled",
    [
        ({}, False),
        ({"exits": True}, True),
        ({"theta": 0.9}, True),
        ({"min_layer": 3}, True),
        ({"policy": {"theta": 0.9}}, True),
        ({"policy": {"patience": 1}}, False),
        ({"policy": ExitPolicy(theta=0.9, min_layer=2)}, True),
        ({"policy": ExitPolicy(theta=0.9, min_layer=2, enabled=False)}, False),
        ({"theta": 0.9, "exits": False}, False),
    ],
)
def test_exits_are_on_only_where_asked_for(diverging_art, kwargs, enabled):
    enc = EarlyExitEncoder(diverging_art, warn_exit_check=False, **kwargs)
    assert enc.policy.enabled is enabled
    enc.policy = {"theta": 0.8}  # a theta assigned later is a request too
    assert enc.policy.enabled is True


def test_exits_must_be_a_bool_or_none(diverging_art):
    with pytest.raises(RuntimeInputError, match="exits must be True, False or None"):
        EarlyExitEncoder(diverging_art, exits="yes")


def test_exits_turned_on_for_a_failed_build_warn_once_per_process(tiny_artifacts, diverging_art):
    """One line naming the failed checks, at the first encoder that turns exits on; never for a build that passed."""
    program = textwrap.dedent(
        f"""
        import logging
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from trt_runtime import EarlyExitEncoder
        EarlyExitEncoder({str(diverging_art)!r})
        print("default: no warning", flush=True)
        enc = EarlyExitEncoder({str(diverging_art)!r}, exits=True)
        EarlyExitEncoder({str(diverging_art)!r}, theta=0.9).encode(["a", "b"])
        enc.policy = {{"theta": 0.7}}
        EarlyExitEncoder({str(tiny_artifacts["bert"])!r})
        """
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "exit-compatibility check" in line]
    assert len(warnings) == 1, run.stderr
    assert "NN@10 at layer" in warnings[0] and "exits are on (theta 0.95)" in warnings[0]


def test_encode_says_exits_are_off_and_turns_them_on_with_a_warning(diverging_art, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("one sentence\nanother sentence here\n", encoding="utf-8")
    cli = [
        sys.executable,
        "-m",
        "leap_export.cli",
        "encode",
        str(diverging_art),
        "--input",
        str(src),
    ]
    off = subprocess.run(
        [*cli, "--output", str(tmp_path / "a.npy")], capture_output=True, text=True, timeout=300
    )
    assert off.returncode == 0 and "exits off (full depth; --exits turns them on)" in off.stderr, off.stderr
    on = subprocess.run([*cli, "--output", str(tmp_path / "b.npy"), "--exits", "--exit-layers",
                         str(tmp_path / "b.json")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert on.returncode == 0, on.stderr
    assert on.stderr.count("failed its exit-compatibility check") == 1
    assert json.loads((tmp_path / "b.json").read_text())["policy"]["enabled"] is True


def test_build_and_inspect_print_the_decision(diverging_bert, tmp_path):
    cli = [sys.executable, "-m", "leap_export.cli"]
    art = tmp_path / "art"
    built = subprocess.run([*cli, "build", str(diverging_bert), "--out", str(art), "--min-layer", "2", "--no-progress"],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr
    shown = subprocess.run([*cli, "inspect", str(art)], capture_output=True, text=True, timeout=300)
    for out in (built.stdout, shown.stdout):
        flat = " ".join(out.split())
        assert "exits off" in flat and "exit check: FAILED. exits off by default: the model failed" in flat


def test_verify_reports_exit_quality_at_the_policy_it_verifies(diverging_art, tiny_artifacts, sentences):
    """Exits off: every sentence at full depth passes. Exits forced on a model that failed its check: the exited
    embeddings are far from full depth, verify fails and names the worst sentences."""
    passed = verify(diverging_art, sentences, progress=False)
    quality = {c.metric: c for c in passed.checks if c.name.startswith("exit quality")}
    assert set(quality) == {"mean_cosine", "p1_cosine", "nn_at_10"} and all(
        c.passed for c in quality.values()
    )
    assert passed.info["exit_quality"]["exited"] == 0
    lines: list[str] = []
    forced = verify(diverging_art, sentences, theta=0.3, progress=False, on_stage=lines.append)
    assert forced.info["policy"]["enabled"] is True and forced.info["exit_quality"]["exited"] > 0
    failed = [c for c in forced.failures if c.name.startswith("exit quality")]
    assert failed and not forced
    assert any("; worst: " in c.detail and "(layer " in c.detail for c in failed), [c.detail for c in failed]
    assert all(c.passed for c in forced.checks if not c.name.startswith("exit quality"))  # numerically right
    assert any(line.startswith("verify: reference: PyTorch on") and line.endswith(" s") for line in lines)
    assert set(forced.info["timing_s"]) >= {"segments, exits off", "monolithic graph", "exits and compaction"}
    good = verify(tiny_artifacts["bert"], sentences, progress=False)
    assert good and good.info["exit_quality"]["exited"] == len(sentences) + 2
    assert good.info["exit_quality"]["min_cosine"] > 0.999  # its layers barely move the embedding output
