"""Latency benchmark: every configuration measured side by side in one run, interleaved.

Configurations (same sentences, same batches, same ONNX Runtime session settings):

- ``monolithic``: the full-depth single graph (no monitoring);
- ``segmented``: the segment chain with exits disabled (monitoring cost only);
- ``early exit``: the segment chain with the exit policy and per-sample compaction;
- ``one graph`` (``breakdown=True``): every segment composed into one graph that computes every exit
  head and cannot exit (``leap_export.merge``). It splits the monitoring overhead into the cost of the
  monitoring ops (one graph / monolithic) and the cost of the graph breaks (segmented / one graph);
- ``sentence-transformers``: ``SentenceTransformer.encode`` on PyTorch (end to end, tokenisation
  included), next to ``early exit (encode)``, our ``encode`` end to end, for a like-for-like comparison;
- ``sentence-transformers (ONNX)``: the same with ``backend="onnx"``, where optimum is installed
  (``sentence-transformers[onnx]``, which needs transformers < 4.58). Its ONNX Runtime session gets
  this tool's session settings (``ort_session_options``: the shared thread pool and arena), as ONNX
  Runtime requires of every session in a process that runs the shared pool.
  These are timed in alternating blocks rather than round-robin (see ``_time_blocks``).

Every iteration runs each configuration once (A B C A B C ...), so machine noise hits all of them alike.
Each configuration then starts with caches its rivals have just filled with their own weights. A
service runs one pipeline over and over, with its own weights cache-warm: ``schedule="blocks"`` times
that steady state instead (alternating blocks of 20 timed runs per configuration, each after at least 5
untimed runs and 0.1 s).
One run is one draw: at batch 1 the monitoring overhead moves by a few points between processes.
``bench_processes`` (``leap-export bench --processes N``) repeats the whole bench in N fresh processes
and reports medians with their range.

Derived figures follow the paper (Table 7, Appendix A.4): speedup = monolithic / early exit, theoretical
= L / E[layers], realised efficiency = speedup / theoretical, monitoring overhead = segmented /
monolithic - 1. A batch size times min(iters, batches in the set) distinct batches, so each timed run
is a different batch where the set allows it (batch 1 at 200 iterations: the first 200 sentences), and its
E[layers] is that of the batches it timed, weighted as they were timed; the report's top-level
``expected_layers`` is the whole sentence set's. PyTorch runs on ``threads`` threads, as ONNX Runtime does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from leap_export.errors import LeapError
from trt_runtime.fileio import atomic_write, ensure_parent, json_bytes

log = logging.getLogger(__name__)

SCHEDULES = ("round-robin", "blocks")
GPU_BACKENDS = ("onnxruntime-cuda", "tensorrt")
CAPTURE_CALLS = 5  # calls of one shape before every GPU backend replays its CUDA graph
ST, ST_ONNX = "sentence-transformers", "sentence-transformers (ONNX)"
FASTEMBED = "fastembed"  # ONNX Runtime's embedding library, on the same ONNX export as ST_ONNX
OURS_ENCODE = "early exit (encode)"  # our encode end to end, timed next to the ST baselines
PAPER = {  # LEAP paper, Table 7 and §5.3 (NVIDIA L4, fp16)
    "speedup": {1: 1.61, 8: 1.32, 32: 1.24},
    "realised_efficiency_b1": 0.806,
    "monitoring_overhead": 0.222,
}


def _stats(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1e3
    return {
        "mean_ms": float(a.mean()),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "std_ms": float(a.std()),
        "n": int(a.size),
    }


def _batches(items: list, batch_size: int, count: int) -> list[list]:
    """``count`` batches drawn cyclically from ``items`` (deterministic, same for every configuration)."""
    out, pos = [], 0
    for _ in range(count):
        batch = [items[(pos + i) % len(items)] for i in range(batch_size)]
        pos = (pos + batch_size) % len(items)
        out.append(batch)
    return out


def wall_timer(fn: Callable[[Any], Any], x: Any) -> float:
    """Seconds ``fn(x)`` took on the host's clock (``time.perf_counter``)."""
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def _time_interleaved(
    configs: dict[str, Callable[[Any], Any]],
    inputs: dict[str, list],
    warmup: int,
    iters: int,
    progress,
    timed: list[int] | None = None,
    timer: Callable[[Callable[[Any], Any], Any], float] = wall_timer,
) -> dict[str, list[float]]:
    """Round-robin: iteration i runs every configuration once, so machine noise hits all of them alike.

    ``timed`` (a list) receives the index of the input behind each timed sample (the same for every
    configuration), so figures derived from the inputs can be weighted exactly as the timings are.
    ``timer(fn, x)`` times one call (the host's clock, or CUDA events on a GPU backend).
    """
    for i in range(warmup):
        for name, fn in configs.items():
            fn(inputs[name][i % len(inputs[name])])
    times: dict[str, list[float]] = {name: [] for name in configs}
    for i in range(iters):
        for name, fn in configs.items():
            times[name].append(timer(fn, inputs[name][i % len(inputs[name])]))
        if timed is not None:
            timed.append(i % len(next(iter(inputs.values()))))
        if progress is not None:
            progress.update(1)
    return times


def _time_blocks(
    configs: dict[str, Callable[[Any], Any]],
    inputs: dict[str, list],
    warmup: int,
    iters: int,
    block: int = 20,
    settle: int = 5,
    settle_s: float = 0.1,
    progress=None,
    timed: list[int] | None = None,
    timer: Callable[[Callable[[Any], Any], Any], float] = wall_timer,
) -> dict[str, list[float]]:
    """Alternating blocks per configuration: untimed runs until both ``settle`` runs and ``settle_s`` seconds
    have passed, then ``block`` timed runs.

    Used for configurations on different thread pools (PyTorch vs ONNX Runtime, or the C loop's ONNX Runtime
    vs the Python binding's): a pool that has just run keeps its workers spinning for tens of milliseconds
    before they sleep, taking cores from the next configuration, so a block's first runs would time the
    previous configuration's tail; the settle time outlasts it. Also used for ``schedule="blocks"``: each
    configuration's steady state, its own weights cache-warm. The settle runs repeat the block's own inputs,
    so every configuration times the same inputs in the same order; ``timed`` and ``timer`` as in
    ``_time_interleaved`` (the settle time is the host's clock's).
    """
    first = next(iter(configs))
    for name, fn in configs.items():
        for i in range(warmup):
            fn(inputs[name][i % len(inputs[name])])
    times: dict[str, list[float]] = {name: [] for name in configs}
    clock = time.perf_counter
    i = done = 0
    while min(len(t) for t in times.values()) < iters:
        for name, fn in configs.items():
            data = inputs[name]
            start, runs = clock(), 0
            while runs < settle or clock() - start < settle_s:
                fn(data[(i + runs % block) % len(data)])
                runs += 1
            for j in range(block):
                if len(times[name]) >= iters:
                    break
                times[name].append(timer(fn, data[(i + j) % len(data)]))
                if timed is not None and name == first:
                    timed.append((i + j) % len(data))
        i += block
        if progress is not None:
            now = min(len(t) for t in times.values())
            progress.update(now - done)
            done = now
    return times


def bench(
    artifacts: str | os.PathLike,
    sentences: list[str] | None = None,
    *,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    warmup: int = 50,
    iters: int = 200,
    theta: float | None = None,
    min_layer: int | None = None,
    variant: str | None = None,
    threads: int | None = None,
    baselines: bool = True,
    also_variants: tuple[str, ...] = (),
    breakdown: bool = False,
    schedule: str = "round-robin",
    progress: bool = True,
    loop: str = "auto",
    backend: str = "auto",
    cuda_graphs: bool = False,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from leap_export.textio import sample_sentences
    from trt_runtime.encoder import EarlyExitEncoder
    from trt_runtime.runners import default_threads

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be one or more integers >= 1, got {tuple(batch_sizes)!r}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    if isinstance(sentences, str):  # iterating it would time its characters, one "sentence" each
        raise ValueError("sentences must be a list of strings, got one string; pass [text]")
    sentences = [s for s in (sentences or sample_sentences()) if s.strip()]
    if not sentences:
        raise ValueError(
            "sentences holds only blank strings; pass at least one sentence (None: the sample set)"
        )
    if len(sentences) < max(batch_sizes):
        log.warning(
            "only %d sentences: a batch of %d repeats them, so E[layers] and the speedups describe these "
            "few sentences; pass --sentences with at least %d lines",
            len(sentences),
            max(batch_sizes),
            max(batch_sizes),
        )
    threads = threads or default_threads()
    options = {"cuda_graphs": True} if cuda_graphs else None
    ee = EarlyExitEncoder(
        artifacts,
        theta=theta,
        min_layer=min_layer,
        variant=variant,
        threads=threads,
        loop=loop,
        backend=backend,
        backend_options=options,
    )
    if cuda_graphs and ee.backend not in GPU_BACKENDS:
        raise LeapError(
            f"--cuda-graphs needs a GPU backend ({' or '.join(GPU_BACKENDS)}); this bench runs on {ee.backend} "
            f"({ee.backend_reason})"
        )
    # the same backend and build for every configuration (auto could pick another for another variant)
    seg = EarlyExitEncoder(
        artifacts,
        exits=False,
        variant=ee.variant,
        threads=threads,
        check_files=False,
        loop=loop,
        backend=ee.backend,
        warn_exit_check=False,
        backend_options=options,
    )
    # the baseline in the same ONNX Runtime as the segments (the C loop's copy or the Python binding's)
    mono = ee.monolithic_runner()
    # other builds (e.g. int8) timed in the same rounds: their own monolithic graph and early exit
    extra: dict[str, tuple] = {}
    main_variant = ee.variant
    if main_variant in also_variants:
        raise LeapError(
            f"--also-variant {main_variant} is the build already being timed (--variant {main_variant}); "
            "name another build, e.g. int8"
        )
    for v in also_variants:
        if v in extra:
            continue
        ee_v = EarlyExitEncoder(
            artifacts,
            theta=theta,
            min_layer=min_layer,
            variant=v,
            threads=threads,
            loop=loop,
            backend=ee.backend,
            warn_exit_check=False,
            backend_options=options,
        )
        mono_v = ee_v.monolithic_runner()
        extra[v] = (ee_v, mono_v)
    merged = _merged_runner(artifacts, variant, threads, ee) if breakdown else None
    if baselines:
        st_models, baseline_errors = _load_st(ee.manifest, threads)
    else:
        st_models, baseline_errors = (
            {},
            dict.fromkeys((ST, ST_ONNX, FASTEMBED), "disabled (--no-baselines)"),
        )

    # on a GPU backend CUDA events time the graph configurations (all on that backend); else the host's clock
    device_timer, timer_reason = ee.event_timer()
    timer = device_timer or wall_timer
    token_ids = ee.tokenizer.encode(sentences)
    # E[layers] over the whole sentence set, for the header; each batch size's speedup is set against the
    # E[layers] of the batches it actually timed (at most ``iters`` of them: at batch 1 a subset of the sentences)
    exit_layers = ee.encode_with_exits(sentences, batch_size=32).exit_layers
    num_layers = ee.manifest.num_layers
    expected = float(exit_layers.mean())
    report: dict[str, Any] = {
        "artifacts": str(artifacts),
        "model": ee.manifest.source.get("name"),
        "variant": ee.variant,
        "backend": ee.backend,
        "backend_reason": ee.backend_reason,
        "policy": ee.policy.to_dict(),
        "num_layers": num_layers,
        "sentences": len(sentences),
        "threads": threads,
        "host_loop": ee.loop,
        "cuda_graphs": cuda_graphs,
        "timer": "cuda-events" if device_timer else "perf_counter",
        "timer_reason": timer_reason,
        "warmup": warmup,
        "iters": iters,
        "schedule": schedule,
        "expected_layers": expected,
        "theoretical_speedup": num_layers / expected,
        "exit_distribution": {str(b): float((exit_layers == b).mean()) for b in ee.manifest.boundaries},
        "also_variants": {
            v: {"expected_layers": float(e.encode_with_exits(sentences, batch_size=32).exit_layers.mean())}
            for v, (e, _) in extra.items()
        },
        "baseline_errors": baseline_errors,
        "machine": _machine(),
        "results": {},
        "paper": PAPER,
    }
    rounds = len(batch_sizes) * iters * (2 if st_models else 1)  # interleaved + ST blocks
    bar = tqdm(total=rounds, desc="bench", unit="round", disable=not progress)
    for b in batch_sizes:
        n_batches = max(
            1, min(iters, (len(sentences) + b - 1) // b)
        )  # a new batch every run, where there are enough
        id_batches = _batches(token_ids, b, n_batches)
        row_sentences = _batches(list(range(len(sentences))), b, n_batches)
        padded = [ee.tokenizer.pad(x) for x in id_batches]
        text_batches = _batches(sentences, b, n_batches)
        configs: dict[str, Callable] = {
            "monolithic": lambda p: mono.infer({"input_ids": p[0], "attention_mask": p[1]}),
            "segmented": lambda p: seg.run_padded(*p),
            "early exit": lambda p: ee.run_padded(*p),
        }
        if merged is not None:
            configs["one graph"] = lambda p: merged.infer({"input_ids": p[0], "attention_mask": p[1]})
        for v, (ee_v, mono_v) in extra.items():
            configs[f"monolithic [{v}]"] = lambda p, m=mono_v: m.infer(
                {"input_ids": p[0], "attention_mask": p[1]}
            )
            configs[f"early exit [{v}]"] = lambda p, e=ee_v: e.run_padded(*p)
        # all start from the same padded arrays: the timed work is the graphs plus the host loop
        inputs: dict[str, list] = {name: padded for name in configs}
        if cuda_graphs:  # every shape the timed runs meet, captured before timing (ONNX Runtime replays a
            for fn in configs.values():  # bucket from its fifth call, TensorRT from its second)
                for p in padded:
                    for _ in range(CAPTURE_CALLS):
                        fn(p)
        timed: list[int] = []  # which batch each timed sample ran, in order
        if schedule == "blocks":
            times = _time_blocks(configs, inputs, warmup, iters, progress=bar, timed=timed, timer=timer)
        else:
            times = _time_interleaved(configs, inputs, warmup, iters, bar, timed=timed, timer=timer)
        if st_models:  # end to end, tokenisation included, on every side
            encoders = {
                name: (lambda t, m=m: m.encode(t, batch_size=len(t))) for name, m in st_models.items()
            }
            encoders[OURS_ENCODE] = lambda t: ee.encode(t, batch_size=len(t))
            with _torch_threads(threads):  # PyTorch on as many threads as ONNX Runtime, not its own default
                times.update(
                    _time_blocks(encoders, dict.fromkeys(encoders, text_batches), warmup, iters, progress=bar)
                )
        row = {name: _stats(t) for name, t in times.items()}
        m, s, e = (row[k]["mean_ms"] for k in ("monolithic", "segmented", "early exit"))
        # E[layers] of the work timed: the exit layers of these very batches, weighted as they were timed
        row["expected_layers"] = _timed_expected_layers(ee, padded, timed)
        row["theoretical_speedup"] = num_layers / row["expected_layers"]
        row["sentences_timed"] = len({i for k in set(timed) for i in row_sentences[k]})
        row["speedup"] = m / e
        row["realised_efficiency"] = (m / e) / row["theoretical_speedup"]
        row["monitoring_overhead"] = s / m - 1.0
        row["segmented_vs_monolithic"] = s / m
        row["segmented_vs_monolithic_p50"] = row["segmented"]["p50_ms"] / row["monolithic"]["p50_ms"]
        row["speedup_p50"] = row["monolithic"]["p50_ms"] / row["early exit"]["p50_ms"]
        if merged is not None:  # the monitoring overhead, split: monitoring ops x graph breaks
            one = row["one graph"]["mean_ms"]
            row["breakdown"] = {"monitoring_ops": one / m - 1.0, "graph_breaks": s / one - 1.0}
        row["variants"] = {
            v: {
                "monolithic_ms": row[f"monolithic [{v}]"]["mean_ms"],
                "early_exit_ms": row[f"early exit [{v}]"]["mean_ms"],
                "speedup_vs_own_monolithic": row[f"monolithic [{v}]"]["mean_ms"]
                / row[f"early exit [{v}]"]["mean_ms"],
                "speedup_vs_primary_monolithic": m / row[f"early exit [{v}]"]["mean_ms"],
                "expected_layers": _timed_expected_layers(extra[v][0], padded, timed),
            }
            for v in extra
        }
        ours = row[OURS_ENCODE]["mean_ms"] if st_models else None
        if ST in st_models:
            row["speedup_vs_sentence_transformers"] = row[ST]["mean_ms"] / ours
        if ST_ONNX in st_models:
            row["speedup_vs_sentence_transformers_onnx"] = row[ST_ONNX]["mean_ms"] / ours
        if FASTEMBED in st_models:
            row["speedup_vs_fastembed"] = row[FASTEMBED]["mean_ms"] / ours
        report["results"][str(b)] = row
    bar.close()
    return report


@contextlib.contextmanager
def _torch_threads(threads: int):
    """PyTorch's intra-op thread count set to ``threads`` for the block, the caller's restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed_expected_layers(encoder, padded: list, timed: list[int]) -> float:
    """Mean exit layer over the samples timed: each batch of ``padded`` run once through ``encoder`` (its
    exit layers depend on the batch for int8), counted as often as ``timed`` ran it."""
    layers = [np.asarray(encoder.run_padded(*p)[1]) for p in padded]
    return float(np.concatenate([layers[k] for k in timed]).mean())


# per-row figures that are ratios of one run's timings: over several processes, their median and range
RATIOS = (
    "speedup",
    "realised_efficiency",
    "monitoring_overhead",
    "speedup_vs_sentence_transformers",
    "speedup_vs_sentence_transformers_onnx",
    "speedup_vs_fastembed",
)


def bench_processes(
    artifacts: str | os.PathLike,
    sentences: list[str] | None = None,
    *,
    processes: int = 1,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """``bench`` repeated in ``processes`` fresh Python processes, one after the other, and summarised.

    Within one process the figures are stable; between processes the batch-1 monitoring overhead moves
    by a few points (where each session's weights and buffers land in memory is the likely cause,
    ``benchmarks/overhead_spread.py``), so one run is one draw. The summary keeps the first run's layout:
    every timing is the median over processes of that process's figure, every derived ratio the median of
    the per-process ratios (``RATIOS``, the breakdown and the other builds' speedups), and ``spread``
    holds each ratio's min and max. ``runs`` keeps every process's own ``results``.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be an integer >= 1, got {processes!r}")
    if processes == 1:
        return bench(artifacts, sentences, progress=progress, **kwargs)
    from tqdm.auto import tqdm

    from trt_runtime.manifest import load_manifest

    load_manifest(artifacts, check_files=False)  # a wrong folder fails here, not in the first worker

    reports, warnings = [], []
    for _ in tqdm(range(processes), desc="bench processes", unit="process", disable=not progress):
        report, logged = _in_fresh_process(
            _logging_warnings, bench, str(artifacts), sentences, progress=False, **kwargs
        )
        reports.append(report)
        warnings += [w for w in logged if w not in warnings]
    for level, message in warnings:  # once each, through this process's handlers (not once per worker, bare)
        logging.getLogger(__name__).log(level, message)
    return summarise(reports)


def _logging_warnings(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[tuple[int, str]]]:
    """``fn(*args, **kwargs)`` and the warnings the tool logged meanwhile, as (level, message): a spawned
    worker has no handler, so Python's last-resort handler printed each one bare, once per process."""
    records: list[tuple[int, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append((record.levelno, record.getMessage()))

    handler = Collect(logging.WARNING)
    for name in ("leap_export", "trt_runtime"):
        logging.getLogger(name).addHandler(handler)
    try:
        return fn(*args, **kwargs), records
    finally:
        for name in ("leap_export", "trt_runtime"):
            logging.getLogger(name).removeHandler(handler)


def _in_fresh_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh interpreter (spawned): its own ONNX Runtime environment,
    thread pool and allocations."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs of the same bench (see ``bench_processes``)."""
    import copy

    out = copy.deepcopy(reports[0])
    out["processes"] = len(reports)
    out["runs"] = [r["results"] for r in reports]

    def med(values: list[float]) -> float:
        return float(np.median(values))

    for b, row in out["results"].items():
        rows = [r["results"][b] for r in reports]
        for name, stats in row.items():
            if isinstance(stats, dict) and "mean_ms" in stats:
                for key in ("mean_ms", "p50_ms", "p99_ms", "std_ms"):
                    stats[key] = med([r[name][key] for r in rows])
                stats["n"] = int(sum(r[name]["n"] for r in rows))
        spread = {}
        for key in (*RATIOS, "segmented_vs_monolithic", "segmented_vs_monolithic_p50", "speedup_p50"):
            if key in row:
                vals = [r[key] for r in rows]
                row[key] = med(vals)
                spread[key] = {"min": float(min(vals)), "max": float(max(vals))}
        if "breakdown" in row:
            for key in row["breakdown"]:
                vals = [r["breakdown"][key] for r in rows]
                row["breakdown"][key] = med(vals)
                spread[f"breakdown.{key}"] = {"min": float(min(vals)), "max": float(max(vals))}
        for v, x in row.get("variants", {}).items():
            for key in x:
                x[key] = med([r["variants"][v][key] for r in rows])
        row["spread"] = spread
    return out


def _merged_runner(artifacts, variant, threads, encoder):
    """A runner for the one-graph composition of the segments (bench --breakdown), in the same ONNX
    Runtime as ``encoder``'s segments (the C loop's or the Python binding's)."""
    import tempfile

    import onnx

    from leap_export.merge import merge_segments
    from trt_runtime.runners import OrtRunner

    with tempfile.TemporaryDirectory(prefix="leap-merged-", ignore_cleanup_errors=True) as tmp:
        path = Path(tmp) / "merged.onnx"  # weights in a side file: no 2 GB protobuf limit
        model = merge_segments(artifacts, variant)
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="merged.onnx.data",
        )
        if encoder.loop == "native":  # the session holds its own copy; the files may go
            from trt_runtime.native import NativeRunner

            # every output (each segment's pooled vector and score) computed, as the segments compute them
            outputs = [{"name": o.name} for o in model.graph.output]
            outputs.insert(
                0, outputs.pop(next(i for i, o in enumerate(outputs) if o["name"].startswith("pooled")))
            )
            return NativeRunner(path, outputs, encoder.manifest.hidden_size, pooled=outputs[0]["name"])
        runner = OrtRunner(path, threads=threads)
        runner.activate()
    return runner


def _load_st(manifest, threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The end-to-end baselines that can run here, and why each other one cannot: sentence-transformers on
    PyTorch, and on ONNX Runtime (its ONNX backend, and fastembed) from one ONNX export of the source model."""
    try:
        import torch  # noqa: F401
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        why = f"not installed ({e.name}); pip install 'leap-export[train]'"
        return {}, dict.fromkeys((ST, ST_ONNX, FASTEMBED), why)
    path = manifest.source.get("path")
    if not path or not Path(path).is_dir():
        why = f"source model folder {path} is not on this machine"
        return {}, dict.fromkeys((ST, ST_ONNX, FASTEMBED), why)
    models: dict[str, Any] = {ST: SentenceTransformer(path, device="cpu")}
    errors: dict[str, str] = {}
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        why = (
            "not installed (optimum); its ONNX backend needs `pip install 'sentence-transformers[onnx]'`, which "
            "resolves transformers to < 4.58: `make st-onnx` builds an environment with it (docs/cli.md)"
        )
        errors[ST_ONNX] = why
        errors[FASTEMBED] = "needs the ONNX export of sentence-transformers' ONNX backend: " + why
        return models, errors
    import tempfile

    with tempfile.TemporaryDirectory(prefix="leap-st-onnx-", ignore_cleanup_errors=True) as tmp:
        try:
            # optimum's export opens ONNX Runtime sessions with default options, which ONNX Runtime refuses
            # in a process that runs the shared thread pool: a child process exports and saves
            _in_fresh_process(_export_st_onnx, path, tmp)
        except Exception as e:  # noqa: BLE001 - a baseline that fails is reported, not fatal
            why = f"could not export to ONNX: {type(e).__name__}: {e}"
            return models, {ST_ONNX: why, FASTEMBED: why}
        for name, load in ((ST_ONNX, _load_st_onnx), (FASTEMBED, _load_fastembed)):
            try:
                models[name] = load(tmp, threads)
            except ImportError as e:
                errors[name] = f"not installed ({e.name}); `make st-onnx` builds an environment with it"
            except Exception as e:  # noqa: BLE001
                errors[name] = f"could not load: {type(e).__name__}: {e}"
    if FASTEMBED in models:  # the same model, or the comparison means nothing
        probe = ["A short sentence.", "Another, rather longer sentence about something else entirely."]
        with _torch_threads(threads):  # PyTorch on the requested threads here too, as in every timed call
            a = models[ST].encode(probe, normalize_embeddings=True)
        b = models[FASTEMBED].encode(probe, batch_size=len(probe))
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        agreement = float((a * b).sum(axis=1).min())
        if agreement < 0.999:
            del models[FASTEMBED]
            errors[FASTEMBED] = (
                f"its embeddings differ from sentence-transformers' (least cosine {agreement:.4f})"
            )
    return models, errors


def _load_st_onnx(folder: str, threads: int):
    """sentence-transformers with ``backend="onnx"`` on the exported ``folder``, with this tool's session
    settings (the session holds its own copy of the graph: the folder may go)."""
    from sentence_transformers import SentenceTransformer

    from trt_runtime.runners import ort_session_options

    return SentenceTransformer(
        folder,
        device="cpu",
        backend="onnx",
        model_kwargs={"provider": "CPUExecutionProvider", "session_options": ort_session_options(threads)},
    )


class _FastEmbed:
    """fastembed's ``TextEmbedding`` on the exported ``onnx/model.onnx``: mean pooling and normalisation, as the
    source model's sentence-transformers modules do. ``encode`` keeps the call shape of the other baselines."""

    def __init__(self, folder: str, threads: int) -> None:
        import json as _json

        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        name = "leap-export/bench-peer"
        dim = _json.loads(Path(folder, "config.json").read_text())["hidden_size"]
        if not any(m["model"] == name for m in TextEmbedding.list_supported_models()):
            TextEmbedding.add_custom_model(
                model=name,
                pooling=PoolingType.MEAN,
                normalization=True,
                sources=ModelSource(hf=name),
                dim=dim,
                model_file="onnx/model.onnx",
            )
        # fastembed builds its own SessionOptions, with a private thread pool, which ONNX Runtime refuses in a
        # process that runs the shared pool (as this one does): it gets the session options every other ONNX
        # Runtime graph here gets, the same threads, while it opens its session
        import types

        import onnxruntime as ort
        from fastembed.common import onnx_model

        from trt_runtime.runners import ort_session_options

        proxy = types.SimpleNamespace(**{k: getattr(ort, k) for k in dir(ort) if not k.startswith("__")})
        proxy.SessionOptions = lambda: ort_session_options(threads)
        original, onnx_model.ort = onnx_model.ort, proxy
        try:
            self.model = TextEmbedding(model_name=name, specific_model_path=folder, threads=threads)
        finally:
            onnx_model.ort = original

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return np.stack(list(self.model.embed(texts, batch_size=batch_size)))


def _load_fastembed(folder: str, threads: int) -> _FastEmbed:
    return _FastEmbed(folder, threads)


def _export_st_onnx(path: str, folder: str) -> None:
    import logging
    import warnings

    for name in ("sentence_transformers", "transformers", "optimum"):  # "saving is recommended": we do
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(path, device="cpu", backend="onnx").save(folder)


def _machine() -> dict[str, Any]:
    import platform

    from leap_export.machine import cpu_info
    from trt_runtime.runners import default_threads

    cpu = cpu_info()
    info = {
        "cpu": cpu["model"],
        "cpu_simd": cpu["simd"],
        "int8_path": cpu["int8_path"],
        "cores": default_threads(),
        "python": platform.python_version(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def markdown(report: dict[str, Any]) -> str:
    """The Table-7-style markdown table of a bench report."""
    cols = ["monolithic", "segmented", "early exit"]
    has_st = any(ST in r for r in report["results"].values())
    has_onnx = any(ST_ONNX in r for r in report["results"].values())
    has_fe = any(FASTEMBED in r for r in report["results"].values())
    # reports written before E[layers] was measured per batch size on the timed batches have no such column
    has_timed = all("expected_layers" in r for r in report["results"].values())
    lines = [
        f"Model `{report['model']}` ({report['variant']}), theta {report['policy']['theta']}, "
        f"min_layer {report['policy']['min_layer']}, {report['sentences']} sentences, {report['threads']} threads, "
        + (f"backend {report['backend']}, " if "backend" in report else "")
        + (f"{report['host_loop']} host loop, " if "host_loop" in report else "")
        + ("CUDA graphs, " if report.get("cuda_graphs") else "")
        + ("timed with CUDA events, " if report.get("timer") == "cuda-events" else "")
        + f"{report['warmup']} warmup + {report['iters']} timed iterations per configuration, "
        f"{report.get('schedule', 'round-robin')}. "
        f"E[layers] = {report['expected_layers']:.2f} of {report['num_layers']} -> theoretical "
        f"{report['theoretical_speedup']:.2f}x.",
        "",
        "| batch | monolithic ms, mean (p50/p99) | segmented, exits off ms | early exit ms |"
        + (" E[layers] timed (sentences) |" if has_timed else "")
        + " speedup | realised efficiency "
        "| monitoring overhead |"
        + (" ST PyTorch encode ms | our encode ms | vs ST |" if has_st else "")
        + (" ST ONNX encode ms | vs ST ONNX |" if has_onnx else "")
        + (" fastembed encode ms | vs fastembed |" if has_fe else ""),
        "|---|---|---|---|---|---|---|"
        + ("---|" if has_timed else "")
        + ("---|---|---|" if has_st else "")
        + ("---|---|" if has_onnx else "")
        + ("---|---|" if has_fe else ""),
    ]
    if has_timed:
        lines[0] += (
            " Each batch size's realised efficiency is its speedup over L / E[layers] of the batches it timed "
            "(one batch per timed run where the set has enough, so at small batch sizes the first sentences of the "
            "set; in brackets, how many)."
        )
    if has_st:
        lines[0] += (
            " The encode columns (end to end, tokenisation included) are timed in warm blocks, the graph columns "
            f"{report.get('schedule', 'round-robin')}."
        )
    if report.get("processes", 1) > 1:
        lines[0] += (
            f" **Median over {report['processes']} fresh processes**; ratios show their range over the processes "
            "in brackets. Each timing is the median of that timing and each ratio the median of the per-process "
            "ratios, so a ratio need not equal the ratio of the printed timings."
        )

    def ratio(r: dict, key: str, fmt: str, unit: str = "") -> str:
        text = format(r[key], fmt) + unit
        if key in r.get("spread", {}):
            lo, hi = r["spread"][key]["min"], r["spread"][key]["max"]
            text += f" ({format(lo, fmt)}{unit} to {format(hi, fmt)}{unit})"
        return text

    for b, r in report["results"].items():
        cells = [f"{r[c]['mean_ms']:.2f} ({r[c]['p50_ms']:.2f}/{r[c]['p99_ms']:.2f})" for c in cols]
        if has_timed:
            cells.append(f"{r['expected_layers']:.2f} ({r['sentences_timed']})")
        line = (
            f"| {b} | {' | '.join(cells)} | {ratio(r, 'speedup', '.2f', 'x')} | {ratio(r, 'realised_efficiency', '.1%')} | "
            f"{ratio(r, 'monitoring_overhead', '+.1%')} |"
        )
        if has_st:
            line += (
                f" {r[ST]['mean_ms']:.2f} | {r[OURS_ENCODE]['mean_ms']:.2f} | "
                f"{ratio(r, 'speedup_vs_sentence_transformers', '.2f', 'x')} |"
                if ST in r
                else " – | – | – |"
            )
        if has_onnx:
            line += (
                f" {r[ST_ONNX]['mean_ms']:.2f} | {ratio(r, 'speedup_vs_sentence_transformers_onnx', '.2f', 'x')} |"
                if ST_ONNX in r
                else " – | – |"
            )
        if has_fe:
            line += (
                f" {r[FASTEMBED]['mean_ms']:.2f} | {ratio(r, 'speedup_vs_fastembed', '.2f', 'x')} |"
                if FASTEMBED in r
                else " – | – |"
            )
        lines.append(line)
    if any("breakdown" in r for r in report["results"].values()):
        lines += [
            "",
            "Where the monitoring overhead goes (`--breakdown`): *one graph* is every segment composed into a "
            "single graph that computes every exit head but cannot exit.",
            "",
            "| batch | one graph ms | monitoring ops (one graph vs monolithic) | graph breaks (segmented vs one graph) |",
            "|---|---|---|---|",
        ]
        for b, r in report["results"].items():
            if "breakdown" in r:
                x = r["breakdown"]
                lines.append(
                    f"| {b} | {r['one graph']['mean_ms']:.2f} | {x['monitoring_ops']:+.1%} | "
                    f"{x['graph_breaks']:+.1%} |"
                )
    extra = report.get("also_variants") or {}
    if extra:
        lines += [
            "",
            f"Other builds in the same rounds (speedups against the {report['variant']} monolithic graph):",
            "",
            "| batch | build | E[layers] | monolithic ms | early exit ms | early exit vs its monolithic "
            f"| early exit vs {report['variant']} monolithic |",
            "|---|---|---|---|---|---|---|",
        ]
        for b, r in report["results"].items():
            for v, x in r.get("variants", {}).items():
                lines.append(
                    f"| {b} | {v} | {x.get('expected_layers', extra[v]['expected_layers']):.2f} | "
                    f"{x['monolithic_ms']:.2f} | "
                    f"{x['early_exit_ms']:.2f} | {x['speedup_vs_own_monolithic']:.2f}x | "
                    f"{x['speedup_vs_primary_monolithic']:.2f}x |"
                )
    return "\n".join(lines) + "\n"


def plot_png(report: dict[str, Any]) -> bytes:
    """The latency bar chart as PNG bytes, drawn on a bare ``Figure`` (rendered by Agg) without pyplot, so the
    caller's pyplot backend and figures are left alone (as in ``leap_export.plots``)."""
    import io

    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    batches = list(report["results"])
    configs = [
        c
        for c in ("monolithic", "segmented", "early exit", ST, ST_ONNX, FASTEMBED, OURS_ENCODE)
        if c in report["results"][batches[0]]
    ]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    width = 0.8 / len(configs)
    for i, c in enumerate(configs):
        ys = [report["results"][b][c]["mean_ms"] for b in batches]
        bars = ax.bar(np.arange(len(batches)) + i * width, ys, width, label=c)
        ax.bar_label(bars, labels=[f"{y:.3g}" for y in ys], fontsize=6, padding=1)
    ax.set_xticks(np.arange(len(batches)) + width * (len(configs) - 1) / 2, [f"batch {b}" for b in batches])
    ax.set_ylabel("mean latency (ms)")
    ax.set_yscale("log")
    # 1-2-5 ticks in plain numbers: a range inside one decade otherwise gets minor labels like "6x10^1"
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.margins(y=0.08)  # room for the top bars' labels
    ax.set_title(
        f"{report['model']}: E[layers] {report['expected_layers']:.2f}/{report['num_layers']}, "
        f"theta {report['policy']['theta']}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def save(report: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": out / "bench.json", "markdown": out / "bench.md", "plot": out / "bench.png"}
    # Everything rendered first (the plot takes a while), then written back to back, so an interrupt
    # cannot leave this run's JSON beside an older run's plot.
    contents = {"json": json_bytes(report), "markdown": markdown(report).encode(), "plot": plot_png(report)}
    ensure_parent(out, folder=True)
    out.mkdir(exist_ok=True)
    for key, data in contents.items():
        atomic_write(paths[key], lambda f, data=data: f.write(data))
    return paths
