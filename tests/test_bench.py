"""bench on a tiny model: every configuration timed in one run, derived ratios, int8 in the same rounds."""

import json
import shutil

import pytest

from leap_export.bench import FASTEMBED, ST, ST_ONNX, bench, markdown, save
from leap_export.errors import LeapError
from leap_export.export import build


def test_bench_reports_every_configuration_and_the_int8_build(tiny_artifacts, tmp_path, sentences):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], art)
    build(art, art, precision="int8", progress=False)  # adds the int8 variant to the existing build
    report = bench(
        art,
        sentences * 4,
        batch_sizes=(1, 4),
        warmup=2,
        iters=6,
        theta=0.5,
        baselines=False,
        also_variants=("int8",),
        breakdown=True,
        progress=False,
    )
    assert list(report["results"]) == ["1", "4"]
    assert list(report["also_variants"]) == ["int8"]
    with pytest.raises(LeapError, match="--also-variant fp32 is the build already being timed"):
        bench(
            art,
            sentences,
            batch_sizes=(1,),
            iters=1,
            baselines=False,
            also_variants=("fp32",),
            progress=False,
        )
    for row in report["results"].values():
        for name in ("monolithic", "segmented", "early exit", "monolithic [int8]", "early exit [int8]"):
            assert row[name]["mean_ms"] > 0 and row[name]["p50_ms"] <= row[name]["p99_ms"]
        m, e = row["monolithic"]["mean_ms"], row["early exit"]["mean_ms"]
        assert row["speedup"] == pytest.approx(m / e)
        assert row["realised_efficiency"] == pytest.approx(m / e / row["theoretical_speedup"])
        assert row["monitoring_overhead"] == pytest.approx(row["segmented"]["mean_ms"] / m - 1)
        one = row["one graph"]["mean_ms"]
        assert row["breakdown"] == pytest.approx(
            {"monitoring_ops": one / m - 1, "graph_breaks": row["segmented"]["mean_ms"] / one - 1}
        )
        v = row["variants"]["int8"]
        assert v["speedup_vs_primary_monolithic"] == pytest.approx(m / row["early exit [int8]"]["mean_ms"])
    assert 1 <= report["expected_layers"] <= report["num_layers"]
    assert report["theoretical_speedup"] == pytest.approx(report["num_layers"] / report["expected_layers"])
    table = markdown(report)
    assert "| 4 | int8 |" in table and "monitoring overhead" in table and "graph breaks" in table
    assert report["backend"] == "onnxruntime-cpu" and "backend onnxruntime-cpu, " in table
    assert report["timer"] == "perf_counter" and "host's clock (time.perf_counter)" in report["timer_reason"]
    assert report["cuda_graphs"] is False and "CUDA events" not in table
    paths = save(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["results"]["1"]["variants"]["int8"]
    assert paths["plot"].stat().st_size > 0 and paths["markdown"].read_text() == table


def test_bench_names_a_missing_build(tiny_artifacts, sentences):
    from trt_runtime.errors import ArtifactError

    with pytest.raises(ArtifactError, match="int8"):
        bench(
            tiny_artifacts["bert"],
            sentences,
            batch_sizes=(1,),
            warmup=1,
            iters=1,
            baselines=False,
            also_variants=("int8",),
            progress=False,
        )


def test_bench_blocks_schedule(tiny_artifacts, sentences):
    report = bench(
        tiny_artifacts["bert"],
        sentences,
        batch_sizes=(2,),
        warmup=1,
        iters=7,
        theta=0.5,
        baselines=False,
        schedule="blocks",
        progress=False,
    )
    assert report["schedule"] == "blocks"
    assert all(report["results"]["2"][c]["n"] == 7 for c in ("monolithic", "segmented", "early exit"))
    assert "blocks" in markdown(report)
    with pytest.raises(ValueError, match="round-robin"):
        bench(
            tiny_artifacts["bert"],
            sentences,
            batch_sizes=(1,),
            warmup=1,
            iters=1,
            baselines=False,
            schedule="random",
            progress=False,
        )


@pytest.mark.parametrize("kwargs", [{"batch_sizes": ()}, {"batch_sizes": (0,)}, {"iters": 0}, {"warmup": -1}])
def test_bench_rejects_empty_sizes_and_counts(tiny_artifacts, sentences, kwargs):
    args = {"batch_sizes": (1,), "warmup": 1, "iters": 1, **kwargs}
    with pytest.raises(ValueError, match="batch_sizes|iters"):
        bench(tiny_artifacts["bert"], sentences, baselines=False, progress=False, **args)


@pytest.mark.parametrize("texts", [["", "  \t"], "one string"])
def test_bench_rejects_blank_sentences_and_a_bare_string(tiny_artifacts, texts):
    """Blank strings only ended in ZeroDivisionError after every session loaded; a string was timed
    character by character."""
    with pytest.raises(ValueError, match="blank|one string"):
        bench(
            tiny_artifacts["bert"],
            texts,
            batch_sizes=(1,),
            warmup=0,
            iters=1,
            baselines=False,
            progress=False,
        )


def test_bench_in_fresh_processes_reports_medians_and_ranges(tiny_artifacts, sentences, tmp_path, caplog):
    import logging

    from leap_export.bench import bench_processes

    with caplog.at_level(logging.WARNING, logger="leap_export"):
        report = bench_processes(
            tiny_artifacts["bert"],
            sentences[:2],
            processes=2,
            batch_sizes=(1, 3),
            warmup=1,
            iters=4,
            theta=0.5,
            baselines=False,
            breakdown=True,
            progress=False,
        )
    assert report["processes"] == 2 and len(report["runs"]) == 2
    # each worker warned "only 2 sentences": the parent logs it once, through its own handlers
    assert [r.getMessage() for r in caplog.records].count(
        "only 2 sentences: a batch of 3 repeats them, so E[layers] and the speedups describe these few "
        "sentences; pass --sentences with at least 3 lines"
    ) == 1
    for b, row in report["results"].items():
        runs = [r[b] for r in report["runs"]]
        for key in ("speedup", "realised_efficiency", "monitoring_overhead"):
            vals = [r[key] for r in runs]
            assert row[key] == pytest.approx(sorted(vals)[0] / 2 + sorted(vals)[1] / 2)  # median of two
            assert row["spread"][key] == {"min": min(vals), "max": max(vals)}
        assert row["monolithic"]["mean_ms"] == pytest.approx(
            sum(r["monolithic"]["mean_ms"] for r in runs) / 2
        )
        assert row["monolithic"]["n"] == 8
        assert "breakdown.graph_breaks" in row["spread"]
    table = markdown(report)
    assert "Median over 2 fresh processes" in table and "x to " in table
    # medians taken one figure at a time: the table says a ratio is not the ratio of the printed timings
    assert "need not equal the ratio of the printed timings" in table
    assert json.loads(save(report, tmp_path / "out")["json"].read_text())["processes"] == 2
    with pytest.raises(ValueError, match="processes"):
        bench_processes(tiny_artifacts["bert"], sentences, processes=0)


def test_bench_times_sentence_transformers_next_to_our_encode(tiny_artifacts, sentences):
    """PyTorch always (the [train] extra); the ONNX backend and fastembed where optimum and fastembed are
    installed (`make st-onnx`)."""
    report = bench(
        tiny_artifacts["bert"], sentences, batch_sizes=(2,), warmup=1, iters=3, theta=0.5, progress=False
    )
    row = report["results"]["2"]
    ours = row["early exit (encode)"]["mean_ms"]
    assert ST not in report["baseline_errors"]
    assert row["speedup_vs_sentence_transformers"] == pytest.approx(row[ST]["mean_ms"] / ours)
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        assert "optimum" in report["baseline_errors"][ST_ONNX] and ST_ONNX not in row
    else:
        assert ST_ONNX not in report["baseline_errors"], report["baseline_errors"]
        assert row["speedup_vs_sentence_transformers_onnx"] == pytest.approx(row[ST_ONNX]["mean_ms"] / ours)
    try:
        import fastembed  # noqa: F401
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        assert FASTEMBED not in row and "not installed" in report["baseline_errors"][FASTEMBED]
    else:  # loaded, and agreed with sentence-transformers (else it would be an error, not a row)
        assert FASTEMBED not in report["baseline_errors"], report["baseline_errors"]
        assert row["speedup_vs_fastembed"] == pytest.approx(row[FASTEMBED]["mean_ms"] / ours)
    table = markdown(report)
    assert "| vs ST |" in table and ("vs ST ONNX" in table) == (ST_ONNX in row)
    assert ("vs fastembed" in table) == (FASTEMBED in row)


def test_bench_e_layers_and_efficiency_describe_the_timed_batches(tiny_artifacts, sentences):
    """At batch 1 only the first few batches are timed (iters 3 here: one batch per timed run, at most as many as the set holds):
    E[layers] and the realised efficiency must come from those batches, not from the whole sentence set."""
    import numpy as np

    from trt_runtime.encoder import EarlyExitEncoder

    texts = [s for s in sentences if s.strip()]
    theta = 0.99986  # the tiny model's scores: a few sentences exit at layer 2, most run to layer 4
    probe = EarlyExitEncoder(tiny_artifacts["bert"], theta=theta, check_files=False)
    layers = probe.encode_with_exits(texts, batch_size=1).exit_layers
    order = np.argsort(layers, kind="stable")  # the early exits first: they are the ones timed at batch 1
    texts = [texts[i] for i in order]
    assert len(set(layers.tolist())) > 1, "the test needs sentences that exit at different layers"

    report = bench(
        tiny_artifacts["bert"],
        texts,
        batch_sizes=(1,),
        warmup=1,
        iters=3,
        theta=theta,
        baselines=False,
        progress=False,
    )
    row = report["results"]["1"]
    timed = probe.encode_with_exits(texts[:3], batch_size=1).exit_layers  # iters 3: batches 0, 1, 2
    assert row["expected_layers"] == pytest.approx(timed.mean())
    assert row["expected_layers"] != pytest.approx(report["expected_layers"])  # the whole set differs
    assert row["sentences_timed"] == 3
    theoretical = report["num_layers"] / row["expected_layers"]
    assert row["theoretical_speedup"] == pytest.approx(theoretical)
    assert row["realised_efficiency"] == pytest.approx(row["speedup"] / theoretical)
    assert f"{row['expected_layers']:.2f} (3)" in markdown(report)


def test_bench_blocks_schedule_e_layers_follow_its_timed_batches(tiny_artifacts, sentences):
    """blocks times batches i..i+19 of each block (after its settle runs): E[layers] is weighted as they were
    timed, here batches 0, 1, 2 of 4."""
    import numpy as np

    from leap_export.bench import _batches
    from trt_runtime.encoder import EarlyExitEncoder

    texts = [s for s in sentences if s.strip()]
    theta = 0.99986
    report = bench(
        tiny_artifacts["bert"],
        texts,
        batch_sizes=(3,),
        warmup=0,
        iters=3,
        theta=theta,
        baselines=False,
        schedule="blocks",
        progress=False,
    )
    probe = EarlyExitEncoder(tiny_artifacts["bert"], theta=theta, check_files=False)
    batches = _batches(texts, 3, 3)  # 10 sentences, batch 3, 3 iterations: batches 0, 1, 2 timed once each
    timed = np.concatenate([probe.encode_with_exits(batches[j], batch_size=3).exit_layers for j in range(3)])
    assert report["results"]["3"]["expected_layers"] == pytest.approx(timed.mean())


def test_bench_refuses_cuda_graphs_on_the_cpu(tiny_artifacts, sentences):
    with pytest.raises(
        LeapError,
        match=r"--cuda-graphs needs a GPU backend \(onnxruntime-cuda or tensorrt\); "
        "this bench runs on onnxruntime-cpu",
    ):
        bench(
            tiny_artifacts["bert"],
            sentences,
            batch_sizes=(1,),
            iters=1,
            baselines=False,
            cuda_graphs=True,
            progress=False,
        )


@pytest.mark.parametrize("schedule", ["round-robin", "blocks"])
def test_the_timing_loops_time_each_call_with_the_timer_given(schedule):
    """A GPU backend's CUDA-event timer replaces the host's clock for every timed call (not the settle runs)."""
    from leap_export.bench import _time_blocks, _time_interleaved

    calls = []

    def timer(fn, x):
        fn(x)
        return 0.25 + x

    configs = {"a": lambda x: calls.append(("a", x)), "b": lambda x: calls.append(("b", x))}
    inputs = dict.fromkeys(configs, [0, 1, 2])
    if schedule == "blocks":
        times = _time_blocks(configs, inputs, warmup=0, iters=3, block=3, settle=1, settle_s=0.0, timer=timer)
    else:
        times = _time_interleaved(configs, inputs, warmup=1, iters=3, progress=None, timer=timer)
    assert times == {"a": [0.25, 1.25, 2.25], "b": [0.25, 1.25, 2.25]}


def test_time_blocks_settles_for_its_time_and_times_the_same_inputs_everywhere():
    """Each block runs untimed for at least settle runs and settle_s seconds (another pool's spin tail), then
    times the same inputs, in the same order, for every configuration."""
    import time

    from leap_export.bench import _time_blocks

    log = []

    def config(name, cost):
        def run(x):
            log.append((name, x, time.perf_counter()))
            time.sleep(cost)

        return run

    configs = {"slow": config("slow", 0.004), "fast": config("fast", 0.0)}
    inputs = dict.fromkeys(configs, list(range(7)))
    timed = []
    times = _time_blocks(configs, inputs, warmup=0, iters=6, block=4, settle=2, settle_s=0.05, timed=timed)
    assert [len(t) for t in times.values()] == [6, 6]
    assert timed == [0, 1, 2, 3, 4, 5]
    # the blocks, in order: slow, fast, slow, fast; each = settle runs, then its timed runs
    runs = [[x for n, x, _ in log if n == name] for name in configs]
    blocks = []
    for entry in log:
        if not blocks or blocks[-1][0] != entry[0]:
            blocks.append((entry[0], []))
        blocks[-1][1].append(entry)
    assert [b[0] for b in blocks] == ["slow", "fast", "slow", "fast"]
    for k, (_name, entries) in enumerate(blocks):
        n_timed = 4 if k < 2 else 2
        settle = entries[:-n_timed]
        assert len(settle) >= 2
        assert entries[-n_timed][2] - entries[0][2] >= 0.05  # the first timed run starts after settle_s
        assert [x for _, x, _ in entries[-n_timed:]] == [(4 * (k // 2) + j) % 7 for j in range(n_timed)]
    assert len(runs[1]) > len(runs[0])  # the fast one needed more settle runs to fill the same time


def test_bench_times_sentence_transformers_with_the_same_thread_count(tiny_artifacts, sentences, monkeypatch):
    """--threads applies to the PyTorch baseline too (torch otherwise uses every core)."""
    import torch
    from sentence_transformers import SentenceTransformer

    seen = []
    encode = SentenceTransformer.encode

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bench(
            tiny_artifacts["bert"],
            sentences,
            batch_sizes=(2,),
            warmup=1,
            iters=1,
            theta=0.5,
            threads=1,
            progress=False,
        )
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)


def test_bench_plot_leaves_the_callers_matplotlib_backend_alone():
    """plot_png draws on a bare Figure (as leap_export.plots does): it used to switch pyplot to Agg."""
    import matplotlib

    from leap_export.bench import plot_png

    stats = {"mean_ms": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "std_ms": 0.0, "n": 1}
    report = {
        "model": "m",
        "expected_layers": 3.0,
        "num_layers": 6,
        "policy": {"theta": 0.95},
        "results": {"1": {c: dict(stats) for c in ("monolithic", "segmented", "early exit")}},
    }
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        assert plot_png(report).startswith(b"\x89PNG")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_bench_e_layers_weight_a_batch_by_how_often_it_was_timed(tiny_artifacts, sentences):
    """iters 6 over 4 batches times batches 0, 1, 2, 3, 0, 1: batches 0 and 1 count twice in E[layers]."""
    import numpy as np

    from leap_export.bench import _batches
    from trt_runtime.encoder import EarlyExitEncoder

    texts = [s for s in sentences if s.strip()]
    theta = 0.99986
    probe = EarlyExitEncoder(tiny_artifacts["bert"], theta=theta, check_files=False)
    layers = probe.encode_with_exits(texts, batch_size=1).exit_layers
    texts = [texts[i] for i in np.argsort(layers, kind="stable")]  # the early exits in the first batches
    report = bench(
        tiny_artifacts["bert"],
        texts,
        batch_sizes=(3,),
        warmup=0,
        iters=6,
        theta=theta,
        baselines=False,
        progress=False,
    )
    batches = _batches(texts, 3, 4)
    per_batch = [probe.encode_with_exits(b, batch_size=3).exit_layers for b in batches]
    weighted = np.concatenate([per_batch[k] for k in (0, 1, 2, 3, 0, 1)]).mean()
    assert weighted != pytest.approx(np.concatenate(per_batch).mean())  # the weighting matters here
    assert report["results"]["3"]["expected_layers"] == pytest.approx(weighted)


def test_timing_stats_are_the_named_percentiles():
    from leap_export.bench import _stats

    got = _stats([t / 1000 for t in range(1, 101)])  # 1..100 ms
    assert got["p50_ms"] == pytest.approx(50.5) and got["p99_ms"] == pytest.approx(99.01)
    assert got["mean_ms"] == pytest.approx(50.5) and got["n"] == 100


def test_bench_times_each_host_loop_with_its_own_baseline(tiny_artifacts, sentences):
    """The monolithic baseline runs in the same ONNX Runtime copy as the segments: the C library's with the
    C loop, the Python binding's with the Python loop (two copies would be two spinning pools)."""
    from trt_runtime import native
    from trt_runtime.native import NativeRunner
    from trt_runtime.runners import OrtRunner

    loops = ["python"] + (["native"] if native.extension_path() is not None else [])
    for loop in loops:
        report = bench(
            tiny_artifacts["mpnet"],
            sentences,
            batch_sizes=(1,),
            warmup=1,
            iters=3,
            baselines=False,
            breakdown=True,
            loop=loop,
            progress=False,
        )
        assert report["host_loop"] == loop and f"{loop} host loop" in markdown(report)
        assert report["results"]["1"]["one graph"]["mean_ms"] > 0
    from trt_runtime import EarlyExitEncoder

    runner = EarlyExitEncoder(tiny_artifacts["mpnet"], loop=loops[-1]).monolithic_runner()
    assert isinstance(runner, NativeRunner if loops[-1] == "native" else OrtRunner)
