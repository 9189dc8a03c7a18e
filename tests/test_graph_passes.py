"""leap_export.graph_passes: constant reshape targets where shapes prove them, nothing else."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from leap_export.graph_passes import static_reshapes


def _dims_of(source: str, prefix: str) -> list:
    """Nodes computing Unsqueeze(Gather(Shape(source), i)) for i = 0, 1: the torch-export pattern."""
    nodes = [helper.make_node("Shape", [source], [f"{prefix}shape"])]
    for i in (0, 1):
        nodes += [
            helper.make_node("Constant", [], [f"{prefix}i{i}"], value=numpy_helper.from_array(np.array(i, np.int64))),
            helper.make_node("Gather", [f"{prefix}shape", f"{prefix}i{i}"], [f"{prefix}d{i}"], axis=0),
            helper.make_node("Constant", [], [f"{prefix}ax{i}"], value=numpy_helper.from_array(np.array([0], np.int64))),
            helper.make_node("Unsqueeze", [f"{prefix}d{i}", f"{prefix}ax{i}"], [f"{prefix}u{i}"]),
        ]
    return nodes


def _model(shape_source: str) -> onnx.ModelProto:
    """y = Reshape(x + 1, [dims 0 and 1 of ``shape_source``, 2, 3]); x: [a, b, 6], z: [c, d, 6]."""
    nodes = [helper.make_node("Add", ["x", "one"], ["x1"])]
    nodes += _dims_of(shape_source, "s/")
    nodes += [helper.make_node("Concat", ["s/u0", "s/u1", "two", "three"], ["target"], axis=0),
              helper.make_node("Reshape", ["x1", "target"], ["y"]),
              helper.make_node("Identity", ["z"], ["z_out"])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", 6]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["c", "d", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", 2, 3]),
         helper.make_tensor_value_info("z_out", TensorProto.FLOAT, ["c", "d", 6])],
        [numpy_helper.from_array(np.array(1, np.float32), "one"),
         numpy_helper.from_array(np.array([2], np.int64), "two"),
         numpy_helper.from_array(np.array([3], np.int64), "three")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x, z):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x, "z": z})[0]


def test_reshape_of_own_dims_becomes_constant_and_shape_nodes_go():
    model = _model("x")
    before = onnx.ModelProto.FromString(model.SerializeToString())
    assert static_reshapes(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Add", "Reshape", "Identity"]  # the Shape/Gather/Unsqueeze/Concat chain is gone
    target = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[model.graph.node[1].input[1]]
    assert target.tolist() == [0, 0, 2, 3]
    onnx.checker.check_model(model)
    rng = np.random.default_rng(1)
    for a, b in ((1, 4), (5, 2)):
        x = rng.standard_normal((a, b, 6)).astype(np.float32)
        z = rng.standard_normal((a + 1, b + 2, 6)).astype(np.float32)
        np.testing.assert_array_equal(_run(model, x, z), _run(before, x, z))


def test_dims_read_from_an_unrelated_tensor_are_left_alone():
    # z's dims are not provably x's: a constant target would change the result when they differ
    model = _model("z")
    before = model.SerializeToString()
    assert static_reshapes(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_exported_segments_have_no_shape_arithmetic_left_in_layers(tiny_artifacts, arch):
    from trt_runtime.manifest import load_manifest

    manifest = load_manifest(tiny_artifacts[arch])
    for path in manifest.segment_paths():
        model = onnx.load(str(path))
        reshapes = [n for n in model.graph.node if n.op_type == "Reshape"]
        assert reshapes
        inits = {i.name for i in model.graph.initializer}
        consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
        # every attention reshape takes a constant target (the pass ran and proved each one)
        assert all(n.input[1] in inits | consts for n in reshapes), path.name
