"""One graph from all segments: every exit head computed, no exit possible (``bench --breakdown``).

The segments of a build are composed into a single ONNX graph (segment ``k``'s ``hidden_out``,
``mask_bias``, ``pool_weights`` and reference pooled vector wired to segment ``k + 1``'s inputs) that
outputs ``pooled_<k>`` and ``score_<k>`` for every segment. It runs exactly the work of the segment
chain with exits off, in one ONNX Runtime run. Timed next to the monolithic graph and the chain, it
splits the monitoring overhead in two:

- ``one graph`` / ``monolithic``: what the monitoring ops themselves cost (pooling + score per boundary);
- ``segmented`` / ``one graph``: what running the layers as separate sessions costs (the graph breaks).

It is a measurement instrument, not a deployment artifact: it cannot stop early, and it holds a second
copy of every weight. It is built in memory from the segment files and never written to the build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leap_export.errors import LeapError


def merge_segments(artifacts: str | Path, variant: str | None = None) -> Any:
    """The ``onnx.ModelProto`` of all segments of ``variant`` composed into one graph (see module doc)."""
    import onnx
    from onnx import helper

    from trt_runtime.contract import CARRIED
    from trt_runtime.manifest import load_manifest

    manifest = load_manifest(artifacts, variant=variant)
    specs = manifest.segments
    models = [onnx.load(str(p)) for p in manifest.segment_paths(variant)]
    nodes, inits, outputs = [], [], []
    inputs = list(models[0].graph.input)
    produced: dict[tuple[int, str], str] = {}  # (segment, output name) -> tensor name in the merged graph
    for k, (spec, model) in enumerate(zip(specs, models, strict=True)):
        graph = model.graph
        own_inputs = {i.name for i in graph.input}

        def rename(name: str, k=k, spec=spec, own_inputs=own_inputs) -> str:
            if not name:
                return name
            if name in own_inputs and k > 0:
                if name == "hidden_in":
                    return produced[(k - 1, "hidden_out")]
                if name == "ref_pooled":
                    return produced[(spec.ref_from, spec.ref_output)]
                if name in CARRIED:
                    return produced[(0, name)]
                raise LeapError(f"segment {k} has an input {name!r} the segment contract does not define")
            if name in own_inputs:
                return name  # the first segment's inputs are the merged graph's inputs
            if name in ("pooled", "score"):
                return f"{name}_{k}"
            return f"s{k}/{name}"

        for init in graph.initializer:
            init.name = rename(init.name)
            inits.append(init)
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise LeapError(f"segment {k} has a control-flow node ({node.op_type}); it cannot be merged")
            node.input[:] = [rename(x) for x in node.input]
            node.output[:] = [rename(x) for x in node.output]
            node.name = f"s{k}/{node.name}"
            nodes.append(node)
        for out in graph.output:
            produced[(k, out.name)] = rename(out.name)
            if out.name in ("pooled", "score"):
                out.name = rename(out.name)
                outputs.append(out)
    opsets: dict[str, int] = {}
    for model in models:
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    merged = helper.make_model(
        helper.make_graph(nodes, "leap_export_merged", inputs, outputs, inits),
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
    )
    merged.ir_version = models[0].ir_version
    seen: set[tuple[str, str]] = set()
    for model in models:
        for f in model.functions:
            if (f.domain, f.name) not in seen:
                seen.add((f.domain, f.name))
                merged.functions.append(f)
    return merged
