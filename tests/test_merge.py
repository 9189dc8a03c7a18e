"""merge_segments: the one-graph composition computes exactly what the segment chain computes."""

import numpy as np
import onnx
import pytest

from leap_export.export import build
from leap_export.merge import merge_segments
from trt_runtime.encoder import EarlyExitEncoder
from trt_runtime.runners import OrtRunner


def _merged(art, tmp_path, variant=None):
    path = tmp_path / "merged.onnx"
    model = merge_segments(art, variant)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    runner = OrtRunner(path)
    runner.activate()
    return runner


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_one_graph_equals_the_segment_chain(arch, tiny_artifacts, tmp_path, sentences):
    art = tiny_artifacts[arch]
    chain = EarlyExitEncoder(art, exits=False)
    merged = _merged(art, tmp_path)
    assert merged.output_names == [
        f"{n}_{k}" for k in range(len(chain.segments)) for n in ("pooled", "score")
    ]
    input_ids, mask = chain.tokenizer.pad(chain.tokenizer.encode(sentences))
    trace: list = []
    chain.run_padded(input_ids, mask, on_segment=trace.append)
    out = merged.infer({"input_ids": input_ids, "attention_mask": mask})
    for k, (_, rows, pooled, score) in enumerate(trace):
        assert rows.size == input_ids.shape[0]  # exits off: every row reaches every segment
        np.testing.assert_allclose(out[f"pooled_{k}"], pooled, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[f"score_{k}"], score, rtol=1e-5, atol=1e-6)


def test_patience_two_references_cross_segments(tiny_models, tmp_path, sentences):
    """k = 2: a score compares with a layer inside an earlier segment (pooled_l1), wired through the merge."""
    art = build(
        tiny_models["bert"], tmp_path / "k2", min_layer=2, patience=2, boundaries=[2, 3, 4], progress=False
    )
    chain = EarlyExitEncoder(art, exits=False)
    refs = [(s.index, s.ref_from, s.ref_output) for s in chain.segments]
    assert refs == [(0, None, None), (1, 0, "pooled_l1"), (2, 1, "pooled")]
    merged = _merged(art, tmp_path)
    input_ids, mask = chain.tokenizer.pad(chain.tokenizer.encode(sentences))
    trace: list = []
    chain.run_padded(input_ids, mask, on_segment=trace.append)
    out = merged.infer({"input_ids": input_ids, "attention_mask": mask})
    for k, (_, _, pooled, score) in enumerate(trace):
        np.testing.assert_allclose(out[f"pooled_{k}"], pooled, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[f"score_{k}"], score, rtol=1e-5, atol=1e-6)
