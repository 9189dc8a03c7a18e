"""FP16 graphs (leap_export.fp16): their types, that they run, and the CPU oracle's agreement with true FP16.

The oracle (``emulated``: FP32 ops on FP16-rounded values, run by ONNX Runtime's CPU provider) is checked
against ``onnx.reference.ReferenceEvaluator`` running the FP16 graph in numpy FP16. Measured on these tiny
models (x86-64, 2026-12): mean |emulated - reference| / mean |reference| of the pooled vectors 3e-8 to 5e-8
(max 2.4e-7), against 2.4e-4 to 6.9e-4 for the FP32 graph and about as much for the FP16 graph run directly
by ONNX Runtime's CPU provider (it computes most ops in FP32). The two are not bit-identical: FP32 sums in
another order (another CPU's kernels, another K blocking) flip an occasional FP16 rounding by one unit, and
the flip propagates; on all-MiniLM-L6-v2 (K = 384, 1536) that leaves the two 7e-5 apart after one layer.
The bounds below leave room for such flips and still fail a conversion that misses the rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from leap_export.fp16 import emulated, reference_evaluator, to_fp16

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
RATIO_MAX = 0.1  # (emulated vs reference) / (FP32 vs reference), mean relative error; measured <= 2e-4
SCORE_DIFF_MAX = 1e-5  # max |emulated - reference| of the score
REL_ERR_MAX = (
    5e-5  # mean |emulated - reference| / mean |reference| of pooled; measured <= 5e-8, FP32 >= 2.4e-4
)


def _session(path, *, level=None):
    import onnxruntime as ort

    from trt_runtime import ort_session_options

    so = ort_session_options()
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(path, feeds, **kw) -> dict[str, np.ndarray]:
    sess = _session(path, **kw)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _types(path) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]})
    return model, types


def _feeds(art: Path, sentences: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of every graph of a build: token ids for seg_00 and full, the FP32 chain's tensors for the rest."""
    from trt_runtime.tokenize import TokenBatcher

    man = json.loads((art / "manifest.json").read_text())
    tok = TokenBatcher(
        art / man["tokenizer"]["file"],
        max_length=man["tokenizer"]["max_length"],
        pad_id=man["tokenizer"]["pad_id"],
    )
    ids, mask = tok.pad(tok.encode(sentences))
    feeds = {"full": {"input_ids": ids, "attention_mask": mask}}
    have: dict = {"input_ids": ids, "attention_mask": mask}
    for i, seg in enumerate(man["segments"]):
        name = f"seg_{i:02d}"
        feed = {}
        for io in seg["inputs"]:
            if io["name"] == "hidden_in":
                feed["hidden_in"] = have["hidden_out"]
            elif io["name"] == "ref_pooled":
                feed["ref_pooled"] = have[(seg["ref_from"], seg["ref_output"] or "pooled")]
            else:
                feed[io["name"]] = have[io["name"]]
        feeds[name] = feed
        out = _run(art / f"{name}.onnx", feed)
        have.update({k: v for k, v in out.items() if k in ("hidden_out", "mask_bias", "pool_weights")})
        have.update({(i, k): v for k, v in out.items()})
    return feeds


@pytest.fixture(scope="module")
def fp16_builds(tiny_artifacts, tmp_path_factory) -> dict[str, dict]:
    """Per architecture: the build, its graphs' FP16 and emulated copies, and their inputs."""
    from tests.conftest import SENTENCES

    root = tmp_path_factory.mktemp("fp16")
    builds = {}
    for arch, art in tiny_artifacts.items():
        graphs = {}
        for src in sorted(art.glob("*.onnx")):
            half, emu = root / f"{arch}_{src.stem}_fp16.onnx", root / f"{arch}_{src.stem}_emu.onnx"
            to_fp16(src, half)
            emulated(half, emu)
            graphs[src.stem] = {"fp32": src, "fp16": half, "emu": emu}
        builds[arch] = {"art": art, "graphs": graphs, "feeds": _feeds(art, SENTENCES)}
    return builds


ARCHS = ["bert", "mpnet"]


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_graph_types(fp16_builds, arch):
    from leap_export.verify import graph_precisions

    for stem, paths in fp16_builds[arch]["graphs"].items():
        original = onnx.load(str(paths["fp32"]))
        model, types = _types(paths["fp16"])
        g = model.graph
        # the contract's I/O: same names, order and types as the FP32 graph
        assert [(i.name, i.type.tensor_type.elem_type) for i in g.input] == [
            (i.name, i.type.tensor_type.elem_type) for i in original.graph.input
        ], stem
        assert [(o.name, o.type.tensor_type.elem_type) for o in g.output] == [
            (o.name, o.type.tensor_type.elem_type) for o in original.graph.output
        ], stem
        assert all(types[o.name] == FLOAT for o in g.output if o.name != "input_ids")
        kinds: dict[str, set[int]] = {}
        for node in g.node:
            out = [types[o] for o in node.output if types.get(o) in (FLOAT, FLOAT16)]
            kinds.setdefault(node.op_type, set()).update(out)
            if node.op_type in (
                "LayerNormalization",
                "Softmax",
                "LpNormalization",
            ) or node.op_type.startswith("Reduce"):
                assert {
                    types[n] for n in [*node.input, *node.output] if n and types[n] in (FLOAT, FLOAT16)
                } == {FLOAT}, (stem, node.name)
            if node.op_type == "MatMul" and any(
                t.name in node.input and t.data_type == FLOAT16 for t in g.initializer
            ):
                assert types[node.output[0]] == FLOAT16  # a dense layer
        assert kinds["MatMul"] == {FLOAT, FLOAT16}, stem  # dense and attention FP16, pooling FP32
        assert kinds["Erf"] == {FLOAT16} and FLOAT16 in kinds["Add"], stem
        # the pooled vector and the score are computed in FP32 from an FP32 pooling MatMul, whose weights
        # come from the mask (pool_weights in a segment graph; the same tensor, unnamed, in full.onnx)
        producer = {o: n for n in g.node for o in n.output}
        for out in [o.name for o in g.output if o.name.startswith("pooled")]:
            node = producer[out]
            while node.op_type != "MatMul":
                assert types[node.output[0]] == FLOAT
                node = producer[node.input[0]]
            assert {types[n] for n in [*node.input, *node.output]} == {FLOAT}, (stem, node.name)
            weights = node.input[0]
            assert weights == "pool_weights" or stem == "full", (stem, weights)
        if "score" in types:
            assert types["score"] == FLOAT
        # the mask-derived tensors stay FP32 where they are made
        for name in ("mask_bias", "pool_weights"):
            if name in producer:
                assert types[name] == FLOAT
        assert graph_precisions([paths["fp16"]])[paths["fp16"]] == "fp16"
        assert graph_precisions([paths["emu"]])[paths["emu"]] == "fp32"


def _cos(a, b):
    a, b = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (a, b))
    return (a * b).sum(-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_graphs_run_on_onnxruntime_cpu(fp16_builds, arch):
    build = fp16_builds[arch]
    for stem, paths in build["graphs"].items():
        got, want = _run(paths["fp16"], build["feeds"][stem]), _run(paths["fp32"], build["feeds"][stem])
        assert got.keys() == want.keys()
        for name, value in got.items():
            assert value.dtype == np.float32 and value.shape == want[name].shape, (stem, name)
            assert np.isfinite(value).all(), (stem, name)
        assert _cos(got["pooled"], want["pooled"]).min() > 0.999, stem


# numpy warns where MPNet's bucket Log meets log(0) (a masked-out branch) and where FP16 overflows on purpose
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("arch", ARCHS)
def test_emulation_agrees_with_reference_evaluator(fp16_builds, arch):
    import onnxruntime as ort

    build = fp16_builds[arch]
    for stem, paths in build["graphs"].items():
        feeds = build["feeds"][stem]
        names = [o.name for o in onnx.load(str(paths["fp16"]), load_external_data=False).graph.output]
        ref = dict(zip(names, reference_evaluator(paths["fp16"]).run(None, feeds), strict=True))
        emu = _run(paths["emu"], feeds)
        fp32 = _run(paths["fp32"], feeds)

        def rel_err(got, name, ref=ref):
            return float(np.abs(got[name] - ref[name]).mean() / np.abs(ref[name]).mean())

        # the emulation is far closer to true FP16 than FP32 is (bounds: module docstring)
        for name in [n for n in ("pooled", "hidden_out") if n in ref]:
            got, base = rel_err(emu, name), rel_err(fp32, name)
            assert got <= RATIO_MAX * base, (stem, name, got, base)
        assert rel_err(emu, "pooled") <= REL_ERR_MAX, stem
        if "score" in ref:  # a cosine near 1: FP32's own rounding dominates; measured <= 3e-7
            assert np.abs(emu["score"] - ref["score"]).max() <= SCORE_DIFF_MAX, stem
        # ONNX Runtime's optimiser keeps the rounding: every level gives the same result
        plain = _run(paths["emu"], feeds, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        for name in names:
            np.testing.assert_allclose(emu[name], plain[name], rtol=0, atol=1e-6, err_msg=f"{stem} {name}")


def _overflow_graph(path: Path) -> None:
    """y = LayerNorm(x @ W + b): x @ W is 80000 (finite in FP32, past FP16's 65504)."""
    from onnx import helper

    w = onnx.numpy_helper.from_array(np.full((2, 4), 200.0, np.float32), "W")
    b = onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b")
    scale = onnx.numpy_helper.from_array(np.ones(4, np.float32), "scale")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="dense"),
        helper.make_node("Add", ["xw", "b"], ["y"], name="bias"),
        helper.make_node("LayerNormalization", ["y", "scale", "b"], ["z"], name="norm", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "overflow",
        [helper.make_tensor_value_info("x", FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("y", FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("z", FLOAT, ["batch", 4]),
        ],
        [w, b, scale],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflow_becomes_inf_in_the_fp16_graph_and_its_emulation(tmp_path):
    src, half, emu = tmp_path / "f32.onnx", tmp_path / "f16.onnx", tmp_path / "emu.onnx"
    _overflow_graph(src)
    to_fp16(src, half)
    emulated(half, emu)
    x = {"x": np.array([[200.0, 200.0], [1.0, 2.0]], np.float32)}
    fp32 = _run(src, x)
    assert np.isfinite(fp32["y"]).all() and fp32["y"][0, 0] == 80000.0
    ref = dict(zip(["y", "z"], reference_evaluator(half).run(None, x), strict=True))
    got = _run(emu, x)
    for out in (ref, got):
        assert np.isposinf(out["y"][0]).all()  # past 65504: inf, as on a GPU
        assert np.isnan(out["z"][0]).all()  # and LayerNorm of inf is NaN
        np.testing.assert_array_equal(out["y"][1], np.float16(fp32["y"][1]).astype(np.float32))
    _, types = _types(half)
    assert types["xw"] == FLOAT16 and types["y"] == FLOAT


def test_conversion_is_deterministic(fp16_builds, tmp_path):
    paths = fp16_builds["bert"]["graphs"]["seg_00"]
    to_fp16(paths["fp32"], tmp_path / "again.onnx")
    emulated(tmp_path / "again.onnx", tmp_path / "again_emu.onnx")
    assert (tmp_path / "again.onnx").read_bytes() == paths["fp16"].read_bytes()
    assert (tmp_path / "again_emu.onnx").read_bytes() == paths["emu"].read_bytes()
    onnx.checker.check_model(str(paths["fp16"]), full_check=True)
    onnx.checker.check_model(str(paths["emu"]), full_check=True)
