"""TensorRT engines on an NVIDIA GPU (TensorRT 10.x and 11.x), tensors kept on the device as CuPy arrays.

Engines are built by ``leap-export build ART --out ART --backend tensorrt`` (:mod:`leap_export.tensorrt_build`)
from the build's fp16 graphs, one per segment and one for the monolithic graph, and recorded in the manifest
as a variant of their own per GPU compute capability (``tensorrt-sm90``...) with the TensorRT version, GPU
name, compute capability and optimisation profile they were built with. An engine runs only on the TensorRT
version and the GPU type that built it: a variant built for another GPU or with another TensorRT version is
refused here with the command that rebuilds it, never loaded to fail later.

At run time every engine is deserialised once and given one execution context; all work runs on one CUDA
stream. A runner binds its inputs (CuPy arrays, the previous segment's outputs, never copied to the host)
with ``set_input_shape`` + ``set_tensor_address``, allocates its outputs from ``get_tensor_shape`` and
enqueues ``execute_async_v3``. Compaction (rows that survive an exit, the sequence trimmed to the longest)
runs on the device (``cupy.take``, a slice, ``cupy.ascontiguousarray``). The host reads each segment's
scores once (the one synchronisation per segment) and pooled vectors when rows exit.

Optional CUDA graphs (``backend_options={"cuda_graphs": True}``): one graph per input-shape bucket, captured
after one warm-up run, replayed with the inputs copied into the bucket's fixed buffers.

Honestly: none of this has run. No GPU with TensorRT has been lent to this project, and TensorRT's
libraries cannot be installed where it is developed. What is checked without one: the selection and
refusal logic (pure functions, tested with manifest records), and every TensorRT name this module uses
(``TRT_NAMES``, checked by an AST walk of this file and against the compiled bindings of the latest
TensorRT 10.x and 11.x wheels: ``tests/trt_runtime/test_trt_names.py``). The device path is marked ``gpu``
in the tests.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import numpy as np

from trt_runtime.backends.base import Backend
from trt_runtime.errors import RuntimeInputError
from trt_runtime.manifest import Manifest, VariantSpec

SUPPORTED_MAJORS = (10, 11)
# Every TensorRT name this module uses (attributes of the ``tensorrt`` module and of its objects), the same on
# 10.x and 11.x. tests/trt_runtime/test_trt_names.py finds every such name in the code (a name used but not
# listed fails) and looks each up in both versions' compiled bindings.
TRT_NAMES = (
    "__version__",
    "Logger",
    "WARNING",
    "Runtime",
    "deserialize_cuda_engine",
    "create_execution_context",
    "num_io_tensors",
    "get_tensor_name",
    "get_tensor_mode",
    "TensorIOMode",
    "INPUT",
    "get_tensor_dtype",
    "nptype",
    "get_tensor_profile_shape",
    "set_input_shape",
    "set_tensor_address",
    "get_tensor_shape",
    "execute_async_v3",
)
AMPERE = (8, 0)  # hardware_compatibility_level AMPERE_PLUS: engines run on compute capability 8.0 and later


def rebuild_command(root, force: bool = False) -> str:
    return f"`leap-export build {root} --out {root} --backend tensorrt{' --force' if force else ''}`"


def variant_name(compute_capability: tuple[int, int]) -> str:
    """The manifest variant holding the engines for a compute capability: (9, 0) -> ``tensorrt-sm90``."""
    major, minor = compute_capability
    return f"tensorrt-sm{major}{minor}"


def parse_compute_capability(text: str) -> tuple[int, int]:
    """``"9.0"`` -> (9, 0), as the manifest records it."""
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def format_compute_capability(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def trt_major(version: str) -> int:
    """The major version of a TensorRT version string ("10.16.1.11" -> 10)."""
    return int(str(version).split(".")[0])


class GpuInfo(NamedTuple):
    name: str
    compute_capability: tuple[int, int]


_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def gpu_info(device_id: int = 0) -> tuple[GpuInfo | None, str | None]:
    """(the GPU's name and compute capability, None) or (None, why there is none), from the NVIDIA driver's
    own library (``libcuda.so.1``): no CUDA toolkit, CuPy or TensorRT needed to ask. ``device_id`` counts
    the GPUs ``CUDA_VISIBLE_DEVICES`` leaves visible, as every CUDA library does."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None, "no NVIDIA driver (libcuda.so.1 not found)"
    if lib.cuInit(0) != 0:
        return None, "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None, "the NVIDIA driver reports no GPU"
    if not 0 <= device_id < count.value:
        return None, f"GPU {device_id} does not exist (the driver sees {count.value})"
    device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    if (
        lib.cuDeviceGet(ctypes.byref(device), device_id) != 0
        or lib.cuDeviceGetAttribute(
            ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device
        )
        != 0
        or lib.cuDeviceGetAttribute(
            ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device
        )
        != 0
        or lib.cuDeviceGetName(name, len(name), device) != 0
    ):
        return None, f"the NVIDIA driver could not describe GPU {device_id}"
    return GpuInfo(name.value.decode(errors="replace"), (major.value, minor.value)), None


def installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (an import hook refusing it: not installed)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def import_tensorrt() -> tuple[Any, str | None]:
    """(the ``tensorrt`` module, None) or (None, why it cannot be used here)."""
    if not installed("tensorrt"):
        return None, (
            "TensorRT is not installed (its Python package `tensorrt` and the libnvinfer libraries: "
            "pip install tensorrt-cu12 or tensorrt-cu13)"
        )
    try:
        import tensorrt as trt
    except Exception as e:  # the bindings without libnvinfer: ImportError or OSError, by version
        return None, f"TensorRT's Python package is there but its libraries cannot be loaded ({e})"
    version = str(trt.__version__)
    if trt_major(version) not in SUPPORTED_MAJORS:
        return None, (
            f"TensorRT {version} is not supported (TensorRT {' or '.join(map(str, SUPPORTED_MAJORS))}.x is)"
        )
    return trt, None


def engine_mismatch(
    record: dict[str, Any], *, trt_version: str, compute_capability: tuple[int, int], root, name: str
) -> str | None:
    """Why the engines of manifest variant ``name`` (its entry ``record``) cannot run with TensorRT
    ``trt_version`` on a GPU of ``compute_capability``; None if they can.

    Engines run only on the exact TensorRT version that built them, and on the compute capability they
    were built for, unless built with hardware compatibility (``AMPERE_PLUS``: 8.0 and later).
    Version-compatible engines are not built by leap-export: a record claiming one still needs the same
    version.
    """
    built = record.get("tensorrt")
    if not isinstance(built, dict) or "version" not in built or "compute_capability" not in built:
        return (
            f"variant {name!r} has no TensorRT build record (version, GPU); rebuild the engines with "
            f"{rebuild_command(root, force=True)}"
        )
    built_cc = parse_compute_capability(built["compute_capability"])
    level = str(built.get("hardware_compatibility_level", "NONE"))
    problems = []
    if str(built["version"]) != str(trt_version):
        problems.append(f"TensorRT {built['version']}, and this process has TensorRT {trt_version}")
    if level == "AMPERE_PLUS":
        if compute_capability < AMPERE:
            problems.append(
                f"GPUs of compute capability {format_compute_capability(AMPERE)} and later "
                f"(hardware compatibility AMPERE_PLUS), and this GPU is "
                f"{format_compute_capability(compute_capability)}"
            )
    elif built_cc != compute_capability:
        problems.append(
            f"compute capability {format_compute_capability(built_cc)} ({built.get('gpu', 'GPU unknown')}), "
            f"and this GPU is {format_compute_capability(compute_capability)}"
        )
    if not problems:
        return None
    return (
        f"the engines of variant {name!r} were built for {'; and for '.join(problems)}: a TensorRT engine runs "
        f"only with the TensorRT version and on the GPU type that built it. Rebuild them here with "
        f"{rebuild_command(root, force=True)}"
    )


def select_engines(manifest: Manifest, compute_capability: tuple[int, int]) -> VariantSpec:
    """The build's engines for a GPU of ``compute_capability``: the variant recorded for exactly that
    compute capability, else one built hardware-compatible for it; an error naming what there is otherwise."""
    engines = [spec for spec in map(manifest.variant_spec, manifest.variants()) if spec.backend == "tensorrt"]
    root = manifest.root
    if not engines:
        return _no_engines(f"{root} has no TensorRT engines", root)

    def built(spec: VariantSpec) -> dict:
        record = spec.record.get("tensorrt")
        return record if isinstance(record, dict) else {}

    def cc_of(spec: VariantSpec) -> tuple[int, int] | None:
        try:
            return parse_compute_capability(built(spec)["compute_capability"])
        except (KeyError, ValueError):
            return None

    exact = [spec for spec in engines if cc_of(spec) == compute_capability]
    if exact:
        return exact[0]
    compatible = [
        spec
        for spec in engines
        if built(spec).get("hardware_compatibility_level") == "AMPERE_PLUS" and compute_capability >= AMPERE
    ]
    if compatible:
        return compatible[0]
    others = ", ".join(
        f"{spec.name} ({built(spec).get('gpu', 'GPU unknown')}, compute capability "
        f"{built(spec).get('compute_capability', 'unknown')})"
        for spec in engines
    )
    return _no_engines(
        f"{root} has TensorRT engines only for other GPUs: {others}; this GPU has compute capability "
        f"{format_compute_capability(compute_capability)}",
        root,
    )


def _no_engines(why: str, root) -> VariantSpec:
    raise RuntimeInputError(
        f"{why}. Build engines on the GPU (type) that will run them: {rebuild_command(root)}"
    )


class TensorRT(Backend):
    """Options (``backend_options``): ``device_id`` (0), ``cuda_graphs`` (False), ``max_graphs`` (64: shape
    buckets per engine that get a CUDA graph; later shapes run without one)."""

    name = "tensorrt"
    runs = ("tensorrt",)

    def __init__(self, manifest, variant, *, threads, options: dict) -> None:
        super().__init__(manifest, variant, threads=threads, options=options)
        import cupy

        trt, why = import_tensorrt()
        if trt is None:
            raise RuntimeInputError(f"backend 'tensorrt' cannot run here: {why}")
        self.device_id = int(options.get("device_id", 0))
        gpu, no_gpu = gpu_info(self.device_id)  # choose() checked GPU 0; the one asked for must match too
        problem = no_gpu or engine_mismatch(
            variant.record,
            trt_version=str(trt.__version__),
            compute_capability=gpu.compute_capability,
            root=manifest.root,
            name=variant.name,
        )
        if problem:
            raise RuntimeInputError(f"backend 'tensorrt' cannot run on GPU {self.device_id}: {problem}")
        self.max_batch = int(variant.record["tensorrt"]["profile"]["batch"]["max"])  # encode batches by it
        self.cuda_graphs = bool(options.get("cuda_graphs", False))
        self.max_graphs = int(options.get("max_graphs", 64))
        cupy.cuda.Device(self.device_id).use()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.ops = CupyOps(self.stream)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)

    @classmethod
    def unavailable(cls) -> str | None:
        missing = []
        _, why = import_tensorrt()
        if why:
            missing.append(why)
        if not installed("cupy"):
            missing.append("CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)")
        _, no_gpu = gpu_info(0)
        if no_gpu:
            missing.append(no_gpu)
        return "; ".join(missing) or None

    @classmethod
    def pick_variant(cls, manifest: Manifest) -> VariantSpec:
        """The engines built for this GPU's compute capability (GPU 0 of those ``CUDA_VISIBLE_DEVICES``
        leaves)."""
        gpu, why = gpu_info(0)
        if gpu is None:
            raise RuntimeInputError(why)
        return select_engines(manifest, gpu.compute_capability)

    @classmethod
    def cannot_run(cls, manifest: Manifest, variant: VariantSpec) -> str | None:
        problem = super().cannot_run(manifest, variant)
        if problem:
            return problem
        trt, why = import_tensorrt()
        gpu, no_gpu = gpu_info(0)
        if trt is None or gpu is None:
            return why or no_gpu
        return engine_mismatch(
            variant.record,
            trt_version=str(trt.__version__),
            compute_capability=gpu.compute_capability,
            root=manifest.root,
            name=variant.name,
        )

    def event_timer(self):
        from trt_runtime.backends.cuda_events import EventTimer

        return EventTimer(self.stream), "CUDA events (CuPy) on the engines' stream"

    def _runner(self, entry) -> EngineRunner:
        return EngineRunner(
            self.manifest.root / entry.file,
            self._trt,
            self._runtime,
            self.stream,
            cuda_graphs=self.cuda_graphs,
            max_graphs=self.max_graphs,
            rebuild=rebuild_command(self.manifest.root, force=True),
        )

    def segment_runners(self) -> list[EngineRunner]:
        if self._runners is None:
            runners = [self._runner(entry) for entry in self.variant.segments]
            for runner in runners:
                runner.activate()
            self._runners = runners
        return self._runners

    def monolithic_runner(self):
        from trt_runtime.backends.onnxruntime_cuda import HostIO

        runner = HostIO(self._runner(self.variant.full), self.ops)
        runner.activate()
        return runner


class EngineRunner:
    """One engine, one execution context, on ``stream``: ``infer`` takes and returns CuPy arrays.

    Outputs are allocated per call (from CuPy's pool, on the stream) in the shapes TensorRT reports for the
    bound inputs. With ``cuda_graphs`` the first call of a shape bucket (the tuple of input shapes) runs
    plainly on fixed buffers (the warm-up) and the same run is then captured as a CUDA graph; later calls
    copy their inputs into the bucket's fixed buffers and replay the graph. The outputs returned are then
    the bucket's fixed buffers, valid until this runner's next call with the same shapes (the loop
    consumes them before: each segment runs once per batch). Never run: see the module's docstring.
    """

    def __init__(
        self,
        path,
        trt,
        runtime,
        stream,
        *,
        cuda_graphs: bool = False,
        max_graphs: int = 64,
        rebuild: str = "",
    ) -> None:
        self.path = path
        self.trt = trt
        self.runtime = runtime
        self.stream = stream
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.rebuild = rebuild
        self.engine = None
        self.context = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._dtypes: dict[str, np.dtype] = {}
        self._limits: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._graphs: dict[tuple, tuple[dict, dict, Any]] = {}

    def activate(self) -> None:
        if self.context is not None:
            return
        with open(self.path, "rb") as f:
            engine = self.runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise RuntimeInputError(
                f"TensorRT could not load the engine {self.path} (see TensorRT's message above); "
                f"rebuild the engines with {self.rebuild}"
            )
        context = engine.create_execution_context()
        if context is None:
            raise RuntimeInputError(f"TensorRT could not create an execution context for {self.path}")
        names = [str(engine.get_tensor_name(i)) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self._dtypes = {n: np.dtype(self.trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        for n in self.input_names:
            low, _, high = engine.get_tensor_profile_shape(n, 0)
            self._limits[n] = (tuple(low), tuple(high))
        self.engine, self.context = engine, context

    def _check(self, name: str, tensor) -> tuple[int, ...]:
        shape = tuple(tensor.shape)
        if tensor.dtype != self._dtypes[name]:
            raise RuntimeInputError(
                f"{self.path.name}: input {name} is {tensor.dtype}, the engine takes {self._dtypes[name]}"
            )
        low, high = self._limits[name]
        if len(shape) != len(high) or any(
            not lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)
        ):
            raise RuntimeInputError(
                f"{self.path.name}: input {name} of shape {list(shape)} lies outside the engine's optimisation "
                f"profile ({list(low)} to {list(high)}: batch, then sequence length). Encode with a batch_size "
                f"the engines take, or rebuild them with a larger --max-batch / --max-seq: {self.rebuild}"
            )
        return shape

    def _bind(self, feeds: dict[str, Any], shapes: tuple) -> dict[str, Any]:
        """Shapes and addresses of ``feeds`` and of fresh outputs, set on the context; the outputs."""
        import cupy

        context = self.context
        for name, shape in zip(self.input_names, shapes, strict=True):
            if not (
                context.set_input_shape(name, shape)
                and context.set_tensor_address(name, feeds[name].data.ptr)
            ):
                raise RuntimeInputError(f"TensorRT refused input {name} {list(shape)} of {self.path}")
        outputs = {}
        with self.stream:
            for name in self.output_names:
                out = cupy.empty(tuple(context.get_tensor_shape(name)), dtype=self._dtypes[name])
                if not context.set_tensor_address(name, out.data.ptr):
                    raise RuntimeInputError(f"TensorRT refused the buffer of output {name} of {self.path}")
                outputs[name] = out
        return outputs

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise RuntimeInputError(f"TensorRT failed to run {self.path} (see TensorRT's message above)")

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        import cupy

        with self.stream:
            feeds = {n: cupy.ascontiguousarray(feeds[n]) for n in self.input_names}
        shapes = tuple(self._check(n, feeds[n]) for n in self.input_names)
        if not self.cuda_graphs:
            outputs = self._bind(feeds, shapes)
            self._enqueue()
            return outputs
        bucket = self._graphs.get(shapes)
        if bucket is None:
            if len(self._graphs) >= self.max_graphs:  # too many shapes to keep a graph each: run plainly
                outputs = self._bind(feeds, shapes)
                self._enqueue()
                return outputs
            bucket = self._capture(feeds, shapes)
            self._graphs[shapes] = bucket
            return bucket[1]
        inputs, outputs, graph = bucket
        with self.stream:
            for name in self.input_names:
                cupy.copyto(inputs[name], feeds[name])
        graph.launch(self.stream)
        return outputs

    def _capture(self, feeds: dict[str, Any], shapes: tuple) -> tuple[dict, dict, Any]:
        """Fixed buffers for a shape bucket, one plain run on them (the warm-up, whose outputs are this call's
        result), then the capture of the same run as a CUDA graph."""
        import cupy

        with self.stream:
            inputs = {name: cupy.array(feeds[name], copy=True) for name in self.input_names}
        outputs = self._bind(inputs, shapes)
        self._enqueue()
        self.stream.begin_capture()
        try:
            self._enqueue()
        except BaseException:
            self.stream.end_capture()
            raise
        try:
            graph = self.stream.end_capture()
        except Exception as e:
            raise RuntimeInputError(
                f"capturing {self.path.name} as a CUDA graph failed ({e}); run with cuda_graphs=False"
            ) from e
        return inputs, outputs, graph

    def deactivate(self) -> None:
        self._graphs.clear()
        self.context = None  # the context before the engine it came from
        self.engine = None


class CupyOps:
    """CuPy arrays on the backend's stream; compaction with ``cupy.take`` on the device."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def from_host(self, array: np.ndarray):
        import cupy

        with self.stream:
            return cupy.asarray(np.ascontiguousarray(array))

    def to_host(self, tensor) -> np.ndarray:
        import cupy

        host = cupy.asnumpy(tensor, stream=self.stream)
        self.stream.synchronize()  # the copy is asynchronous on CuPy releases older than its blocking=True
        return host

    def compact(self, tensor, rows: np.ndarray, seq_axis: int | None, width: int):
        import cupy

        with self.stream:
            kept = cupy.take(tensor, cupy.asarray(np.asarray(rows, dtype=np.int64)), axis=0)
            if seq_axis is not None:
                index = [slice(None)] * kept.ndim
                index[seq_axis] = slice(0, width)
                kept = kept[tuple(index)]
            return cupy.ascontiguousarray(kept)
