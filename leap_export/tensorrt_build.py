"""TensorRT engines from a build's graphs: ``leap-export build ART --out ART --backend tensorrt``.

One engine per segment and one for the monolithic graph, built from a variant's ONNX graphs (default the
``fp16`` variant: FP16 graphs with LayerNorm, Softmax, reductions, pooling, the score and all I/O in FP32)
and written as the manifest variant ``tensorrt-sm<major><minor>`` of the GPU that built them
(``tensorrt-sm90`` on an H100). An engine is tied to the TensorRT version and the GPU type (compute
capability) that built it, so engines are built on the GPU (type) that will run them; the runtime refuses
engines built elsewhere (:mod:`trt_runtime.backends.tensorrt`).

Networks are strongly typed on TensorRT 10.x and 11.x alike: every tensor has the type the ONNX graph gives
it, so the precision of an engine is the precision of its source graphs, never a builder flag. 10.x makes
strongly typed networks opt-in (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``); 11.x has no other kind
(the flag is deprecated there and ignored) and removed the precision flags (``BuilderFlag.FP16``...) and
per-layer precisions altogether. :func:`builder_steps` states which steps each major version takes.

The build goes through Polygraphy (``NetworkFromOnnxPath``, ``CreateConfig``, ``EngineBytesFromNetwork``),
with no precision flag and no precision constraints (both raise on 11.x); TF32 stays off (Polygraphy's
default), so the FP32 parts run in FP32. Each engine has one optimisation profile, derived from the manifest:
batch 1 / ``opt_batch`` / ``max_batch``, sequence length 1 / ``opt_seq`` / ``max_seq`` (default the build's
``max_seq_length``). A tactic timing cache is loaded and saved (default: ``timing-cache/`` in the artifact
folder, one file per GPU type and TensorRT version), and finished engines are kept in an engine cache
(``$LEAP_EXPORT_CACHE/engines``) under a key of everything that decides their bytes
(:func:`engine_cache_key`), so rebuilding an unchanged graph copies it.

The variant is written like ``add_variant``: its folder is written beside the others under a temporary name
and renamed into place, and the manifest is updated last; nothing is ever half-written.

Everything that does not need TensorRT is a pure function here and is tested on the CPU; the build itself
(:func:`_polygraphy_build`) has never run, since no GPU with TensorRT has been lent to this project. The
TensorRT names it relies on are checked against the real 10.x and 11.x bindings
(``tests/trt_runtime/test_trt_names.py``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from leap_export.errors import LeapError
from trt_runtime.backends.tensorrt import (
    SUPPORTED_MAJORS,
    format_compute_capability,
    gpu_info,
    trt_major,
    variant_name,
)
from trt_runtime.manifest import Manifest, VariantSpec, sha256_file

log = logging.getLogger(__name__)

# the optimisation profile's defaults, stated once (the CLI's options say "default: the build's ..." for max_seq)
MIN_BATCH = 1
DEFAULT_OPT_BATCH = 32  # the encoder's default batch_size
DEFAULT_MAX_BATCH = 128
MIN_SEQ = 1
DEFAULT_OPT_SEQ = 64  # capped at max_seq
SOURCE_VARIANTS = ("fp16", "fp32")  # int8 is ONNX Runtime's dynamic quantisation: no TensorRT equivalent
# what decides an engine's bytes beyond its inputs: bump when the build steps change (invalidates the cache)
BUILD_RECIPE = "leap-export tensorrt 1: polygraphy, strongly typed, one profile, TF32 off"
# Every TensorRT name this module uses itself (the AST walk of tests/trt_runtime/test_trt_names.py finds each
# use; a name used but not listed fails), checked against both major versions' bindings.
TRT_NAMES = ("__version__", "HardwareCompatibilityLevel", "AMPERE_PLUS")


# -- the optimisation profile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileDims:
    """The dynamic axes' (min, opt, max): the same for every engine of a build."""

    opt_batch: int
    max_batch: int
    opt_seq: int
    max_seq: int
    min_batch: int = MIN_BATCH
    min_seq: int = MIN_SEQ

    def triple(self, axis: str) -> tuple[int, int, int]:
        if axis == "batch":
            return self.min_batch, self.opt_batch, self.max_batch
        return self.min_seq, self.opt_seq, self.max_seq

    def record(self) -> dict[str, dict[str, int]]:
        return {
            axis: dict(zip(("min", "opt", "max"), self.triple(axis), strict=True))
            for axis in ("batch", "sequence")
        }


PROFILE_KEYS = ("opt_batch", "max_batch", "opt_seq", "max_seq")


def profile_dims(
    manifest: Manifest, request: Mapping[str, int | None] | ProfileDims | None = None
) -> ProfileDims:
    """The profile for ``manifest``'s engines: ``request`` (``opt_batch``, ``max_batch``, ``opt_seq``,
    ``max_seq``; a value None or absent takes its default) checked and completed. The sequence never
    exceeds the build's ``max_seq_length`` (the tokenizer truncates there)."""
    request = _profile_request(request)
    longest = manifest.max_seq_length
    max_batch = request.get("max_batch") or DEFAULT_MAX_BATCH
    opt_batch = request.get("opt_batch") or min(DEFAULT_OPT_BATCH, max_batch)
    max_seq = request.get("max_seq") or longest
    opt_seq = request.get("opt_seq") or min(DEFAULT_OPT_SEQ, max_seq)
    if max_seq > longest:
        raise LeapError(
            f"max_seq {max_seq} exceeds the build's max_seq_length {longest}: no text is longer after "
            "tokenization; leave it at its default"
        )
    if opt_batch > max_batch:
        raise LeapError(f"opt_batch {opt_batch} exceeds max_batch {max_batch}")
    if opt_seq > max_seq:
        raise LeapError(f"opt_seq {opt_seq} exceeds max_seq {max_seq}")
    return ProfileDims(opt_batch=opt_batch, max_batch=max_batch, opt_seq=opt_seq, max_seq=max_seq)


def _profile_request(request: Mapping[str, int | None] | ProfileDims | None) -> dict[str, int | None]:
    if isinstance(request, ProfileDims):
        request = {key: getattr(request, key) for key in PROFILE_KEYS}
    request = dict(request or {})
    unknown = sorted(set(request) - set(PROFILE_KEYS))
    if unknown:
        raise LeapError(f"unknown profile setting {', '.join(unknown)}; known: {', '.join(PROFILE_KEYS)}")
    for key, value in request.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise LeapError(f"{key} must be an integer >= 1, got {value!r}")
    return request


Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def input_profile(inputs: list[dict[str, Any]], dims: ProfileDims, hidden: int) -> Shapes:
    """(min, opt, max) shapes of each graph input, from its manifest shape: "batch" and "sequence" take the
    profile's range, "hidden" the build's hidden size, integers are literal."""
    shapes: Shapes = {}
    for io in inputs:
        per_dim = []
        for dim in io["shape"]:
            if dim in ("batch", "sequence"):
                per_dim.append(dims.triple(dim))
            elif dim == "hidden":
                per_dim.append((hidden,) * 3)
            elif isinstance(dim, int) and not isinstance(dim, bool):
                per_dim.append((dim,) * 3)
            else:
                raise LeapError(f"input {io['name']} has a dimension {dim!r} no engine profile can take")
        shapes[io["name"]] = tuple(tuple(d[k] for d in per_dim) for k in range(3))  # type: ignore[assignment]
    return shapes


FULL_INPUTS = [
    {"name": "input_ids", "dtype": "int32", "shape": ["batch", "sequence"]},
    {"name": "attention_mask", "dtype": "int32", "shape": ["batch", "sequence"]},
]


def graph_profiles(manifest: Manifest, source: VariantSpec, dims: ProfileDims) -> list[tuple[str, Shapes]]:
    """(engine name, profile) of every graph of ``source``: each segment's, in order, then "full"."""
    hidden = manifest.hidden_size
    graphs = [
        (f"seg_{seg['index']:02d}", input_profile(seg["inputs"], dims, hidden))
        for seg in manifest.data["segments"]
    ]
    full_inputs = source.record["full"].get("inputs") or manifest.variant("fp32")["full"].get("inputs")
    graphs.append(("full", input_profile(full_inputs or FULL_INPUTS, dims, hidden)))
    return graphs


# -- what a TensorRT version does --------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSteps:
    """The builder steps of one TensorRT major version (as Polygraphy takes them)."""

    major: int
    strongly_typed_flag: (
        bool  # NetworkFromOnnxPath(strongly_typed=...): set STRONGLY_TYPED at network creation
    )
    precision_flags: tuple[str, ...]  # BuilderFlag members set: none on either (the graph's types decide)
    # the TensorRT names Polygraphy 0.53.6 touches on these steps with our options (read from its source:
    # NetworkFromOnnxPath, CreateConfig, Profile.to_trt, EngineBytesFromNetwork), checked like TRT_NAMES
    trt_names: tuple[str, ...]


_POLYGRAPHY_NAMES = (
    "Builder",
    "create_network",
    "NetworkDefinitionCreationFlag",
    "init_libnvinfer_plugins",
    "OnnxParser",
    "parse_from_file",
    "num_errors",
    "get_error",
    "create_builder_config",
    "create_optimization_profile",
    "add_optimization_profile",
    "set_shape",
    "num_inputs",
    "get_input",
    "BuilderFlag",
    "TF32",
    "clear_flag",
    "profiling_verbosity",
    "ProfilingVerbosity",
    "DETAILED",
    "create_timing_cache",
    "set_timing_cache",
    "hardware_compatibility_level",
    "build_serialized_network",
    "get_timing_cache",
    "combine",
    "serialize",
)


def builder_steps(trt_version: str) -> BuildSteps:
    """Which steps TensorRT ``trt_version`` takes (by major version; names, never enum numbers)."""
    major = trt_major(trt_version)
    if major == 10:  # strongly typed networks are opt-in
        return BuildSteps(10, True, (), (*_POLYGRAPHY_NAMES, "STRONGLY_TYPED"))
    if (
        major == 11
    ):  # always strongly typed: STRONGLY_TYPED is deprecated and ignored, precision flags removed
        return BuildSteps(11, False, (), _POLYGRAPHY_NAMES)
    raise LeapError(
        f"TensorRT {trt_version} is not supported: engines are built with TensorRT "
        f"{' or '.join(map(str, SUPPORTED_MAJORS))}.x"
    )


# -- the engine cache -------------------------------------------------------------------------------------


def engine_cache_key(
    *,
    onnx_sha256: str,
    trt_version: str,
    compute_capability: tuple[int, int],
    precision: str,
    profile: Shapes,
    hardware_compatibility_level: str = "NONE",
    recipe: str = BUILD_RECIPE,
) -> str:
    """The engine cache's key: a hash of everything that decides an engine's bytes."""
    text = json.dumps(
        {
            "onnx_sha256": onnx_sha256,
            "tensorrt": str(trt_version),
            "compute_capability": format_compute_capability(tuple(compute_capability)),
            "precision": precision,
            "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
            "hardware_compatibility_level": hardware_compatibility_level,
            "recipe": recipe,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def default_engine_cache() -> Path:
    from leap_export.sources import cache_dir

    return cache_dir() / "engines"


def default_timing_cache(root: Path, env: BuildEnvironment) -> Path:
    """Timing caches are per GPU type and TensorRT version: one file each, in the artifact folder."""
    cc = env.compute_capability
    return Path(root) / "timing-cache" / f"sm{cc[0]}{cc[1]}-trt{env.trt_version}.cache"


# -- the environment ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildEnvironment:
    trt_version: str
    gpu: str
    compute_capability: tuple[int, int]
    polygraphy: str


def build_environment(device_id: int = 0) -> BuildEnvironment:
    """TensorRT, Polygraphy and the GPU the engines are built on; a :class:`LeapError` naming every missing
    piece otherwise (checked before any work)."""
    from trt_runtime.backends.tensorrt import import_tensorrt, installed

    missing = []
    trt, why = import_tensorrt()
    if trt is None:
        missing.append(why)
    if not installed("polygraphy"):
        missing.append("Polygraphy is not installed (pip install 'leap-export[gpu]')")
    gpu, no_gpu = gpu_info(device_id)
    if gpu is None:
        missing.append(f"no GPU: {no_gpu}")
    if missing:
        raise LeapError(
            "TensorRT engines cannot be built here: "
            + "; ".join(missing)
            + ". Engines are built on the GPU (type) that will run them, with TensorRT 10 or 11 installed: run "
            "this command on that machine"
        )
    return BuildEnvironment(
        trt_version=str(trt.__version__),
        gpu=gpu.name,
        compute_capability=gpu.compute_capability,
        polygraphy=metadata.version("polygraphy"),
    )


def source_variant_spec(manifest: Manifest, source_variant: str) -> VariantSpec:
    """The ONNX variant the engines are built from; a missing one names the command that adds it."""
    if source_variant not in SOURCE_VARIANTS:
        raise LeapError(
            f"TensorRT engines are built from the {' or '.join(SOURCE_VARIANTS)} graphs, not {source_variant!r}"
        )
    if source_variant not in manifest.variants():
        raise LeapError(
            f"{manifest.root} has no {source_variant} build, which the TensorRT engines are built from: add it "
            f"first with `leap-export build {manifest.root} --out {manifest.root} --precision {source_variant}`"
        )
    spec = manifest.variant_spec(source_variant)
    if spec.backend != "onnxruntime":
        raise LeapError(f"variant {source_variant!r} holds {spec.backend} files, not ONNX graphs")
    return spec


# -- the build ---------------------------------------------------------------------------------------------

# (ONNX graph, its profile, the timing cache file) -> the serialised engine
BuildOne = Callable[[Path, Shapes, Path], bytes]


def variant_record(
    *,
    source: VariantSpec,
    entries: list[dict[str, str]],
    env: BuildEnvironment,
    steps: BuildSteps,
    dims: ProfileDims,
    cache_keys: dict[str, str],
    hardware_compatibility_level: str,
    timing_cache: str,
) -> dict[str, Any]:
    """The manifest entry of the engines: files as every variant has them (the ``full`` entry keeps the
    source's ``inputs`` / ``outputs``), and a ``tensorrt`` record of what they were built with."""
    full = {k: v for k, v in source.record["full"].items() if k in ("inputs", "outputs")}
    return {
        "backend": "tensorrt",
        "precision": source.precision,
        "from_variant": source.name,
        "segments": entries[:-1],
        "full": {**entries[-1], **full},
        "tensorrt": {
            "version": env.trt_version,
            "gpu": env.gpu,
            "compute_capability": format_compute_capability(env.compute_capability),
            "hardware_compatibility_level": hardware_compatibility_level,
            "version_compatible": False,
            "strongly_typed": True,
            "network_flags": ["STRONGLY_TYPED"] if steps.strongly_typed_flag else [],
            "builder_flags": list(steps.precision_flags),
            "profile": dims.record(),
            "cache_keys": cache_keys,
            "timing_cache": timing_cache,
            "built_with": f"polygraphy {env.polygraphy}",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    }


def write_engines(
    manifest: Manifest,
    source: VariantSpec,
    *,
    env: BuildEnvironment,
    steps: BuildSteps,
    dims: ProfileDims,
    build_one: BuildOne,
    engine_cache: Path,
    timing_cache: Path,
    hardware_compatibility_level: str = "NONE",
    force: bool = False,
    progress: bool = True,
) -> str:
    """Build (or take from ``engine_cache``) every engine of ``source`` with ``build_one``, write them as
    the variant of ``env``'s GPU, then the manifest; the variant's name. No TensorRT here: ``build_one`` is
    the only step that needs it."""
    from tqdm.auto import tqdm

    from trt_runtime.fileio import atomic_write, replace_folder, temp_folder

    root = manifest.root
    name = variant_name(env.compute_capability)
    if name in manifest.variants() and not force:
        raise LeapError(
            f"{root} already has TensorRT engines for this GPU ({name}); pass --force to rebuild them (the old "
            "ones are kept until the new ones are complete)"
        )
    files = [*source.segments, source.full]
    graphs = graph_profiles(manifest, source, dims)
    engine_cache = Path(engine_cache)
    engine_cache.mkdir(parents=True, exist_ok=True)
    Path(timing_cache).parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(root, f".{name}.tmp-")
    try:
        entries, keys = [], {}
        steps_bar = tqdm(
            list(zip(graphs, files, strict=True)),
            desc=f"TensorRT {name}",
            unit="engine",
            disable=not progress,
        )
        for (label, profile), entry in steps_bar:
            key = engine_cache_key(
                onnx_sha256=entry.sha256,
                trt_version=env.trt_version,
                compute_capability=env.compute_capability,
                precision=source.precision,
                profile=profile,
                hardware_compatibility_level=hardware_compatibility_level,
            )
            cached, target = engine_cache / f"{key}.engine", tmp / f"{label}.engine"
            if cached.is_file():
                log.info("%s: engine cache hit %s", label, cached)
                shutil.copyfile(cached, target)
            else:
                data = build_one(root / entry.file, profile, Path(timing_cache))
                if not data:
                    raise LeapError(f"TensorRT built no engine from {entry.file}")
                target.write_bytes(data)
                atomic_write(cached, lambda f, data=data: f.write(data))
            entries.append({"file": f"{name}/{label}.engine", "sha256": sha256_file(target)})
            keys[label] = key
        replace_folder(tmp, root / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # relative to the folder where it lies in it (the default)
        timing = Path(timing_cache).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        timing = str(timing_cache)
    manifest.data["variants"][name] = variant_record(
        source=source,
        entries=entries,
        env=env,
        steps=steps,
        dims=dims,
        cache_keys=keys,
        hardware_compatibility_level=hardware_compatibility_level,
        timing_cache=timing,
    )
    manifest.save()
    return name


def build_engines(
    artifacts: str | os.PathLike,
    *,
    source_variant: str = "fp16",
    profiles: Mapping[str, int | None] | ProfileDims | None = None,
    timing_cache: str | os.PathLike | None = None,
    engine_cache: str | os.PathLike | None = None,
    hardware_compatible: bool = False,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build the TensorRT engines of ``artifacts`` (an existing build folder) for this GPU and add them as
    its variant ``tensorrt-sm<cc>``; the folder.

    ``profiles``: ``opt_batch``, ``max_batch``, ``opt_seq``, ``max_seq`` (defaults above; ``max_seq``: the
    build's ``max_seq_length``). ``timing_cache``: the tactic timing cache file, loaded and saved (default
    ``artifacts/timing-cache/sm<cc>-trt<version>.cache``). ``engine_cache``: the folder of built engines by
    key (default ``$LEAP_EXPORT_CACHE/engines``). ``hardware_compatible``: build AMPERE_PLUS engines that run
    on any GPU of compute capability 8.0 or later (slower; recorded, and honoured by the runtime). ``force``
    replaces engines already built for this GPU.
    """
    from trt_runtime.manifest import load_manifest

    out = Path(artifacts)
    request = _profile_request(profiles)  # checked against the manifest below; keys and types before any work
    if source_variant not in SOURCE_VARIANTS:
        raise LeapError(
            f"TensorRT engines are built from the {' or '.join(SOURCE_VARIANTS)} graphs, not {source_variant!r}"
        )
    env = build_environment()
    steps = builder_steps(env.trt_version)
    manifest = load_manifest(out, check_files=False)
    if source_variant == "fp16" and "fp16" not in manifest.variants():
        # the fp16 graphs are a pure conversion of the fp32 ones (seconds, CPU): make them rather than refuse
        from leap_export.export import add_variant

        if progress:
            print(f"{out} has no fp16 build, which the engines are built from: adding it", file=sys.stderr)
        add_variant(out, "fp16", progress=progress)
        manifest = load_manifest(out, check_files=False)
    source = source_variant_spec(manifest, source_variant)
    manifest.check_files(source_variant)
    dims = profile_dims(manifest, request)
    level = "AMPERE_PLUS" if hardware_compatible else "NONE"
    timing = Path(timing_cache) if timing_cache is not None else default_timing_cache(out, env)
    write_engines(
        manifest,
        source,
        env=env,
        steps=steps,
        dims=dims,
        build_one=lambda onnx, profile, cache: _polygraphy_build(
            onnx, profile, cache, steps=steps, hardware_compatible=hardware_compatible
        ),
        engine_cache=Path(engine_cache) if engine_cache is not None else default_engine_cache(),
        timing_cache=timing,
        hardware_compatibility_level=level,
        force=force,
        progress=progress,
    )
    return out


def _polygraphy_build(
    onnx_path: Path, profile: Shapes, timing_cache: Path, *, steps: BuildSteps, hardware_compatible: bool
) -> bytes:
    """One engine through Polygraphy, the way both TensorRT 10.x and 11.x take it: a strongly typed network
    (the flag on 10.x only), no precision flag, one optimisation profile, the timing cache loaded and saved.
    Never run (no GPU with TensorRT has been lent to this project)."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    shapes = Profile()
    for name, (low, opt, high) in profile.items():
        shapes.add(name, min=low, opt=opt, max=high)
    options = {}
    if hardware_compatible:
        options["hardware_compatibility_level"] = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    config = CreateConfig(profiles=[shapes], load_timing_cache=str(timing_cache), **options)
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=steps.strongly_typed_flag)
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            data = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
    except PolygraphyException as e:
        raise LeapError(f"TensorRT could not build an engine from {onnx_path}: {e}") from e
    return bytes(data)


def check_request(model: str, out: Path, **ignored: Any) -> None:
    """``build MODEL --out OUT --backend tensorrt`` builds engines from the graphs already in OUT: MODEL must
    be that folder or the model it was built from, and options of an ONNX build would be ignored."""
    given = [f"--{key.replace('_', '-')}" for key, value in ignored.items() if value]
    if given:
        raise LeapError(
            f"--backend tensorrt builds engines from the graphs already in {out}, with their segment plan, opset "
            f"and exit policy; {', '.join(given)} would be ignored. Drop "
            f"{'it' if len(given) == 1 else 'them'}, or rebuild the ONNX folder with them first"
        )
    path = Path(model).expanduser()
    if path.exists() and path.resolve() == out.resolve():
        return
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise LeapError(
            f"{out} is not a leap-export build: --backend tensorrt adds engines to an existing build folder. "
            f"Build it first (`leap-export build {model} --out {out}`)"
        )
    try:
        source = json.loads(manifest_path.read_text()).get("source") or {}
    except (OSError, ValueError):
        source = {}
    if str(model) not in (source.get("spec"), source.get("path")):
        raise LeapError(
            f"--backend tensorrt builds engines from the graphs in {out} (built from {source.get('spec')}), "
            f"not from {model}: pass the build folder itself as MODEL (`leap-export build {out} --out {out} "
            "--backend tensorrt`)"
        )
