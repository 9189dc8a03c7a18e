"""The user scripts and the benchmarks run end to end on a tiny build and report what they say they report."""

from __future__ import annotations

import json
import math
import os
import re
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
        "benchmarks/overhead_spread.py",
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
        "benchmarks/overhead_spread.py",
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


def test_benchmark_refuses_bad_input_before_timing(tiny_artifacts, tmp_path):
    # one argparse line (exit 2), no traceback, no table of nan, nothing measured first
    art = str(tiny_artifacts["bert"])
    cases = [
        (["benchmarks/overhead_spread.py", art, "--processes", "0"], "must be at least 1"),
        (["benchmarks/overhead_spread.py", art, "--blocks", "0"], "must be at least 1"),
        (["benchmarks/overhead_spread.py", art, "--json", str(tmp_path)], "--json: "),
        (["benchmarks/overhead_spread.py", art, "--json", str(tmp_path / "no" / "x.json")], "does not exist"),
        (["benchmarks/overhead_spread.py", str(tmp_path / "nope")], "nope"),
    ]
    for args, message in cases:
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and message in res.stderr, (args, res.stdout + res.stderr)
        assert "Traceback" not in res.stderr and res.stdout == "", args


def test_benchmarks_run_from_any_folder(tiny_artifacts, tmp_path):
    # benchmarks/_checks.py is found beside the script, whatever the working folder
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "overhead_spread.py"),
            str(tiny_artifacts["bert"]),
            "--blocks",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "must be at least 1" in res.stderr, res.stderr


def test_benchmarks_use_only_the_public_runtime_api():
    """No ``obj._private`` attribute and no ``_private`` name imported from the packages: the benchmarks
    must keep working as the runtime's internals change."""
    import ast

    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert scripts
    found = []
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                "trt_runtime",
                "leap_export",
            ):
                found += [
                    f"{path.name}:{node.lineno}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") or any(part.startswith("_") for part in node.module.split("."))
                ]
    assert not found, found


def test_demo_report_runs_from_any_folder_and_names_a_wrong_one(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_report.py"), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and "lacks verify.json" in res.stderr and "Traceback" not in res.stderr


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
        "PASSAGES": "0",  # the sentence corpus alone (the default mixes in the passage corpus under runs/)
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
        assert result["heldout_sentences"] > 0 and 2 <= result["mean_layers"] <= 6
        assert list(result["cumulative_exit_rate"]) == ["2", "3", "4", "5"]  # the default: exits from layer 2
    config = json.loads((tmp_path / "run" / "leap_config.json").read_text())["config"]
    assert config["min_layer"] == 2 and config["late_layers"] == 5  # L_late over layers 1-5
    assert "at step 2 of 2" in res.stderr  # the second run resumed the finished one


def test_int8_options_compares_quantisations_and_cpus(tiny_artifacts, tmp_path):
    """Each option quantised and scored against fp32; the shipped recipe is export's own; a second run with
    ``--compare`` on the same CPU finds the same embeddings (difference 0), as a second CPU should for
    ``shipped``."""
    art = str(tiny_artifacts["bert"])
    saved = tmp_path / "saved"
    _run(
        "benchmarks/int8_options.py",
        art,
        "--work",
        str(tmp_path / "w"),
        "--options",
        "shipped,s8,qdq",
        "--save",
        str(saved),
    )
    assert {p.name for p in saved.iterdir()} == {"fp32.npz", "shipped.npz", "s8.npz", "qdq.npz"}
    out_json = tmp_path / "o.json"
    out = _run(
        "benchmarks/int8_options.py",
        art,
        "--work",
        str(tmp_path / "w"),
        "--options",
        "shipped,s8",
        "--no-timing",
        "--compare",
        str(saved),
        "--json",
        str(out_json),
    )
    assert "| shipped |" in out and "| s8 |" in out
    rows = {r["option"]: r for r in json.loads(out_json.read_text())["rows"]}
    for row in rows.values():
        assert 0.5 < row["probe_b1"] <= 1.0 + 1e-6 and row["same"] == 0.0
        assert "time_b1" not in row  # --no-timing
    res = subprocess.run(
        [sys.executable, "benchmarks/int8_options.py", art, "--work", str(tmp_path / "w"), "--options", "s9"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "--options: unknown s9" in res.stderr


def test_train_minilm_recipe_with_passages_mixes_them_in_grouped_batches(tmp_path):
    # PASSAGES=1 at toy size: SENTENCES sentences of CORPUS then every training text of PCORPUS, length-grouped.
    import os

    sentences = [
        f"Sentence number {i} says something plain about topic {i % 7} in English." for i in range(60)
    ]
    passages = [
        f"Passage {i} runs longer. It has a second sentence about subject {i % 5}. And a third one ends it here."
        for i in range(20)
    ]
    for name, lines in (("sentences", sentences), ("passages", passages)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        _run("-m", "leap_export.cli", "corpus", "--out", str(tmp_path / name), "--file", str(tmp_path / f"{name}.txt"),
             "--no-debian", "--test-fraction", "0.2", "--no-progress")  # fmt: skip
    env = {
        **os.environ,
        "PY": sys.executable,
        "PASSAGES": "1",
        "GROUP": "2",
        "MIN_LAYER": "",  # empty: the trainer's default, half the layers (the recipe before: exits from layer 3)
        "LATE_LAYERS": "4",
        "STEPS": "3",
        "BATCH": "4",
        "SENTENCES": "8",
        "CORPUS": str(tmp_path / "sentences"),
        "PCORPUS": str(tmp_path / "passages"),
        "OUT": str(tmp_path / "run"),
        "LEAP_EXPORT_CACHE": str(tmp_path / "cache"),
    }
    res = subprocess.run(
        ["bash", "scripts/train_minilm.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout + res.stderr
    mix = (tmp_path / "passages" / "mix-8.txt").read_text(encoding="utf-8").splitlines()
    trained_passages = (tmp_path / "passages" / "train.txt").read_text(encoding="utf-8").splitlines()
    assert (
        mix
        == (tmp_path / "sentences" / "train.txt").read_text(encoding="utf-8").splitlines()[:8]
        + trained_passages
    )
    record = json.loads((tmp_path / "run" / "leap_config.json").read_text())
    assert record["config"]["group_by_length"] == 2 and record["corpus"]["sentences"] == len(mix)
    assert record["config"]["min_layer"] is None and record["config"]["late_layers"] == 4
    result = json.loads((tmp_path / "run" / "exit_eval.json").read_text())
    assert list(result["cumulative_exit_rate"]) == ["3", "4", "5"] and 3 <= result["mean_layers"] <= 6


def test_demo_leap_report_names_a_wrong_folder(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo_leap_report.py"), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and "lacks verify.json" in res.stderr and "Traceback" not in res.stderr


def test_gpu_checks_runs_on_a_cpu_and_says_what_did_not_run(tiny_bert, tmp_path, sentences):
    """scripts/gpu_checks.sh, the one script a lent GPU machine runs, here without a GPU: the environment is
    recorded, the gpu tests skip, the build, fp16 variant and verify run, and the GPU bench says why it did not."""
    texts = tmp_path / "sentences.txt"
    texts.write_text("\n".join(sentences) + "\n")
    results = tmp_path / "results"
    res = subprocess.run(
        ["bash", "scripts/gpu_checks.sh", str(results), str(tiny_bert), str(texts)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PY": sys.executable},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = (results / "summary.txt").read_text()
    for step in ("tests marked gpu: exit 0", "build fp32: exit 0", "build fp16: exit 0", "verify fp16"):
        assert step in summary
    assert re.search(r"^=+ \d+ skipped, \d+ deselected", summary, re.M)  # no GPU: every gpu test skipped
    assert "bench onnxruntime-cuda: not run: the installed onnxruntime" in summary
    env = (results / "env.txt").read_text()
    assert "onnxruntime-cuda: the installed onnxruntime" in env and "python 3." in env
    report = json.loads((results / "verify-fp16.json").read_text())
    assert report["backends"]["onnxruntime-cpu"]["ran"] is True
    assert report["backends"]["onnxruntime-cuda"]["ran"] is False
    bad = subprocess.run(
        ["bash", "scripts/gpu_checks.sh", str(results), str(tiny_bert)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "MODEL needs SENTENCES too" in bad.stderr
