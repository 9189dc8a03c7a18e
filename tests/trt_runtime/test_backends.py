"""trt_runtime/backends: the registry, backend choice and refusal, and the loop composed with any backend."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trt_runtime import EarlyExitEncoder, load_manifest
from trt_runtime.backends import CHOICES, choose, why_not
from trt_runtime.chain import SegmentChain
from trt_runtime.errors import RuntimeInputError
from trt_runtime.stats import ExitStats

RUNTIME = Path(__file__).resolve().parents[2] / "trt_runtime"


def test_auto_takes_the_cpu_here_and_says_why_not_the_others(tiny_artifacts):
    enc = EarlyExitEncoder(tiny_artifacts["bert"])
    assert enc.backend == "onnxruntime-cpu" and enc.variant == "fp32"
    assert enc.backend_reason.startswith("auto: onnxruntime-cpu (not tensorrt: ")
    assert "not onnxruntime-cuda: the installed onnxruntime" in enc.backend_reason
    assert EarlyExitEncoder(tiny_artifacts["bert"], backend="onnxruntime-cpu").backend_reason == (
        "backend='onnxruntime-cpu'"
    )


@pytest.mark.parametrize(
    "backend, message",
    [
        ("onnxruntime-cuda", "backend 'onnxruntime-cuda' cannot run here: the installed onnxruntime"),
        ("tensorrt", "backend 'tensorrt' cannot run here: TensorRT is not installed"),
        ("cuda", "backend must be one of auto, onnxruntime-cpu, onnxruntime-cuda, tensorrt, got 'cuda'"),
    ],
)
def test_a_backend_that_is_not_there_is_an_error_that_names_what_is_missing(tiny_artifacts, backend, message):
    with pytest.raises(RuntimeInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EarlyExitEncoder(tiny_artifacts["bert"], backend=backend)


def test_the_cli_refuses_an_absent_backend_in_one_line(tiny_artifacts, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("one\n", encoding="utf-8")
    cli = [sys.executable, "-m", "leap_export.cli"]
    for args in (
        [
            "encode",
            tiny_artifacts["bert"],
            "--input",
            src,
            "--output",
            tmp_path / "e.npy",
            "--backend",
            "tensorrt",
        ],
        [
            "bench",
            tiny_artifacts["bert"],
            "--backend",
            "onnxruntime-cuda",
            "--batch-sizes",
            "1",
            "--iters",
            "1",
        ],
    ):
        run = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, timeout=300)
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == 2 and len(lines) == 1 and "cannot run here" in lines[0], run.stderr
    assert not (tmp_path / "e.npy").exists()


def test_the_registry_names_every_backend_and_tensorrt_needs_engines(tiny_artifacts):
    assert CHOICES == ("auto", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt")
    m = load_manifest(tiny_artifacts["bert"])
    spec, why = why_not("onnxruntime-cpu", m, None)
    assert spec.name == "fp32" and spec.backend == "onnxruntime" and why is None
    cls, spec, reason = choose(m, "fp32", "onnxruntime-cpu")
    assert cls.name == "onnxruntime-cpu" and spec.precision == "fp32"


def test_the_loop_never_asks_which_backend_it_has():
    """The chain and the encoder compose runners, ops and a fast path: no comparison with a backend or loop
    name, no backend class or module imported, no isinstance check on what a backend gave them."""
    names = {"native", "python", *CHOICES, "CPUExecutionProvider", "CUDAExecutionProvider"}
    for module in ("chain.py", "encoder.py"):
        tree = ast.parse((RUNTIME / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                constants = {c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)}
                assert not constants & names, (module, ast.unparse(node))
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(("trt_runtime.backends.", "trt_runtime.native")), (
                    module,
                    node.module,
                )
        if module == "chain.py":
            calls = [
                n
                for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "isinstance"
            ]
            assert not calls


def _split_theta(encoder, texts) -> float:
    """A theta between the scores at the first exit check, so some rows exit there and some go on."""
    return _split_theta_ids(encoder, encoder.tokenizer.encode(texts))


def _split_theta_ids(encoder, ids) -> float:
    traces: list = []
    encoder.run_ids(ids, on_segment=traces.append)
    scores = np.sort(traces[0].score)
    return float((scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2)


def test_the_cuda_backend_s_binding_and_device_compaction_on_the_cpu_provider(tiny_artifacts, sentences):
    """The ONNX Runtime CUDA backend's own code (I/O binding, OrtValues between segments, the Gather + Slice
    compaction graph), run with the CPU provider: the same exit layers and embeddings as the numpy loop."""
    from trt_runtime.backends.onnxruntime_cuda import OnnxRuntimeCuda

    art = tiny_artifacts["bert"]
    cpu = EarlyExitEncoder(art, loop="python", exits=False)
    texts = sentences * 3
    theta = _split_theta(cpu, texts)
    cpu.policy = {"theta": theta}
    m = load_manifest(art)
    device = OnnxRuntimeCuda(
        m, m.variant_spec("fp32"), threads=None, options={"provider": "CPUExecutionProvider"}
    )
    stats = ExitStats(m.num_layers, m.boundaries)
    chain = SegmentChain(m.segments, device.segment_runners(), device.ops, stats)
    ids = cpu.tokenizer.encode(texts)
    input_ids, mask = cpu.tokenizer.pad(ids)
    want_pooled, want_layers = cpu.run_padded(input_ids, mask)
    got_pooled, got_layers = chain.run(input_ids, mask, cpu._rule)
    assert got_layers.tolist() == want_layers.tolist() and len(set(want_layers.tolist())) > 1
    np.testing.assert_allclose(got_pooled, want_pooled, rtol=0, atol=1e-6)
    assert stats.as_dict()["exit_counts"] == {str(b): int((want_layers == b).sum()) for b in m.boundaries}
    mono = device.monolithic_runner().infer({"input_ids": input_ids, "attention_mask": mask})["pooled"]
    full = (
        EarlyExitEncoder(art, exits=False)
        .monolithic_runner()
        .infer({"input_ids": input_ids, "attention_mask": mask})["pooled"]
    )
    np.testing.assert_allclose(mono, full, rtol=0, atol=1e-5)


def test_the_cuda_backend_s_cuda_graph_buckets_on_the_cpu_provider(tiny_artifacts, sentences):
    """``cuda_graphs``' bookkeeping (a fixed-buffer bucket per input shape, inputs copied in, the bucket's
    binding replayed under its gpu_graph_id) on the CPU provider, which has no capture: the same exit layers
    and embeddings, bit for bit, as the numpy loop, over repeated shapes, beyond ``max_graphs`` too; a
    result already returned is never changed by a later call of the same shape."""
    from trt_runtime.backends.onnxruntime_cuda import OnnxRuntimeCuda

    art = tiny_artifacts["bert"]
    cpu = EarlyExitEncoder(art, loop="python", exits=False)
    ids = cpu.tokenizer.encode(sentences * 3)
    width = min(len(x) for x in ids)
    ids = [x[:width] for x in ids]  # one length: batches of one size share a shape, not their contents
    cpu.policy = {"theta": _split_theta_ids(cpu, ids)}
    m = load_manifest(art)
    options = {"provider": "CPUExecutionProvider", "cuda_graphs": True, "max_graphs": 2}
    device = OnnxRuntimeCuda(m, m.variant_spec("fp32"), threads=None, options=options)
    chain = SegmentChain(
        m.segments, device.segment_runners(), device.ops, ExitStats(m.num_layers, m.boundaries)
    )
    batches = [ids[i : i + size] for size in (len(ids), 3, 1) for i in range(0, 6, size)]
    first = None
    for _ in range(2):  # the second pass replays every bucket the first made
        for batch in batches:
            input_ids, mask = cpu.tokenizer.pad(batch)
            want_pooled, want_layers = cpu.run_padded(input_ids, mask)
            got_pooled, got_layers = chain.run(input_ids, mask, cpu._rule)
            assert got_layers.tolist() == want_layers.tolist()
            np.testing.assert_array_equal(got_pooled, want_pooled)
            if first is None:
                first, kept = got_pooled, got_pooled.copy()
                assert len(set(want_layers.tolist())) > 1  # rows left at different segments
    np.testing.assert_array_equal(first, kept)
    runners = device.segment_runners()
    assert max(len(r._buckets) for r in runners) == 2  # max_graphs: later shapes ran without a bucket
    mono = device.monolithic_runner()
    full = EarlyExitEncoder(art, exits=False).monolithic_runner()
    for batch in (ids[:3], ids[3:6]):  # one shape: the second call replays the first's bucket
        input_ids, mask = cpu.tokenizer.pad(batch)
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        np.testing.assert_allclose(
            mono.infer(feeds)["pooled"], full.infer(feeds)["pooled"], rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_the_cuda_backend_refuses_a_bad_max_graphs(tiny_artifacts, bad):
    from trt_runtime.backends.onnxruntime_cuda import OnnxRuntimeCuda

    m = load_manifest(tiny_artifacts["bert"])
    with pytest.raises(RuntimeInputError, match=f"max_graphs must be an integer >= 1, got {bad!r}"):
        OnnxRuntimeCuda(
            m,
            m.variant_spec("fp32"),
            threads=None,
            options={"provider": "CPUExecutionProvider", "max_graphs": bad},
        )


def test_the_compaction_graph_gathers_rows_and_trims_the_sequence():
    import onnxruntime as ort

    from trt_runtime.backends.onnxruntime_cuda import CudaOps
    from trt_runtime.chain import NumpyOps

    ops = CudaOps(provider="CPUExecutionProvider")
    x = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    rows = np.array([0, 2, 3])
    for axis, width in ((1, 4), (-1, 2), (None, 0)):
        got = ops.to_host(ops.compact(ops.from_host(x), rows, axis, width))
        np.testing.assert_array_equal(got, NumpyOps.compact(x, rows, axis, width))
    half = ort.OrtValue.ortvalue_from_numpy(x.astype(np.float16))
    assert ops.to_host(ops.compact(half, rows, 1, 2)).dtype == np.float16


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_onnxruntime_cuda_matches_the_cpu(tiny_artifacts, sentences, cuda_graphs):
    """On a GPU with onnxruntime-gpu: the CUDA backend's exit layers and embeddings against the CPU's, with
    and without CUDA graphs (two passes: the second replays the graphs the first captured)."""
    from trt_runtime.backends.onnxruntime_cuda import OnnxRuntimeCuda

    why = OnnxRuntimeCuda.unavailable()
    if why:
        pytest.skip(f"needs onnxruntime-gpu and an NVIDIA GPU: {why}")
    art = tiny_artifacts["bert"]
    cpu = EarlyExitEncoder(art, backend="onnxruntime-cpu", exits=False)
    texts = sentences * 3
    theta = _split_theta(cpu, texts)
    cpu = EarlyExitEncoder(art, backend="onnxruntime-cpu", theta=theta)
    gpu = EarlyExitEncoder(
        art, backend="onnxruntime-cuda", theta=theta, backend_options={"cuda_graphs": cuda_graphs}
    )
    assert gpu.backend == "onnxruntime-cuda"
    a = cpu.encode_with_exits(texts, batch_size=8)
    for _ in range(5 if cuda_graphs else 1):  # ONNX Runtime captures a shape's fourth call, replays its fifth
        b = gpu.encode_with_exits(texts, batch_size=8)
    assert (np.sum(a.embeddings * b.embeddings, axis=1) > 0.9999).all()
    # a score at theta may round the other way in another kernel
    assert (np.asarray(a.exit_layers) == np.asarray(b.exit_layers)).mean() >= 0.9


@pytest.mark.gpu
def test_cuda_events_time_the_whole_call():
    """On a GPU with CuPy: the event timer spans a call's GPU work (never more than the host saw)."""
    import time

    from trt_runtime.backends.cuda_events import EventTimer, cupy_missing

    why = cupy_missing()
    if why:
        pytest.skip(why)
    import cupy

    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy without a GPU
        pytest.skip(f"needs an NVIDIA GPU: {e}")
    a = cupy.ones((2048, 2048), dtype=cupy.float32)

    def work(n):
        for _ in range(n):
            a @ a
        return cupy.asnumpy(a[0, :4])  # ends synchronised, as every call bench times does

    timer = EventTimer()
    work(2)
    t0 = time.perf_counter()
    took = timer(work, 20)
    wall = time.perf_counter() - t0
    assert 0 < took <= wall
    assert timer(work, 40) > took  # twice the work takes longer on the GPU's clock
