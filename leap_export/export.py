"""Export a model into per-layer-segment ONNX graphs plus a monolithic full-depth graph.

Segment ``i`` covers layers ``(a_i, b_i]``. Its graph outputs its hidden states, the masked-mean
pooled vector of layer ``b_i`` and the convergence score ``cos(p_b, p_{b-k})``, computed in the graph so
the host never recomputes it. When ``b - k`` lies before the segment, the segment takes that layer's
pooled vector as an extra input ``ref_pooled`` (``ref_from`` names the segment that produced it).

The first segment takes token ids and the int32 attention mask, and also outputs the two mask-derived
tensors every later segment needs: ``mask_bias`` (the additive attention mask, ``[B, 1, 1, S]``) and
``pool_weights`` (mask / token count, ``[B, 1, S]``). Later segments take those instead of the mask, so a
segment boundary costs one MatMul (pooling) and a normalised dot product (score), not a rebuild of the
mask: each op at a boundary is paid once per segment, by every batch.

The folder is written to a temporary sibling and renamed into place, never half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from leap_export.arch import get_architecture
from leap_export.errors import LeapError
from leap_export.exitcheck import EXITS_CHOICES, check_exits
from leap_export.exitcheck import decide as decide_exits
from leap_export.sources import TOKENIZER_FILES, ModelSource, resolve_model
from trt_runtime.contract import HIDDEN_DTYPE, IDS_DTYPE, MASK_TENSORS
from trt_runtime.fileio import ensure_parent, replace_folder, temp_folder, write_json_atomic
from trt_runtime.manifest import FORMAT, MANIFEST_NAME, SCHEMA_VERSION, sha256_file
from trt_runtime.policy import ExitPolicy

log = logging.getLogger(__name__)

OPSET = 17
MIN_OPSET, MAX_OPSET = 12, 20  # MPNet needs 12; torch 2.13's TorchScript exporter supports up to 20


@dataclass(frozen=True)
class SegmentPlan:
    index: int
    start: int
    end: int
    ref_layer: int  # the layer whose pooled vector the score compares with: end - patience
    ref_from: int | None = None  # segment that produced it, when ref_layer < start
    ref_output: str | None = None  # that segment's output holding it ("pooled" or "pooled_l<r>")
    extra_layers: tuple[int, ...] = ()  # internal layers whose pooled vector a later segment needs

    @property
    def inputs(self) -> list[dict[str, Any]]:
        first = (
            {"name": "input_ids", "dtype": IDS_DTYPE, "shape": ["batch", "sequence"]}
            if self.start == 0
            else {"name": "hidden_in", "dtype": HIDDEN_DTYPE, "shape": ["batch", "sequence", "hidden"]}
        )
        if self.start == 0:
            io = [first, {"name": "attention_mask", "dtype": IDS_DTYPE, "shape": ["batch", "sequence"]}]
        else:
            io = [first, *MASK_TENSORS]
        if self.ref_from is not None:
            io.append({"name": "ref_pooled", "dtype": HIDDEN_DTYPE, "shape": ["batch", "hidden"]})
        return io

    def outputs(self, last: bool) -> list[dict[str, Any]]:
        io = (
            []
            if last
            else [{"name": "hidden_out", "dtype": HIDDEN_DTYPE, "shape": ["batch", "sequence", "hidden"]}]
        )
        io += [
            {"name": "pooled", "dtype": HIDDEN_DTYPE, "shape": ["batch", "hidden"]},
            {"name": "score", "dtype": HIDDEN_DTYPE, "shape": ["batch"]},
        ]
        io += [
            {"name": f"pooled_l{r}", "dtype": HIDDEN_DTYPE, "shape": ["batch", "hidden"]}
            for r in self.extra_layers
        ]
        if self.start == 0 and not last:
            io += MASK_TENSORS
        return io


def plan_segments(
    num_layers: int, policy: ExitPolicy, boundaries: list[int] | None = None
) -> list[SegmentPlan]:
    """Default: embeddings + layers 1..min_layer in one segment, then one segment per later layer.

    A segment after which a sample may exit scores cos(p_b, p_{b-k}). When layer b-k lies before the
    segment, the segment that computes it also outputs its pooled vector (``pooled`` at its end,
    ``pooled_l<r>`` inside it) and this one takes it as ``ref_pooled``. A segment after which no
    sample may exit compares with its own input instead (the score is reported, never acted on).
    """
    # with or without --boundaries: the runtime refuses a manifest whose min_layer exceeds the depth
    if policy.min_layer > num_layers:
        raise LeapError(f"min_layer {policy.min_layer} exceeds the model's {num_layers} layers")
    if boundaries is None:
        boundaries = list(range(policy.min_layer, num_layers + 1))
    given = [int(b) for b in boundaries]
    repeated = sorted({b for b in given if given.count(b) > 1})
    if repeated:
        raise LeapError(
            f"boundaries {given} name layer{'s' if len(repeated) > 1 else ''} "
            f"{', '.join(map(str, repeated))} more than once; give each layer once"
        )
    boundaries = sorted(given)
    if not boundaries or boundaries[0] < 1 or boundaries[-1] > num_layers:
        raise LeapError(f"boundaries must lie in 1..{num_layers}, got {boundaries}")
    if boundaries[-1] != num_layers:
        boundaries.append(num_layers)
    spans = list(zip([0, *boundaries[:-1]], boundaries, strict=True))
    extra: dict[int, set[int]] = {i: set() for i in range(len(spans))}
    refs: list[tuple[int, int | None, str | None]] = []
    for start, end in spans:
        exit_capable = policy.may_exit_at(end) and end < num_layers
        ref_layer = end - policy.patience if exit_capable else max(end - policy.patience, start)
        # in-graph only when the reference layer is computed here; at the segment's own input (start > 0)
        # the previous segment already output it as `pooled`: take it instead of pooling the input again
        if ref_layer > start or ref_layer == start == 0:
            refs.append((ref_layer, None, None))
            continue
        producer = next(i for i, (a, b) in enumerate(spans) if a < ref_layer <= b)
        if ref_layer == spans[producer][1]:
            refs.append((ref_layer, producer, "pooled"))
        else:
            extra[producer].add(ref_layer)
            refs.append((ref_layer, producer, f"pooled_l{ref_layer}"))
    return [
        SegmentPlan(i, start, end, ref_layer, ref_from, ref_output, tuple(sorted(extra[i])))
        for i, ((start, end), (ref_layer, ref_from, ref_output)) in enumerate(zip(spans, refs, strict=True))
    ]


def _segment_module(model, arch, plan: SegmentPlan, *, last: bool, pooled_only: bool = False):
    import torch
    from torch import nn

    class Segment(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x, *rest):
            if plan.start == 0:
                # x: [B, S] int32 token ids; rest[0]: [B, S] int32 attention mask
                attention_mask, rest = rest[0], rest[1:]
                hidden = arch.embed(self.model, x.long())
                m = attention_mask.to(hidden.dtype)
                mask_bias = ((1.0 - m) * torch.finfo(hidden.dtype).min)[:, None, None, :]  # [B, 1, 1, S]
                pool_weights = (m / m.sum(1, keepdim=True).clamp(min=1e-9)).unsqueeze(1)  # [B, 1, S]
            else:
                hidden, (mask_bias, pool_weights), rest = x, rest[:2], rest[2:]
            ref_pooled = rest[0] if rest else None

            def pool(h):  # masked mean as one batched MatMul: [B,1,S] @ [B,S,H] -> [B,H]
                return torch.matmul(pool_weights, h).squeeze(1)

            extras = arch.layer_extras(self.model, hidden)
            kept = {}  # layer -> pooled vector, for the score's reference and for later segments
            if plan.start in (plan.ref_layer, *plan.extra_layers):
                kept[plan.start] = pool(hidden)
            for i in range(plan.start, plan.end):
                hidden = arch.run_layer(self.model, i, hidden, mask_bias, extras)
                if i + 1 in (plan.ref_layer, *plan.extra_layers) and i + 1 < plan.end:
                    kept[i + 1] = pool(hidden)
            pooled = pool(hidden)  # [B, H]
            if pooled_only:
                return pooled
            ref = ref_pooled if plan.ref_from is not None else kept.get(plan.ref_layer, pooled)
            score = (_l2_normalize(pooled) * _l2_normalize(ref)).sum(-1)  # cosine, [B]
            out = ((pooled, score) if last else (hidden, pooled, score)) + tuple(
                kept[r] for r in plan.extra_layers
            )
            if plan.start == 0 and not last:
                out += (mask_bias, pool_weights)
            return out

    return Segment().eval()


def _l2_normalize(x):
    """x / ||x|| on the last axis, exported as ONE ``LpNormalization`` node (torch would emit four)."""
    return _lp_normalization().apply(x)


@functools.cache
def _lp_normalization():
    import torch

    class LpNormalization(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return torch.nn.functional.normalize(v, dim=-1, eps=1e-12)

        @staticmethod
        def symbolic(g, v):
            return g.op("LpNormalization", v, axis_i=-1, p_i=2)

    return LpNormalization


def _export(module, args: tuple, path: Path, inputs: list[dict], outputs: list[dict], opset: int) -> None:
    import torch

    dynamic_axes = {
        io["name"]: {i: dim for i, dim in enumerate(io["shape"]) if dim in ("batch", "sequence")}
        for io in inputs + outputs
    }
    with torch.inference_mode():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[io["name"] for io in inputs],
            output_names=[io["name"] for io in outputs],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))


def _sample_args(model_config, plan: SegmentPlan, hidden_size: int, pad_id: int) -> tuple:
    import torch

    batch, seq = 2, 7
    mask = torch.ones(batch, seq, dtype=torch.int32)
    mask[1, 4:] = 0
    if plan.start == 0:
        ids = torch.randint(5, min(1000, model_config.vocab_size), (batch, seq), dtype=torch.int32)
        ids[1, 4:] = pad_id
        args = (ids, mask)
    else:
        m = mask.float()
        args = (
            torch.randn(batch, seq, hidden_size),
            ((1.0 - m) * torch.finfo(torch.float32).min)[:, None, None, :],
            (m / m.sum(1, keepdim=True)).unsqueeze(1),
        )
    if plan.ref_from is not None:
        args += (torch.randn(batch, hidden_size),)
    return args


def _tool_versions() -> dict[str, str]:
    versions = {}
    for dist in ("leap-export", "torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _replaceable(out: Path) -> bool:
    """What ``--force`` may replace: an earlier build (its manifest says so) or an empty folder."""
    if out.is_dir() and not any(out.iterdir()):
        return True
    try:
        return json.loads((out / MANIFEST_NAME).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def build(
    model: str | os.PathLike | ModelSource,
    out: str | os.PathLike,
    *,
    boundaries: list[int] | None = None,
    theta: float | None = None,
    patience: int | None = None,
    min_layer: int | None = None,
    precision: str = "fp32",
    opset: int = OPSET,
    force: bool = False,
    progress: bool = True,
    exits: str = "auto",
) -> Path:
    """Export ``model`` into ``out``: segment graphs, full graph, tokenizer and manifest.json.

    ``exits``: whether the manifest's default policy exits early. ``"auto"`` turns exits on only for a
    model that passes the exit-compatibility check (:mod:`leap_export.exitcheck`); ``"on"`` / ``"off"``
    decide regardless (the check is recorded either way).
    """
    from tqdm.auto import tqdm

    from leap_export.reference import load_reference

    out = Path(out)
    if exits not in EXITS_CHOICES:
        raise LeapError(f"exits must be one of {', '.join(EXITS_CHOICES)}, got {exits!r}")
    if precision != "fp32" and (out / MANIFEST_NAME).is_file():
        _check_variant_request(
            model,
            out,
            precision,
            boundaries=boundaries,
            theta=theta,
            patience=patience,
            min_layer=min_layer,
            opset=opset,
            exits=exits,
        )
        return add_variant(out, precision, force=force, progress=progress)
    if precision != "fp32":
        raise LeapError(
            f"precision '{precision}' is added to an existing fp32 build: run `leap-export build` "
            f"first, then again with --precision {precision}"
        )
    source = model if isinstance(model, ModelSource) else resolve_model(model)
    if not (source.path / "tokenizer.json").is_file():  # checked before minutes of export, not after
        raise LeapError(
            f"{source.path} has no tokenizer.json: the runtime needs a fast tokenizer. Create one with "
            "`AutoTokenizer.from_pretrained(folder).save_pretrained(folder)` (transformers converts a slow "
            "tokenizer to a fast one), then build again"
        )
    arch = get_architecture(source.architecture)
    defaults = source.default_policy()
    policy = ExitPolicy(
        theta=defaults["theta"] if theta is None else theta,
        patience=defaults["patience"] if patience is None else patience,
        min_layer=defaults["min_layer"] if min_layer is None else min_layer,
    )
    if boundaries is None and source.recipe.get("segments", {}).get("boundaries", "auto") != "auto":
        boundaries = list(source.recipe["segments"]["boundaries"])
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise LeapError(
            f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}, the range this exporter supports "
            f"(default {OPSET})"
        )
    plans = plan_segments(source.num_layers, policy, boundaries)
    if not any(p.end > policy.patience for p in plans[:-1]):
        raise LeapError(
            f"this build could never exit early: no exit check before the last layer {source.num_layers} "
            f"comes after a layer l > patience {policy.patience} (segments end after layers "
            f"{', '.join(str(p.end) for p in plans)}); lower --min-layer or --patience, or pass --boundaries"
        )
    # the settings first (a user fixes those in one go), then the folder
    if out.exists() and not force:
        raise LeapError(
            f"{out} already exists; pass --force to replace it (the old folder is kept until "
            "the new one is complete)"
        )
    if out.exists() and not _replaceable(out):
        raise LeapError(
            f"{out} is not a leap-export build (no leap-export manifest.json in it); --force only "
            "replaces a build or an empty folder: pick another --out, or move that folder yourself"
        )
    idle = [p.end for p in plans[:-1] if not policy.may_exit_at(p.end)]
    if idle:
        log.warning(
            "no sample can exit after layer %s under this build's policy (exits need l >= min_layer %d and "
            "l > patience %d): each such boundary is a hand-off that only costs time; drop it from --boundaries "
            "unless you will lower --min-layer at run time",
            ", ".join(map(str, idle)),
            policy.min_layer,
            policy.patience,
        )
    torch_model, torch_tokenizer = load_reference(source)
    pad_id = torch_model.config.pad_token_id
    pad_id = arch.pad_token_default if pad_id is None else int(pad_id)
    # before the export: the check needs the model loaded above, and says in seconds what the build will do
    check = check_exits(source, policy, [p.end for p in plans], model=torch_model, tokenizer=torch_tokenizer)
    enabled, check = decide_exits(check, exits)
    policy = dataclasses.replace(policy, enabled=enabled)
    log.info("%s", check["reason"])  # the CLI prints it with the build's summary

    ensure_parent(out, folder=True)
    tmp = temp_folder(out.parent, f".{out.name}.tmp-")
    try:
        segments, files = [], []
        steps = tqdm(plans, desc=f"export {source.name}", unit="segment", disable=not progress)
        for plan in steps:
            last = plan.index == len(plans) - 1
            name = f"seg_{plan.index:02d}.onnx"
            module = _segment_module(torch_model, arch, plan, last=last)
            outputs = plan.outputs(last)
            _export(
                module,
                _sample_args(torch_model.config, plan, source.hidden_size, pad_id),
                tmp / name,
                plan.inputs,
                outputs,
                opset,
            )
            segments.append(
                {
                    "index": plan.index,
                    "layers": [plan.start, plan.end],
                    "inputs": plan.inputs,
                    "outputs": outputs,
                    "ref_layer": plan.ref_layer,
                    "ref_from": plan.ref_from,
                    "ref_output": plan.ref_output,
                }
            )
            files.append({"file": name, "sha256": sha256_file(tmp / name)})
        full_plan = SegmentPlan(0, 0, source.num_layers, source.num_layers)
        full_outputs = [{"name": "pooled", "dtype": HIDDEN_DTYPE, "shape": ["batch", "hidden"]}]
        _export(
            _segment_module(torch_model, arch, full_plan, last=True, pooled_only=True),
            _sample_args(torch_model.config, full_plan, source.hidden_size, pad_id),
            tmp / "full.onnx",
            full_plan.inputs,
            full_outputs,
            opset,
        )
        tokenizer_file = _copy_tokenizer(source.path, tmp, source.max_seq_length)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "source": {
                "spec": source.spec,
                "name": source.name,
                "path": str(source.path),
                "weights_sha256": source.weights_sha256,
            },
            "architecture": source.architecture,
            "num_layers": source.num_layers,
            "hidden_size": source.hidden_size,
            "max_seq_length": source.max_seq_length,
            "pooling": "mean",
            "normalize": source.normalize,
            "opset": opset,
            "io": {
                "ids": IDS_DTYPE,
                "attention_mask": IDS_DTYPE,
                "hidden": HIDDEN_DTYPE,
                "carried": [t["name"] for t in MASK_TENSORS],
            },
            "segments": segments,
            "default_variant": "fp32",
            "variants": {
                "fp32": {
                    "backend": "onnxruntime",
                    "precision": "fp32",
                    "segments": files,
                    "full": {
                        "file": "full.onnx",
                        "sha256": sha256_file(tmp / "full.onnx"),
                        "inputs": full_plan.inputs,
                        "outputs": full_outputs,
                    },
                }
            },
            "tokenizer": {
                "file": tokenizer_file,
                "sha256": sha256_file(tmp / tokenizer_file),
                "pad_id": pad_id,
                "max_length": source.max_seq_length,
            },
            "exit_policy": policy.to_dict(),
            "exit_check": check,
            "policy_history": [],
            "tools": _tool_versions(),
        }
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_variant_request(
    model, out: Path, precision: str, *, boundaries, theta, patience, min_layer, opset, exits="auto"
) -> None:
    """A quantised variant copies the fp32 build's graphs: refuse options it would silently ignore."""
    from trt_runtime.manifest import load_manifest

    given = [
        f"--{name}"
        for name, value in (
            ("boundaries", boundaries),
            ("theta", theta),
            ("patience", patience),
            ("min-layer", min_layer),
        )
        if value is not None
    ]
    if opset != OPSET:
        given.append("--opset")
    if exits != "auto":
        given.append("--exits")
    if given:
        raise LeapError(
            f"--precision {precision} quantises the graphs already in {out}, with their segment plan, opset and "
            f"exit policy; {', '.join(given)} would be ignored. Drop {'it' if len(given) == 1 else 'them'}, or "
            "rebuild the fp32 folder with them first (`leap-export calibrate` changes the default theta)"
        )
    built = load_manifest(out, variant="fp32").data["source"]
    if isinstance(model, ModelSource):
        source = model
    elif str(model) in (built.get("spec"), built.get("path")) or Path(model).resolve() == out.resolve():
        return  # the model the build names, or the build folder itself (`build ART --out ART --precision int8`)
    else:
        source = resolve_model(model)
    if source.weights_sha256 != built.get("weights_sha256"):
        raise LeapError(
            f"{out} was built from {built.get('spec')} ({built.get('path')}), not from {model} (its weights "
            f"differ): --precision {precision} quantises the existing build. Pass the same MODEL, or build "
            f"{model} into another --out first"
        )


VARIANT_PRECISIONS = ("int8", "fp16")  # added to an fp32 build by `build ART --out ART --precision P`


def add_variant(out: Path, precision: str, *, force: bool = False, progress: bool = True) -> Path:
    """Add a build of every graph at another precision to an existing fp32 artifact folder (``out/<precision>/``).

    ``int8``: ONNX Runtime dynamic quantization (int8 weights, activations quantised per batch at run
    time) of each segment and of the monolithic graph, so the two stay comparable. ``fp16``: FP16-typed
    graphs (:func:`leap_export.fp16.to_fp16`) with LayerNorm, Softmax, reductions, pooling, the score and
    every input and output in FP32, for GPUs (TensorRT, ONNX Runtime CUDA). The folder is written beside the
    others and the manifest is updated last, atomically. An existing build of the same precision is only
    replaced with ``force``.
    """
    from tqdm.auto import tqdm

    from trt_runtime.manifest import load_manifest

    if precision not in VARIANT_PRECISIONS:
        raise LeapError(
            f"precision '{precision}' is not supported; supported: fp32, {', '.join(VARIANT_PRECISIONS)}"
        )
    manifest = load_manifest(out, variant="fp32")
    if precision in manifest.variants() and not force:
        raise LeapError(
            f"{out} already has an {precision} build; pass --force to rebuild it (the old one is "
            "kept until the new one is complete)"
        )
    fp32 = manifest.variant("fp32")
    convert, how = (quantize_int8, INT8_METHOD) if precision == "int8" else (_to_fp16, FP16_METHOD)
    tmp = temp_folder(out, f".{precision}.tmp-")
    try:
        files = []
        graphs = [*fp32["segments"], fp32["full"]]
        verb = "quantize" if precision == "int8" else "convert"
        for entry in tqdm(graphs, desc=f"{verb} {precision}", unit="graph", disable=not progress):
            name = Path(entry["file"]).name
            convert(out / entry["file"], tmp / name)
            files.append(name)
        final = out / precision
        replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entries = [{"file": f"{precision}/{name}", "sha256": sha256_file(final / name)} for name in files]
    manifest.data["variants"][precision] = {
        "backend": "onnxruntime",
        "precision": precision,
        ("quantization" if precision == "int8" else "conversion"): how,
        "segments": entries[:-1],
        "full": {**fp32["full"], **entries[-1]},
    }
    manifest.save()
    return out


INT8_METHOD = (
    "onnxruntime.quantization.quantize_dynamic: QInt8 per-channel weights with reduce_range (7-bit) of every "
    "MatMul with constant B except the feed-forward down-projections (kept float32); activations quantised "
    "per tensor at run time"
)
FP16_METHOD = (
    "leap_export.fp16.to_fp16: FP16 weights and matrix products; LayerNormalization, Softmax, reductions, "
    "the mask tensors, pooling, the score and every graph input and output FP32"
)


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 whose integer products are exact on every x86-64 CPU ONNX Runtime supports.

    - Weights only (``MatMulConstBOnly``): quantising the attention's activation x activation products costs
      accuracy for little speed. Per-channel weight scales keep each output unit's range.
    - ``reduce_range`` (7-bit weights): without VNNI, ONNX Runtime's u8 x s8 kernel adds pairs of products in
      int16 with saturation (``vpmaddubsw``), with VNNI it accumulates in int32; full-range weights make the
      two differ. With 7-bit weights no pair can saturate and both integer paths are exact; what still
      differs between CPUs is float32 rounding elsewhere, which moves an activation across a quantisation
      step only rarely.
    - The feed-forward down-projections (the MatMul whose weight maps the intermediate width back to the
      hidden width) stay float32: their input is the GELU output, whose heavy tail a per-tensor activation
      scale cannot hold; quantising them is most of int8's error (docs/RESULTS.md measures the options).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_preprocess_advice():
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=down_projections(src),
            extra_options={"MatMulConstBOnly": True},
        )


def down_projections(path: Path) -> list[str]:
    """The names of the graph's feed-forward down-projections: the MatMuls whose constant weight maps a wider
    input back to a narrower output (the intermediate width to the hidden width)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul"
        and len(shapes.get(n.input[1], ())) == 2
        and shapes[n.input[1]][0] > shapes[n.input[1]][1]
    ]


def _to_fp16(src: Path, dst: Path) -> None:
    from leap_export.fp16 import to_fp16

    to_fp16(src, dst)


@contextlib.contextmanager
def _quiet_preprocess_advice():
    """Drop the quantizer's "Please consider to run pre-processing" warning (one per graph, on the root logger).

    Its pre-processing (symbolic shape inference + graph optimisation) is for static quantization and
    models without shapes; these graphs come from our own export, and ONNX Runtime optimises them at load.
    """

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _copy_tokenizer(model_dir: Path, dest: Path, max_length: int) -> str:
    """The tokenizer files, with tokenizer.json set as the runtime tokenizes: no padding, truncation at
    ``max_length`` (the source's file often says otherwise: all-MiniLM-L6-v2's truncates and pads to 128
    where sentence-transformers uses 256), so a consumer loading the file as shipped gets the contract."""
    from trt_runtime.tokenize import runtime_tokenizer

    src = model_dir / "tokenizer.json"
    if not src.is_file():
        raise LeapError(f"{model_dir} has no tokenizer.json (a fast tokenizer is required by the runtime)")
    (dest / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        if name != src.name and (model_dir / name).is_file():
            shutil.copy2(model_dir / name, dest / "tokenizer" / name)
    runtime_tokenizer(src, max_length).save(str(dest / "tokenizer" / src.name))
    return "tokenizer/tokenizer.json"
