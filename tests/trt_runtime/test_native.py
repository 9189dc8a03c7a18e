"""trt_runtime/native.py + libleap_runtime (trt_runtime/_native/leap_runtime.c): the host loop in C against the Python loop.

The Python loop (``EarlyExitEncoder(loop="python")``) is the reference: the C loop must give the same
exit layers, the same embeddings and the same statistics, on batches where samples leave at different
layers (compaction and padding trim) and on builds whose results depend on the trim (int8).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from leap_export.reference import layer_embeddings
from leap_export.verify import convergence_scores, split_theta
from trt_runtime import EarlyExitEncoder, RuntimeInputError, native
from trt_runtime.native import NativeError


def _built() -> bool:
    return native.extension_path() is not None


# an install with a C compiler builds the extension (pyproject.toml): there, the C loop must be there and used
needs_c = pytest.mark.skipif(
    not _built() and shutil.which("gcc") is None and shutil.which("cc") is None,
    reason="no C compiler here: the extension is optional and was not built",
)


@needs_c
def test_the_extension_is_built_and_is_the_default_loop(tiny_artifacts):
    assert _built(), (
        "pip install -e . should have built trt_runtime/libleap_runtime.so (a C compiler is present)"
    )
    assert native.onnxruntime_library() is not None
    enc = EarlyExitEncoder(tiny_artifacts["bert"])
    assert enc.loop == "native", enc.loop_reason
    assert EarlyExitEncoder(tiny_artifacts["bert"], loop="python").loop == "python"


def _splitting_theta(model, texts, layer=2):
    ref = layer_embeddings(model, texts)
    return split_theta(convergence_scores(ref, layer, 1))


@needs_c
@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_c_loop_equals_python_loop(arch, tiny_artifacts, tiny_models, sentences):
    """Same exit layers, embeddings to the last bit, same statistics: on every batch size, with samples
    leaving at every check (compaction, padding trim, scatter back), and with exits off."""
    texts = sentences * 3
    theta = _splitting_theta(tiny_models[arch], texts)
    for kwargs in ({"theta": theta}, {"theta": theta, "min_layer": 3}, {"exits": False}):
        c = EarlyExitEncoder(tiny_artifacts[arch], loop="native", **kwargs)
        py = EarlyExitEncoder(tiny_artifacts[arch], loop="python", **kwargs)
        for batch_size in (1, 5, 32):
            a = c.encode_with_exits(texts, batch_size=batch_size)
            b = py.encode_with_exits(texts, batch_size=batch_size)
            assert a.exit_layers.tolist() == b.exit_layers.tolist(), (kwargs, batch_size)
            np.testing.assert_array_equal(a.embeddings, b.embeddings)
        if "theta" in kwargs and "min_layer" not in kwargs:
            assert len(set(a.exit_layers.tolist())) > 1, "the theta must split the batch for this test"
        sa, sb = c.stats.as_dict(), py.stats.as_dict()
        assert sa["exit_counts"] == sb["exit_counts"]
        assert sa["mean_score"].keys() == sb["mean_score"].keys()
        for layer, score in sa["mean_score"].items():
            assert score == pytest.approx(sb["mean_score"][layer], rel=1e-12, abs=1e-12)


@needs_c
def test_c_loop_trims_padding_as_the_python_loop_does(tiny_artifacts, tiny_models, sentences, tmp_path):
    """int8's activation scales are per batch, so its results show whether the survivors' padding was
    trimmed to the same width: the C loop must match the Python loop on an int8 build too."""
    from leap_export.export import build

    art = tmp_path / "bert"
    shutil.copytree(tiny_artifacts["bert"], art)
    build(art, art, precision="int8", progress=False)
    texts = sentences * 2
    theta = _splitting_theta(tiny_models["bert"], texts)
    c = EarlyExitEncoder(art, variant="int8", theta=theta, loop="native")
    py = EarlyExitEncoder(art, variant="int8", theta=theta, loop="python")
    a, b = c.encode_with_exits(texts, batch_size=32), py.encode_with_exits(texts, batch_size=32)
    assert len(set(a.exit_layers.tolist())) > 1
    assert a.exit_layers.tolist() == b.exit_layers.tolist()
    np.testing.assert_array_equal(a.embeddings, b.embeddings)


@needs_c
def test_monolithic_runner_runs_in_the_c_library(tiny_artifacts, sentences):
    """bench's baseline: the monolithic graph through the C library equals the Python binding's run."""
    from trt_runtime.native import NativeRunner
    from trt_runtime.runners import OrtRunner

    enc = EarlyExitEncoder(tiny_artifacts["mpnet"])
    mono = enc.monolithic_runner()
    assert isinstance(mono, NativeRunner)
    ids, mask = enc.tokenizer.pad(enc.tokenizer.encode(sentences))
    got = mono.infer({"input_ids": ids, "attention_mask": mask})["pooled"]
    want = OrtRunner(enc.manifest.full_path()).infer({"input_ids": ids, "attention_mask": mask})["pooled"]
    np.testing.assert_array_equal(got, want)
    assert not isinstance(
        EarlyExitEncoder(tiny_artifacts["mpnet"], loop="python").monolithic_runner(), NativeRunner
    )


@needs_c
def test_one_c_encoder_serves_several_threads(tiny_artifacts, tiny_models, sentences):
    texts = sentences * 2
    enc = EarlyExitEncoder(tiny_artifacts["bert"], theta=_splitting_theta(tiny_models["bert"], texts))
    want = enc.encode_with_exits(texts, batch_size=4)
    got, errors = [None] * 4, []

    def work(i):
        try:
            got[i] = enc.encode_with_exits(texts, batch_size=3 + i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in got:
        assert r.exit_layers.tolist() == want.exit_layers.tolist()
        np.testing.assert_allclose(r.embeddings, want.embeddings, atol=1e-6)
    assert enc.stats.samples == 5 * len(texts)


@needs_c
def test_errors_inside_the_c_library_are_raised(tiny_artifacts, sentences):
    """What the library refuses, and ONNX Runtime's own failures, come back as exceptions with the library's
    message, not a crash; the encoder works afterwards."""
    from trt_runtime.native import NativeRunner

    enc = EarlyExitEncoder(tiny_artifacts["bert"])
    ids, mask = enc.tokenizer.pad(enc.tokenizer.encode(sentences[:2]))
    # the graphs take int32: int64 ids and mask are converted in C, with the same results
    got, want = enc.run_padded(ids.astype(np.int64), mask.astype(np.int64)), enc.run_padded(ids, mask)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].tolist() == want[1].tolist()
    bad = ids.copy()
    bad[1, 1] = 10**6
    with pytest.raises(
        RuntimeInputError, match=r"row 1, position 1: id 1000000 is outside the vocabulary \[0, 30522\)"
    ):
        enc.run_padded(bad, mask)
    holes = mask.copy()
    holes[0, 0] = 0
    with pytest.raises(
        RuntimeInputError,
        match=r"mask row 0, position 1: a mask row is ones then zeros \(right padding\), got 1",
    ):
        enc.run_padded(ids, holes)
    with pytest.raises(RuntimeInputError, match="int32 or int64"):
        enc.run_padded(ids.astype(np.float32), mask)
    # ONNX Runtime's own failure, inside a run: an output the graph does not have
    runner = NativeRunner(enc.manifest.full_path(), [{"name": "pooled"}, {"name": "nope"}], enc.embedding_dim)
    with pytest.raises(NativeError, match="the graph: .*nope"):
        runner.infer({"input_ids": ids, "attention_mask": mask})
    runner.deactivate()
    assert enc.encode(sentences[:2]).shape == (2, enc.embedding_dim)  # still works afterwards


def test_loop_choice_is_checked_and_explained(tiny_artifacts, monkeypatch):
    with pytest.raises(RuntimeInputError, match="loop must be 'auto', 'native' or 'python'"):
        EarlyExitEncoder(tiny_artifacts["bert"], loop="c")
    # private per-session pools run on the Python binding: the C loop cannot honour them
    with pytest.raises(RuntimeInputError, match="shared_pool=False"):
        EarlyExitEncoder(tiny_artifacts["bert"], loop="native", shared_pool=False)
    monkeypatch.setenv("TRT_RUNTIME_LOOP", "python")
    enc = EarlyExitEncoder(tiny_artifacts["bert"])
    assert (enc.loop, enc.loop_reason) == ("python", "TRT_RUNTIME_LOOP=python")
    monkeypatch.setenv("TRT_RUNTIME_LOOP", "native")
    with pytest.raises(
        RuntimeInputError, match="TRT_RUNTIME_LOOP=native: the C host loop cannot run here: shared_pool"
    ):
        EarlyExitEncoder(tiny_artifacts["bert"], shared_pool=False)
    monkeypatch.setenv("TRT_RUNTIME_LOOP", "fast")
    with pytest.raises(RuntimeInputError, match="TRT_RUNTIME_LOOP must be auto, native or python"):
        EarlyExitEncoder(tiny_artifacts["bert"])


def test_without_the_extension_the_python_loop_runs(tiny_artifacts):
    """A runtime installed without a C compiler: auto falls back, loop='native' says why."""
    script = """
import sys
from trt_runtime import native, EarlyExitEncoder, RuntimeInputError
native.extension_path = lambda: None
enc = EarlyExitEncoder(sys.argv[1])
print(enc.loop, enc.encode(["hello there"]).shape)
try:
    EarlyExitEncoder(sys.argv[1], loop="native")
except RuntimeInputError as e:
    print("refused:", e)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tiny_artifacts["bert"])], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.splitlines()[0] == f"python (1, {EarlyExitEncoder(tiny_artifacts['bert']).embedding_dim})"
    )
    assert "refused: loop='native': the C host loop cannot run here: the C library" in proc.stdout
    assert "is not built" in proc.stdout
