"""A Triton model repository for an artifact folder: ``leap_encoder``, a Python-backend model.

Layout (docs/deploy.md)::

    REPO/
      leap_encoder/
        config.pbtxt            # derived from the manifest: I/O from trt_runtime.contract, hidden size, layers
        1/
          model.py              # leap_export/triton/template/model.py
          trt_runtime/          # the runtime this repository was generated with (pure Python + its C loop)
          artifacts/            # manifest.json and every file it names (hard links where the disk allows)

The repository stands alone: the server's Python environment needs numpy < 2, tokenizers and onnxruntime,
nothing from leap-export. Names, data types and shapes in ``config.pbtxt`` come from the manifest and the
contract (:data:`trt_runtime.contract.SERVED_OUTPUTS`), never restated, so the server's I/O and the
runtime's cannot drift apart; ``model.py`` reads them back from the config.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from leap_export.errors import LeapError
from trt_runtime.contract import SERVED_INPUTS, SERVED_OUTPUTS
from trt_runtime.fileio import output_problem, replace_folder, temp_folder
from trt_runtime.manifest import MANIFEST_NAME, Manifest, load_manifest

MODEL_NAME = "leap_encoder"
SEGMENT_MODEL = "leap_segment_{}"
TEMPLATE = Path(__file__).resolve().parent / "template" / "model.py"
SEGMENT_TEMPLATE = TEMPLATE.with_name("segment.py")
# python: one Python model runs everything. bls: the orchestrator (Python) calls one model per segment on
# Triton's onnxruntime or TensorRT backend. bls-python: the same with the segment models on the Python backend
# (ONNX Runtime on the CPU), for a server without those backends
LAYOUTS = ("python", "bls", "bls-python")
# the runtime's dtypes as Triton names them
TRITON_DTYPES = {
    "string": "TYPE_STRING",
    "float32": "TYPE_FP32",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
}
GPU_BACKENDS = ("onnxruntime-cuda", "tensorrt")


@dataclass(frozen=True)
class ServeOptions:
    """What a repository is generated for (the ``triton`` and ``serve`` options; one default each)."""

    max_batch_size: int = 32
    max_queue_delay_us: int = 1000
    instances: int = 1
    variant: str | None = None
    backend: str = "auto"
    shadow_rate: float = 0.0
    layout: str = "python"

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise LeapError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        for name in ("max_batch_size", "instances"):
            if getattr(self, name) < 1:
                raise LeapError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0:
            raise LeapError(f"max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if not 0.0 <= self.shadow_rate <= 1.0:
            raise LeapError(f"shadow-rate must be in [0, 1], got {self.shadow_rate}")


def write_repository(
    artifacts: str | os.PathLike,
    out: str | os.PathLike,
    options: ServeOptions = ServeOptions(),
    *,
    force=False,
) -> Path:
    """Write the model repository for ``artifacts`` into ``out`` (a new or empty folder; ``force``: replace
    the ``leap_encoder`` model there). Returns ``out``."""
    options.check()
    manifest = load_manifest(artifacts)  # checks every file's sha256 before anything is copied
    if options.variant is not None:
        manifest.variant_spec(options.variant)  # an unknown variant is an error naming those there are
    from trt_runtime.backends import CHOICES

    if options.backend not in CHOICES:
        raise LeapError(f"backend must be one of {', '.join(CHOICES)}, got {options.backend!r}")
    out = Path(out)
    if not out.is_dir():
        problem = output_problem(out, folder=True)  # its parent must exist: a typo leaves no tree behind
        if problem:
            raise LeapError(problem)
    segments = [] if options.layout == "python" else segment_models(manifest, options)
    models = [out / MODEL_NAME, *(out / name for name, _, _ in segments)]
    existing = [m for m in models if m.exists()]
    if existing and not force:
        raise LeapError(f"{existing[0]} exists; pass --force to replace it, or choose another --out")
    out.mkdir(exist_ok=True)
    names = [name for name, _, _ in segments]

    def encoder_model(folder: Path) -> None:
        version = folder / "1"
        _copy_artifacts(manifest, version / "artifacts", everything=not segments, variant=options.variant)
        _copy_runtime(version / "trt_runtime")
        shutil.copy2(TEMPLATE, version / "model.py")
        (folder / "config.pbtxt").write_text(config_pbtxt(manifest, options, names), encoding="utf-8")

    def segment_model(folder: Path, config: str, files: dict) -> None:
        (folder / "1").mkdir()
        (folder / "config.pbtxt").write_text(config, encoding="utf-8")
        for dest, src in files.items():
            if src is SEGMENT_TEMPLATE:
                shutil.copy2(src, folder / "1" / dest)
            else:
                _link_or_copy(src, folder / "1" / dest)

    # each model is written beside its place and moved in when complete: a failure or Ctrl-C leaves the
    # repository as it was (an old model replaced with --force stays until its successor is complete)
    writers = [(MODEL_NAME, encoder_model)]
    writers += [
        (name, lambda f, c=config, fs=files: segment_model(f, c, fs)) for name, config, files in segments
    ]
    for name, write in writers:
        tmp = temp_folder(out, f".{name}.tmp-")
        try:
            write(tmp)
            replace_folder(tmp, out / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def segment_models(manifest: Manifest, options: ServeOptions) -> list[tuple[str, str, dict]]:
    """(name, config.pbtxt, {file in the version folder: source}) of every segment model of a BLS layout.

    ``bls``: TensorRT plans where the build has engines (every engine variant's plan of the segment, keyed by
    the compute capability it was built for: ``cc_model_filenames``), else the ONNX graph on the onnxruntime
    backend; ``--variant`` picks one build. ``bls-python``: the ONNX graph on the Python backend.
    """
    variants = [manifest.variant_spec(options.variant)] if options.variant else None
    if variants is None:
        engines = [manifest.variant_spec(v) for v in manifest.variants()]
        engines = [v for v in engines if v.backend == "tensorrt"]
        variants = engines if engines and options.layout == "bls" else [manifest.variant_spec(None)]
    tensorrt = variants[0].backend == "tensorrt"
    if tensorrt and options.layout == "bls-python":
        raise LeapError(
            "--layout bls-python serves ONNX graphs; pick an ONNX variant (fp32, int8) with --variant"
        )
    out = []
    for seg in manifest.segments:
        name = SEGMENT_MODEL.format(seg.index)
        if options.layout == "bls-python":
            head = ['backend: "python"']
            files = {
                "model.onnx": manifest.root / variants[0].segments[seg.index].file,
                "model.py": SEGMENT_TEMPLATE,
            }
            kind = "KIND_CPU"
        elif tensorrt:
            head, files = ['platform: "tensorrt_plan"'], {}
            for v in variants:
                cc = v.record.get("tensorrt", {}).get("compute_capability")
                if not cc:
                    raise LeapError(f"variant {v.name!r} has no TensorRT build record (compute capability)")
                plan = f"model_sm{cc.replace('.', '')}.plan"
                files[plan] = manifest.root / v.segments[seg.index].file
                head.append(f'cc_model_filenames {{ key: "{cc}" value: "{plan}" }}')
            kind = "KIND_GPU"
        else:
            head, files, kind = (
                ['platform: "onnxruntime_onnx"'],
                {"model.onnx": manifest.root / variants[0].segments[seg.index].file},
                "KIND_GPU",
            )
        spec = manifest.data["segments"][seg.index]
        lines = [
            f"# Segment {seg.index} ({_layers(seg)}) of {manifest.source.get('name') or manifest.root.name},"
            " called by leap_encoder (BLS) with the rows still running.",
            "# Generated by `leap-export triton` from the manifest: regenerate rather than edit.",
            f'name: "{name}"',
            *head,
            "# the orchestrator sends whole batches (batch is the first axis of every tensor): no batching here",
            "max_batch_size: 0",
            *_tensors("input", spec["inputs"], manifest),
            *_tensors("output", spec["outputs"], manifest),
            f"instance_group [ {{ kind: {kind} count: 1 }} ]",
        ]
        out.append((name, "\n".join(lines) + "\n", files))
    return out


def config_pbtxt(manifest: Manifest, options: ServeOptions, segment_models: list[str] = ()) -> str:
    """``leap_encoder``'s config.pbtxt: I/O from the contract and the manifest, batching and instances from
    ``options``; ``segment_models``: the models it calls, one per segment (a BLS layout)."""
    kind = "KIND_GPU" if options.backend in GPU_BACKENDS and not segment_models else "KIND_CPU"
    policy = manifest.default_policy
    exits = (
        f"exits after layers {', '.join(str(s.end) for s in manifest.segments[:-1]) or '-'}, theta "
        f"{policy.theta:g}, min_layer {policy.min_layer}"
        if policy.enabled
        else "exits off by default (the build's exit check failed; a request's theta turns them on)"
    )
    name = manifest.source.get("name") or manifest.root.name
    lines = [
        f"# Generated by `leap-export triton` from {name} ({manifest.architecture}, {manifest.num_layers} layers, "
        f"hidden {manifest.hidden_size}; {exits}).",
        "# Derived from the artifacts' manifest.json: regenerate rather than edit.",
        f'name: "{MODEL_NAME}"',
        'backend: "python"',
        "# the dynamic batcher hands execute() up to this many texts (over all its requests); they run as one",
        "# early-exit batch with compaction, whatever their lengths. A request holding more is refused.",
        f"max_batch_size: {options.max_batch_size}",
        *_tensors("input", SERVED_INPUTS, manifest),
        *_tensors("output", SERVED_OUTPUTS, manifest),
        f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}",
        f"# {options.instances} instance(s), each its own process with its own ONNX Runtime thread pool. Each pool",
        f"# gets (the CPUs the server may use: its affinity, capped by a container's CPU quota) // {options.instances}",
        "# threads, at least 1, so all instances together use those CPUs and no more: pools spinning on more",
        "# threads than there are cores run several times slower (8 threads on 2 cores: 5x slower at batch 32).",
        "# Set the parameter threads to a number to size each pool yourself.",
        f"instance_group [ {{ kind: {kind} count: {options.instances} }} ]",
        "parameters [",
        _parameter("artifacts", "artifacts"),
        _parameter("variant", options.variant or ""),
        _parameter("backend", options.backend),
        _parameter("threads", "auto"),
        "  # BLS: the models that run the segments, in order (empty: this model runs them itself)",
        _parameter("segment_models", ",".join(segment_models)),
        "  # the fraction of texts re-run at full depth for the leap_shadow_cosine histogram (exit quality)",
        _parameter("shadow_rate", f"{options.shadow_rate:g}", last=True),
        "]",
    ]
    return "\n".join(lines) + "\n"


def _layers(seg) -> str:
    return f"layer {seg.end}" if seg.start + 1 == seg.end else f"layers {seg.start + 1}-{seg.end}"


def _tensors(kind: str, specs, manifest: Manifest) -> list[str]:
    """Triton tensor entries for contract/manifest specs: ``hidden`` is the hidden size, ``batch`` and
    ``sequence`` are dynamic (-1), integers are literal sizes."""
    entries = []
    sizes = {"hidden": manifest.hidden_size, "batch": -1, "sequence": -1}
    for spec in specs:
        dims = ", ".join(str(sizes.get(d, d)) for d in spec["shape"])
        entries.append(
            f'  {{ name: "{spec["name"]}" data_type: {TRITON_DTYPES[spec["dtype"]]} dims: [ {dims} ] }}'
        )
    return [f"{kind} [", ",\n".join(entries), "]"]


def _parameter(key: str, value: str, *, last: bool = False) -> str:
    return f'  {{ key: "{key}" value: {{ string_value: "{value}" }} }}' + ("" if last else ",")


def _copy_artifacts(
    manifest: Manifest, dest: Path, *, everything: bool = True, variant: str | None = None
) -> None:
    """The manifest and every file it names, hard-linked where source and destination share a disk: only the
    tokenizer for a BLS orchestrator (``everything`` False: its graphs are other models'), only ``variant``'s
    files where one is named (the runtime checks only the files of the variant it runs)."""
    dest.mkdir(parents=True)
    files = {MANIFEST_NAME, manifest.tokenizer.file}
    if everything and variant is None:
        files |= {entry["file"] for entry in manifest.file_entries()}
    elif everything:
        spec = manifest.variant_spec(variant)
        files |= {spec.full.file, *(f.file for f in spec.segments)}
    for rel in sorted(files):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(manifest.root / rel, target)


def _copy_runtime(dest: Path) -> None:
    import trt_runtime

    src = Path(trt_runtime.__file__).resolve().parent
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_native"))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
