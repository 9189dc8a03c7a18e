"""The batch-1 graph: every segment of a build composed into ONE ONNX graph with in-graph exits.

At batch 1 on a CPU the host loop pays a fixed cost per segment ``run`` (README "Benchmarks": tens of
microseconds per extra ONNX Runtime session run, against a ~300 µs MiniLM layer). This graph runs the
same segment graphs in one session run: segment 0 at the top level, then one ``If`` per later segment,
all at depth 1 (nested ``If``s measured ~0.4 ms per nesting level). ``If`` *k* runs segment *k* while
the batch has not exited, and otherwise passes the previous hidden state, pooled vector and exit layer
through::

    s0 = segment_0(input_ids, attention_mask)
    go_0 = any(score_0 < thresholds[0])
    (h_1, p_1, layer_1, go_1) = If(go_0, then: segment_1(h_0, ...), else: (h_0, p_0, b_0, false))
    ...
    outputs: pooled (the exiting segment's), exit_layer, scores (one per segment, NaN where not run)

``thresholds[k]`` is theta where the policy lets a sample exit after segment *k* and +inf elsewhere, so
min_layer and theta stay runtime choices. The exit decision is per batch, so the runtime uses this
graph only for single-row batches; larger batches take the host loop with per-sample compaction.
Built for plans whose exit scores compare with the previous segment's pooled vector (patience 1, the
default); other plans have no batch-1 graph and always use the host loop.
"""

from __future__ import annotations

from pathlib import Path

BATCH1_NAME = "exit_b1.onnx"


def supports(segments: list[dict]) -> bool:
    """Whether a plan can be composed: every reference is in-graph or the previous segment's ``pooled``."""
    return len(segments) > 1 and all(
        s["ref_from"] is None or (s["ref_from"] == s["index"] - 1 and s["ref_output"] == "pooled")
        for s in segments
    )


def compose(segment_files: list[Path], segments: list[dict], hidden_size: int, out: Path) -> None:
    """Write the batch-1 graph of ``segment_files`` (manifest ``segments`` geometry) to ``out``."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper

    if not supports(segments):
        raise ValueError("the batch-1 graph needs patience-1 references (ref_from = previous segment)")
    graphs = [onnx.load(str(f)) for f in segment_files]
    initializers: list = []

    def inline(model, prefix: str, rename: dict[str, str]) -> list:
        """The model's nodes with every tensor name prefixed, except the ones ``rename`` maps."""
        def name(n: str) -> str:
            return n if n == "" else rename.get(n, prefix + n)

        for t in model.graph.initializer:
            t2 = onnx.TensorProto()
            t2.CopyFrom(t)
            t2.name = prefix + t.name
            initializers.append(t2)
        nodes = []
        for n in model.graph.node:
            n2 = onnx.NodeProto()
            n2.CopyFrom(n)
            del n2.input[:]
            n2.input.extend(name(x) for x in n.input)
            del n2.output[:]
            n2.output.extend(name(x) for x in n.output)
            n2.name = prefix + n.name
            nodes.append(n2)
        return nodes

    def const(name: str, value, dtype) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(f"{name}_value", dtype, [], [value]))

    def go(tag: str, score: str, k: int) -> list:
        # any row still below its threshold -> run the next segment
        return [
            const(f"{tag}_k", k, TP.INT64),
            helper.make_node("Gather", ["thresholds", f"{tag}_k"], [f"{tag}_t"], axis=0),
            helper.make_node("Less", [score, f"{tag}_t"], [f"{tag}_less"]),
            helper.make_node("Cast", [f"{tag}_less"], [f"{tag}_f"], to=TP.FLOAT),
            helper.make_node("ReduceMax", [f"{tag}_f"], [f"{tag}_max"], keepdims=0),
            helper.make_node("Cast", [f"{tag}_max"], [f"{tag}_go"], to=TP.BOOL),
        ]

    def identity(src: str, dst: str) -> onnx.NodeProto:
        return helper.make_node("Identity", [src], [dst])

    def info(name: str, dtype) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, dtype, None)

    n = len(graphs)
    ends = [s["layers"][1] for s in segments]
    nodes = inline(graphs[0], "s0/", {"input_ids": "input_ids", "attention_mask": "attention_mask"})
    nodes += go("g0", "s0/score", 0)
    nodes += [identity("s0/hidden_out", "H0"), identity("s0/pooled", "P0"), const("L0", ends[0], TP.INT64),
              identity("g0_go", "go0"), identity("s0/score", "S0")]
    nan = float("nan")
    for k in range(1, n):
        last = k == n - 1
        rename = {"hidden_in": f"H{k - 1}", "mask_bias": "s0/mask_bias", "pool_weights": "s0/pool_weights",
                  "ref_pooled": f"P{k - 1}"}
        then_nodes = inline(graphs[k], f"s{k}/", rename)
        else_nodes = [identity(f"P{k - 1}", f"e{k}_P"), identity(f"L{k - 1}", f"e{k}_L"),
                      helper.make_node("Shape", [f"P{k - 1}"], [f"e{k}_rows"], end=1),
                      helper.make_node("ConstantOfShape", [f"e{k}_rows"], [f"e{k}_S"],
                                       value=helper.make_tensor("nan", TP.FLOAT, [1], [nan]))]
        then_nodes += [identity(f"s{k}/pooled", f"t{k}_P"), const(f"t{k}_L", ends[k], TP.INT64),
                       identity(f"s{k}/score", f"t{k}_S")]
        names = ["P", "L", "S"]
        types = {"P": TP.FLOAT, "L": TP.INT64, "S": TP.FLOAT, "H": TP.FLOAT, "go": TP.BOOL}
        if not last:
            then_nodes += [identity(f"s{k}/hidden_out", f"t{k}_H"), *go(f"t{k}g", f"s{k}/score", k),
                           identity(f"t{k}g_go", f"t{k}_go")]
            else_nodes += [identity(f"H{k - 1}", f"e{k}_H"), const(f"e{k}_go", False, TP.BOOL)]
            names += ["H", "go"]
        then_graph = helper.make_graph(then_nodes, f"run_segment_{k}", [], [info(f"t{k}_{x}", types[x]) for x in names])
        else_graph = helper.make_graph(else_nodes, f"skip_segment_{k}", [], [info(f"e{k}_{x}", types[x]) for x in names])
        outputs = [f"P{k}", f"L{k}", f"S{k}"] + ([] if last else [f"H{k}", f"go{k}"])
        nodes.append(helper.make_node("If", [f"go{k - 1}"], outputs, then_branch=then_graph,
                                      else_branch=else_graph, name=f"segment_{k}"))
    nodes += [identity(f"P{n - 1}", "pooled"), identity(f"L{n - 1}", "exit_layer")]
    nodes.append(helper.make_node("Concat", [f"S{k}" for k in range(n)], ["scores"], axis=0))
    graph = helper.make_graph(
        nodes,
        "leap_export_batch1",
        [
            helper.make_tensor_value_info("input_ids", TP.INT32, [1, "sequence"]),
            helper.make_tensor_value_info("attention_mask", TP.INT32, [1, "sequence"]),
            helper.make_tensor_value_info("thresholds", TP.FLOAT, [n]),
        ],
        [
            helper.make_tensor_value_info("pooled", TP.FLOAT, [1, hidden_size]),
            helper.make_tensor_value_info("exit_layer", TP.INT64, []),
            helper.make_tensor_value_info("scores", TP.FLOAT, [n]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=graphs[0].opset_import)
    model.ir_version = graphs[0].ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
