"""FP16 graphs for the ``fp16`` variant, and an exact FP16 oracle that runs on ONNX Runtime's CPU provider.

:func:`to_fp16` writes an FP16-typed copy of one segment (or monolithic) graph. The dense and attention
MatMuls, the bias and residual Adds, GELU (Div, Erf, Add, Mul), the embedding tables and every weight become
FP16; these stay FP32, each for a reason:

- ``LayerNormalization`` (and the decomposed form's ``Pow``/``Sqrt``/mean-subtracting ``Sub``/``Div``):
  BERT's LayerNorm overflows in FP16 on GPUs (TensorRT issues 2564, 2781, 3101);
- ``Softmax`` and every ``Reduce*``: sums of many terms;
- the *auxiliary* tensors, computed from integers (the attention mask, position indices, MPNet's
  relative-position buckets) and scalar constants only, with the ops that take them: ``mask_bias`` holds
  float32's minimum (-inf in FP16) and MPNet's bucket index is a ``Log`` truncated to an integer, which FP16
  would move across bucket borders; this includes the Add of ``mask_bias`` to the attention logits;
- the pooling (the MatMul that takes ``pool_weights``) and everything downstream of it or of
  ``ref_pooled``: ``pooled``, ``pooled_l<r>``, ``LpNormalization``, the score;
- every graph input and output: the runtime's contract is float32 at every precision
  (:mod:`trt_runtime.contract`); Casts inside the graph convert at the FP16/FP32 borders.

The same graph serves TensorRT (strongly typed) and ONNX Runtime CUDA. ONNX Runtime's CPU provider is no
FP16 oracle: it has FP16 kernels for few ops and computes the others in FP32 behind inserted Casts, so FP16
rounding and overflow inside them never happen. :func:`emulated` writes an FP32 graph that reproduces the
FP16 graph's numerics on any provider: every FP16 tensor becomes an FP32 tensor rounded to FP16 (a
``Cast`` to FLOAT16 and back after every op that produced an FP16 value), every FP16 weight an FP32 one
holding the same values. Operands are then exact FP16 values, products and sums accumulate in FP32 (as a
GPU's tensor cores do), and a value past 65504 becomes inf, as on the GPU. ONNX Runtime's optimiser keeps
the Cast pairs at every level (checked in tests/test_fp16.py against ORT_DISABLE_ALL; ORT_ENABLE_ALL only
drops the FP32-to-FP32 Casts left where the FP16 graph went back to FP32). It agrees with true FP16 up to
the order of FP32 summation, as two GPUs do with each other: a sum that lands near an FP16 rounding border
may round the other way, and the difference propagates (:func:`reference_evaluator` runs the FP16 graph in
numpy FP16, exact but slow).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT, FLOAT16

# kept FP32 by op type: normalisation, softmax and reductions (sums of many terms, or FP16 overflow on GPUs)
FP32_OPS = frozenset(
    {
        "LayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "Softmax",
        "LogSoftmax",
        "LpNormalization",
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
        "Pow",
        "Sqrt",
    }
)
# ops whose float input may have any float type (their output does not follow it): no Cast in front
TYPE_AGNOSTIC = frozenset({"Cast", "Shape", "Size", "CastLike"})
# ops whose output type an attribute fixes: never FP16 nodes (their float inputs, if any, stay as found)
DTYPE_FIXED = frozenset(
    {"Cast", "CastLike", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}
)
# ops whose output values are a subset of their inputs' (data movement, selection, sign): an FP16 input
# gives an exactly FP16-representable output, so the emulation needs no rounding after them
VALUE_PRESERVING = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
        "Gather",
        "GatherElements",
        "GatherND",
        "Slice",
        "Concat",
        "Split",
        "Expand",
        "Tile",
        "Where",
        "Max",
        "Min",
        "Relu",
        "Neg",
        "Abs",
    }
)
# graph inputs that carry the mask / pooling weights / an earlier pooled vector (trt_runtime.contract)
AUX_INPUTS = ("attention_mask", "mask_bias", "pool_weights")
POOLED_INPUTS = ("ref_pooled",)
FP16_MAX = float(np.finfo(np.float16).max)


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write the FP16-typed copy of the graph at ``src`` to ``dst`` (module docstring: what stays FP32).

    Graph inputs and outputs keep their FP32 types; weights used only by FP16 ops are stored FP16 (an
    FP32 weight beyond +-65504 is clipped to it), one used by both kinds is stored in both. The output is
    deterministic (same bytes for the same input) and passes ``onnx.checker``.
    """
    import onnx

    model = _load_plain(src)
    graph = model.graph
    types = _tensor_types(model)
    keep32 = _fp32_nodes(graph, types)
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}

    def is_float(name: str) -> bool:
        return bool(name) and types.get(name) == FLOAT

    def fp16_node(i: int) -> bool:
        node = graph.node[i]
        if i in keep32 or node.op_type in DTYPE_FIXED or node.op_type == "Constant":
            return False
        return any(is_float(t) for t in [*node.input, *node.output])

    def wanted(i: int, name: str) -> int | None:
        """The float type node ``i`` takes input ``name`` in, or None where it takes either."""
        if graph.node[i].op_type in TYPE_AGNOSTIC:
            return None
        return FLOAT16 if fp16_node(i) else FLOAT

    # weights: each float initializer in the type(s) its consumers take
    demand: dict[str, set[int]] = defaultdict(set)
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in inits and is_float(name):
                demand[name].add(wanted(i, name) or FLOAT)
    taken = _names(graph)
    new_inits, init_type, dual = [], {}, {}
    for t in graph.initializer:
        kinds = demand.get(t.name, set())
        if t.data_type != FLOAT or FLOAT16 not in kinds:
            new_inits.append(t)
            init_type[t.name] = t.data_type
            continue
        half = onnx.numpy_helper.from_array(_half(onnx.numpy_helper.to_array(t)), t.name)
        if kinds == {FLOAT16}:
            new_inits.append(half)
            init_type[t.name] = FLOAT16
        else:  # both: the FP32 original for the FP32 ops, an FP16 copy for the others
            new_inits.append(t)
            half.name = dual[t.name] = _fresh(f"{t.name}/fp16", taken)
            new_inits.append(half)
            init_type[t.name] = FLOAT

    # where each float tensor is found, and in which type
    source: dict[str, tuple[str, int]] = {}
    for inp in graph.input:
        if is_float(inp.name):
            source[inp.name] = (inp.name, FLOAT)
    for name, kind in init_type.items():
        if kind in (FLOAT, FLOAT16):
            source[name] = (name, kind)
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list = []
    for i, node in enumerate(graph.node):
        if not fp16_node(i):
            continue
        for attr in node.attribute:  # ConstantOfShape's value
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                half = _half(onnx.numpy_helper.to_array(attr.t))
                attr.t.CopyFrom(onnx.numpy_helper.from_array(half, attr.t.name))
        for j, out in enumerate(node.output):
            if not is_float(out):
                continue
            if out in graph_outputs:  # the contract's FP32 output: the FP16 value is cast back to it
                node.output[j] = _fresh(f"{out}/fp16", taken)
                source[out] = (node.output[j], FLOAT16)
                casts[(out, FLOAT)] = out
                new_nodes.append(_cast(node.output[j], out, FLOAT, _fresh(f"{out}/to_fp32", taken)))
            else:
                source[out] = (out, FLOAT16)
    for i, node in enumerate(graph.node):
        if i in keep32 or not fp16_node(i):
            for out in node.output:
                if is_float(out) and out not in source:
                    source[out] = (out, FLOAT)

    def value(name: str, want: int | None) -> str:
        have_name, have = source[name]
        if want is None or want == have:
            return have_name
        if name in dual and want == FLOAT16:
            return dual[name]
        key = (name, want)
        if key not in casts:
            suffix = "fp16" if want == FLOAT16 else "fp32"
            casts[key] = _fresh(f"{name}/{suffix}", taken)
            new_nodes.append(_cast(have_name, casts[key], want, _fresh(f"{name}/to_{suffix}", taken)))
        return casts[key]

    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.input):
            if is_float(name) and name in source:
                node.input[j] = value(name, wanted(i, name))

    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    nodes = _topological([*graph.node, *new_nodes], graph)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    _finish(model, dst)


def emulated(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write an FP32 graph with the FP16 graph ``src``'s numerics: the FP16 oracle for ONNX Runtime's CPU.

    Every FP16 tensor of ``src`` becomes an FP32 tensor holding the FP16-rounded value: a ``Cast`` to
    FLOAT16 and one back follow each op that produced an FP16 value (except ops that only move, select or
    negate values, whose outputs are FP16 values already), FP16 weights and constants become FP32 ones with
    the same values. Inputs and outputs must be FP32 (as :func:`to_fp16` writes them).
    """
    import onnx

    model = _load_plain(src)
    graph = model.graph
    for io in [*graph.input, *graph.output]:
        if io.type.tensor_type.elem_type == FLOAT16:
            raise ValueError(f"{src}: graph input/output {io.name!r} is FLOAT16; emulated() needs FP32 I/O")
    types = _tensor_types(model)
    for i, t in enumerate(graph.initializer):
        if t.data_type == FLOAT16:
            arr = onnx.numpy_helper.to_array(t).astype(np.float32)
            graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    taken = _names(graph)
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT16:
                arr = onnx.numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(onnx.numpy_helper.from_array(arr, attr.t.name))
        nodes.append(node)
        if node.op_type in VALUE_PRESERVING:
            continue
        for j, out in enumerate(node.output):
            if not out or types.get(out) != FLOAT16:
                continue
            half = _fresh(f"{out}/half", taken)
            if node.op_type == "Cast":  # already the rounding: only the way back to FP32 is new
                node.output[j] = half
            else:
                node.output[j] = _fresh(f"{out}/raw", taken)
                nodes.append(_cast(node.output[j], half, FLOAT16, _fresh(f"{out}/round", taken)))
            nodes.append(_cast(half, out, FLOAT, _fresh(f"{out}/back", taken)))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    _finish(model, dst)


def reference_evaluator(path: str | os.PathLike):
    """``onnx.reference.ReferenceEvaluator`` for ``path``: true FP16 numerics in numpy (exact, slow).

    Its GatherElements fails on more than 32 distinct indices (``np.choose``), which BERT's token-type
    lookup hits; this one uses ``np.take_along_axis``.
    """
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        def _run(self, data, indices, axis=None):
            axis = 0 if axis is None else int(axis)
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, indices.astype(np.int64), axis=axis),)

    return ReferenceEvaluator(str(path), new_ops=[GatherElements])


# --------------------------------------------------------------------------------------------------------


def _load_plain(src):
    """The model with Constant nodes as initializers and Identity-of-initializer nodes resolved."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        for j, name in enumerate(node.input):
            node.input[j] = rename.get(name, name)
        tensor = _constant_tensor(node) if node.op_type == "Constant" else None
        if tensor is not None:
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            inits.add(tensor.name)
            continue
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _constant_tensor(node):
    """A Constant node's value as a TensorProto, or None for the kinds left as nodes (sparse, strings)."""
    import onnx

    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(attr.t)
        return tensor
    dtypes = {
        "value_float": np.float32,
        "value_floats": np.float32,
        "value_int": np.int64,
        "value_ints": np.int64,
    }
    if attr.name in dtypes:
        value = onnx.helper.get_attribute_value(attr)
        return onnx.numpy_helper.from_array(np.asarray(value, dtype=dtypes[attr.name]))
    return None


def _tensor_types(model) -> dict[str, int]:
    """Element type of every tensor, from the graph and ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*g.input, *g.output, *g.value_info]:
        types[vi.name] = vi.type.tensor_type.elem_type
    missing = [o for n in g.node for o in n.output if o and o not in types]
    if missing:
        raise ValueError(f"no type inferred for {missing[:5]}: cannot convert this graph")
    return types


def _fp32_nodes(graph, types: dict[str, int]) -> set[int]:
    """Indices of the nodes that stay FP32 (module docstring)."""
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(i)
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    inits = {t.name: t for t in graph.initializer}

    def scalar_const(name: str) -> bool:
        t = inits.get(name)
        return t is not None and int(np.prod(t.dims)) <= 1

    keep = {i for i, node in enumerate(graph.node) if node.op_type in FP32_OPS}
    # decomposed LayerNorm: x - mean(x), var + eps, ... / sqrt(var + eps)
    for i, node in enumerate(graph.node):
        srcs = {graph.node[producer[n]].op_type for n in node.input if n in producer}
        if node.op_type in ("Sub", "Add", "Div") and srcs & {"ReduceMean", "Sqrt"}:
            keep.add(i)
    # auxiliary tensors: from integers, the mask inputs and scalar constants only
    aux = {name for name in AUX_INPUTS if name in {i.name for i in graph.input}}
    aux |= {name for name, kind in types.items() if kind not in (FLOAT, FLOAT16) and name not in inits}
    aux |= {name for name, t in inits.items() if t.data_type not in (FLOAT, FLOAT16)}
    for i, node in enumerate(graph.node):
        ins = [n for n in node.input if n]
        if ins and all(n in aux or scalar_const(n) for n in ins) and any(n in aux for n in ins):
            aux.update(o for o in node.output if o)
            if any(types.get(o) == FLOAT for o in node.output):
                keep.add(i)
    float_aux = {n for n in aux if types.get(n) == FLOAT}
    # the ops that take an auxiliary float tensor (mask_bias's Add, the pooling MatMul) ...
    takers = [
        i for i, node in enumerate(graph.node) if i not in keep and any(n in float_aux for n in node.input)
    ]
    keep.update(takers)
    # ... and everything downstream of the pooling and of ref_pooled
    frontier = [
        out
        for i in takers
        if graph.node[i].op_type in ("MatMul", "Gemm", "Einsum")
        for out in graph.node[i].output
    ]
    frontier += [n for n in POOLED_INPUTS if n in {i.name for i in graph.input}]
    seen = set(frontier)
    while frontier:
        name = frontier.pop()
        for i in consumers.get(name, []):
            keep.add(i)
            for out in graph.node[i].output:
                if out and out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return keep


def _names(graph) -> set[str]:
    """Every tensor and node name in ``graph``."""
    names = {t.name for t in graph.initializer} | {i.name for i in [*graph.input, *graph.output]}
    for node in graph.node:
        names.update([node.name, *node.input, *node.output])
    return names


def _fresh(name: str, taken: set[str]) -> str:
    """``name``, or ``name_<k>`` where it is taken; recorded as taken."""
    k, fresh = 0, name
    while fresh in taken:
        k += 1
        fresh = f"{name}_{k}"
    taken.add(fresh)
    return fresh


def _half(arr: np.ndarray) -> np.ndarray:
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)


def _cast(src: str, dst: str, to: int, name: str):
    import onnx

    return onnx.helper.make_node("Cast", [src], [dst], name=name, to=to)


def _topological(nodes: list, graph) -> list:
    """Nodes in an order where each comes after its inputs' producers (stable: the given order otherwise)."""
    import heapq

    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    produced = {out for node in nodes for out in node.output}
    waiting: dict[int, set[str]] = {}
    users: dict[str, list[int]] = defaultdict(list)
    for k, node in enumerate(nodes):
        waiting[k] = {n for n in node.input if n not in available}
        for n in waiting[k]:
            if n not in produced:
                raise ValueError(f"tensor {n!r} has no producer")
            users[n].append(k)
    ready = [k for k, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for out in nodes[k].output:
            for u in users.pop(out, []):
                waiting[u].discard(out)
                if not waiting[u]:
                    heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    return order


def _finish(model, dst) -> None:
    import onnx

    onnx.checker.check_model(model, full_check=True)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.write_bytes(model.SerializeToString(deterministic=True))
    os.replace(tmp, dst)
