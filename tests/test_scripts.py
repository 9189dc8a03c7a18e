"""The measurement scripts run end to end on a tiny build and report what they say they report."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_overhead_spread(tiny_artifacts, tmp_path):
    out_json = tmp_path / "spread.json"
    out = _run(
        "scripts/overhead_spread.py",
        str(tiny_artifacts["bert"]),
        "--processes",
        "2",
        "--blocks",
        "2",
        "--rows",
        "6",
        "--json",
        str(out_json),
    )
    rows = [line for line in out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 2
    data = json.loads(out_json.read_text())
    assert len(data["processes"]) == 2
    for proc in data["processes"]:
        assert len(proc["ratios"]) == 2 and all(math.isfinite(r) and r > 0 for r in proc["ratios"])
        assert all(m > 0 for m in proc["monolithic_ms"] + proc["segmented_ms"])
    s = data["summary"]
    assert s["processes"] == 2 and s["min"] <= s["median"] <= s["max"]
    assert f"median {s['median']:+.1%}" in out
    assert s["loop"] == data["processes"][0]["loop"] and s["loop"] in ("native", "python")


def test_overhead_spread_pairs_the_two_host_loops(tiny_artifacts, tmp_path):
    from trt_runtime import native

    if native.extension_path() is None:
        pytest.skip("the C extension is not built here")
    out_json = tmp_path / "paired.json"
    out = _run(
        "scripts/overhead_spread.py",
        str(tiny_artifacts["mpnet"]),
        "--processes",
        "2",
        "--blocks",
        "2",
        "--rows",
        "6",
        "--loop",
        "both",
        "--json",
        str(out_json),
    )
    rows = [line for line in out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 2
    data = json.loads(out_json.read_text())
    for loop in ("native", "python"):
        assert [p["loop"] for p in data["processes"][loop]] == [loop, loop]
        s = data["summary"][loop]
        assert s["processes"] == 2 and s["min"] <= s["median"] <= s["max"]
    lower = sum(
        c["median"] < p["median"]
        for c, p in zip(data["processes"]["native"], data["processes"]["python"], strict=True)
    )
    assert data["summary"]["native_lower"] == lower
    assert f"C loop lower in {lower} of 2 rounds" in out


def test_host_loop_cost(tiny_artifacts):
    out = _run(
        "scripts/host_loop_cost.py", str(tiny_artifacts["mpnet"]), "--batch-sizes", "1,3", "--rounds", "2"
    )
    rows = [line.split("|") for line in out.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r[1]) for r in rows] == [1, 3]
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0 and math.isfinite(float(r[4]))


def test_handoff_cost(tiny_artifacts, tmp_path):
    out_json = tmp_path / "handoff.json"
    out = _run(
        "scripts/handoff_cost.py",
        str(tiny_artifacts["bert"]),
        "--rows",
        "4",
        "--rounds",
        "2",
        "--flush-mb",
        "1",
        "--json",
        str(out_json),
    )
    data = json.loads(out_json.read_text())
    us = data["median_us"]
    assert set(us) == {"monolithic", "chain", "monolithic, flushed", "chain, flushed"}
    assert all(math.isfinite(v) and v > 0 for v in us.values())
    assert (
        data["handoffs"]
        == len(json.loads((tiny_artifacts["bert"] / "manifest.json").read_text())["segments"]) - 1
    )
    h = data["handoffs_us"]
    assert h["warm"] == us["chain"] - us["monolithic"]
    assert h["flushed"] == us["chain, flushed"] - us["monolithic, flushed"]
    assert f"{data['handoffs']} hand-offs: {h['warm']:+.1f} us warm" in out
    rows = [
        line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| configuration")
    ]
    assert len(rows) == 4


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_c_host_loop(tiny_artifacts, tmp_path, arch):
    # the C chain must compute the runtime's exit scores (the script refuses to time otherwise), then time
    out_json = tmp_path / "c.json"
    out = _run(
        "scripts/c_host_loop.py",
        str(tiny_artifacts[arch]),
        "--rounds",
        "2",
        "--blocks",
        "2",
        "--rows",
        "6",
        "--threads",
        "1",
        "--json",
        str(out_json),
    )
    parity = re.search(
        r"parity: the C chain's exit scores match the runtime's on 6 sentences \(max abs diff (\S+)\)", out
    )
    assert parity and float(parity.group(1)) <= 1e-4, out
    data = json.loads(out_json.read_text())
    assert data["threads"] == 1 and data["rows"] == 6 and len(data["rounds"]) == 2
    for row in data["rounds"]:
        for host in ("python", "c"):
            assert len(row[host]["ratios"]) == 2 and all(
                math.isfinite(r) and r > 0 for r in row[host]["ratios"]
            )
            assert all(m > 0 for m in row[host]["monolithic_ms"] + row[host]["segmented_ms"])
    for host, label in (("python", "Python host"), ("c", "C host")):
        s = data["summary"][host]
        assert s["min"] <= s["median"] <= s["max"]
        assert f"{label}: median {s['median']:+.1%}" in out
    assert f"C lower than Python in {data['c_lower_in']} of 2 rounds" in out


def test_handoff_cost_rejects_bad_settings(tiny_artifacts):
    res = subprocess.run(
        [sys.executable, "scripts/handoff_cost.py", str(tiny_artifacts["bert"]), "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "--rounds >= 2" in res.stderr


def test_scripts_refuse_bad_input_before_timing(tiny_artifacts, tmp_path):
    # one argparse line (exit 2), no traceback, no table of nan, nothing measured first
    art = str(tiny_artifacts["bert"])
    cases = [
        (["scripts/host_loop_cost.py", art, "--rounds", "1"], "--rounds must be at least 2"),
        (["scripts/host_loop_cost.py", art, "--batch-sizes", "0"], "must be at least 1"),
        (["scripts/host_loop_cost.py", art, "--batch-sizes", "1,5000"], "larger than the"),
        (["scripts/host_loop_cost.py", str(tmp_path / "nope")], "is not a folder"),
        (["scripts/overhead_spread.py", art, "--processes", "0"], "must be at least 1"),
        (["scripts/overhead_spread.py", art, "--blocks", "0"], "must be at least 1"),
        (["scripts/overhead_spread.py", art, "--json", str(tmp_path)], "--json: "),
        (["scripts/handoff_cost.py", art, "--json", str(tmp_path)], "--json: "),
        (["scripts/handoff_cost.py", str(tmp_path / "nope")], "is not a folder"),
        (["scripts/c_host_loop.py", art, "--rounds", "0"], "must be at least 1"),
        (["scripts/c_host_loop.py", art, "--json", str(tmp_path)], "--json: "),
        (["scripts/c_host_loop.py", str(tmp_path / "nope")], "is not a folder"),
    ]
    for args, message in cases:
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and message in res.stderr, (args, res.stdout + res.stderr)
        assert "Traceback" not in res.stderr and res.stdout == "", args


def test_demo_report_runs_from_any_folder_and_names_a_wrong_one(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_report.py"), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and "lacks verify.json" in res.stderr and "Traceback" not in res.stderr


def test_handoff_cost_on_the_int8_variant(tiny_artifacts, tmp_path):
    from leap_export.export import build

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], art)
    build(art, art, precision="int8", progress=False)
    out_json = tmp_path / "handoff.json"
    _run(
        "scripts/handoff_cost.py",
        str(art),
        "--variant",
        "int8",
        "--rows",
        "3",
        "--rounds",
        "2",
        "--flush-mb",
        "1",
        "--json",
        str(out_json),
    )
    data = json.loads(out_json.read_text())
    assert data["variant"] == "int8" and all(v > 0 for v in data["median_us"].values())
    res = subprocess.run(
        [sys.executable, "scripts/handoff_cost.py", str(art), "--variant", "int4", "--rows", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "int4" in res.stderr


def test_train_minilm_recipe_runs_fresh_and_again(tmp_path):
    # The recipe at toy size: a fresh OUT (train refuses --resume there), then again on the finished run.
    import os

    lines = [f"Sentence number {i} says something plain about topic {i % 7} in English." for i in range(200)]
    (tmp_path / "mine.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = tmp_path / "corpus"
    _run(
        "-m",
        "leap_export.cli",
        "corpus",
        "--out",
        str(corpus),
        "--file",
        str(tmp_path / "mine.txt"),
        "--no-debian",
        "--test-fraction",
        "0.2",
        "--no-progress",
    )
    env = {
        **os.environ,
        "PY": sys.executable,
        "STEPS": "2",
        "BATCH": "4",
        "SENTENCES": "8",
        "CORPUS": str(corpus),
        "OUT": str(tmp_path / "run"),
        "LEAP_EXPORT_CACHE": str(tmp_path / "cache"),
    }
    for _ in range(2):
        res = subprocess.run(
            ["bash", "scripts/train_minilm.sh"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        result = json.loads((tmp_path / "run" / "exit_eval.json").read_text())
        assert result["heldout_sentences"] > 0 and 3 <= result["mean_layers"] <= 6
    assert "at step 2 of 2" in res.stderr  # the second run resumed the finished one
