"""ONNX Runtime on an NVIDIA GPU (``onnxruntime-gpu``, CUDAExecutionProvider), tensors kept on the device.

Every segment runs with I/O binding: its inputs are device ``OrtValue``s (the previous segment's outputs,
never copied back), its outputs are allocated by ONNX Runtime on the device. The host reads each segment's
scores (a few bytes: the one synchronisation per segment, for the exit decision) and, once some rows exit,
their pooled vectors. Compaction runs on the device: a two-node graph (``Gather`` of the surviving rows,
``Slice`` of the sequence axis to the longest survivor) on the same provider, one session per tensor kind.

Optional CUDA graphs (``backend_options={"cuda_graphs": True}``): ONNX Runtime's own capture
(``enable_cuda_graph``), one graph per input-shape bucket under its ``gpu_graph_id`` run option. A replay
reuses the device addresses it was captured with, so each bucket owns fixed input and output tensors and
an I/O binding made once; a call copies its inputs into the bucket's (a device-to-device copy by a
one-node ``Identity`` graph whose output is bound to the fixed tensor) and returns the bucket's outputs.
The bucket's first call runs without capture (``gpu_graph_id`` -1) to learn the output shapes; under the
bucket's id ONNX Runtime then runs twice more as usual (its arena's allocations), captures the fourth call
and replays from the fifth. ONNX Runtime keeps a graph per calling thread: calls from another thread
capture their own. Beyond ``max_graphs`` shapes per graph, later shapes run without one.

Not run anywhere yet: no GPU has been lent to this project. Its logic around ONNX Runtime (availability,
refusal, the compaction graph, the fixed buffers of CUDA graphs) is tested on the CPU provider, which has
no capture; the tests that run it on a GPU are marked ``gpu`` (``tests/trt_runtime/test_backends.py``) and
have never run.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, NamedTuple

import numpy as np

from trt_runtime.backends.base import Backend
from trt_runtime.errors import RuntimeInputError

PROVIDER = "CUDAExecutionProvider"


def cuda_devices() -> tuple[int, str | None]:
    """(NVIDIA GPUs the CUDA driver sees, None) or (0, why none): through ``libcuda.so.1``, the driver's
    own library, so no CUDA toolkit or Python CUDA package is needed to ask."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver (libcuda.so.1 not found)"
    if lib.cuInit(0) != 0:
        return 0, "the NVIDIA driver found no usable GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return 0, "the NVIDIA driver reports no GPU"
    return count.value, None


class OnnxRuntimeCuda(Backend):
    name = "onnxruntime-cuda"
    runs = ("onnxruntime",)

    def __init__(self, manifest, variant, *, threads, options: dict) -> None:
        super().__init__(manifest, variant, threads=threads, options=options)
        self.device_id = int(options.get("device_id", 0))
        self.provider = options.get("provider", PROVIDER)  # the tests' CPU stand-in; a user never sets it
        self.cuda_graphs = bool(options.get("cuda_graphs", False))
        self.max_graphs = check_max_graphs(options.get("max_graphs", 64))
        self.ops = CudaOps(self.device_id, self.provider)

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        import onnxruntime as ort

        if PROVIDER not in ort.get_available_providers():
            return (
                f"the installed onnxruntime {ort.__version__} has no {PROVIDER} "
                "(pip install onnxruntime-gpu in place of onnxruntime)"
            )
        count, why = cuda_devices()
        return why if count == 0 else None

    def event_timer(self):
        from trt_runtime.backends.cuda_events import EventTimer, cupy_missing

        why = cupy_missing()
        if why:
            return None, f"no CUDA events: {why}; timed with the host's clock (time.perf_counter)"
        import cupy

        cupy.cuda.Device(self.device_id).use()
        return (
            EventTimer(),
            "CUDA events (CuPy) on the legacy default stream, around calls that end synchronised",
        )

    def _runner(self, entry) -> OrtCudaRunner:
        return OrtCudaRunner(
            self.manifest.root / entry.file,
            self.device_id,
            self.provider,
            cuda_graphs=self.cuda_graphs,
            max_graphs=self.max_graphs,
        )

    def segment_runners(self) -> list[OrtCudaRunner]:
        if self._runners is None:
            runners = [self._runner(f) for f in self.variant.segments]
            for runner in runners:
                runner.activate()
            self._runners = runners
        return self._runners

    def monolithic_runner(self):
        runner = HostIO(self._runner(self.variant.full), self.ops)
        runner.activate()
        return runner


def check_max_graphs(value) -> int:
    """``max_graphs`` as an int >= 1, or an error that says what was given."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RuntimeInputError(f"backend option max_graphs must be an integer >= 1, got {value!r}")
    return value


def cuda_session_options(threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    from trt_runtime.runners import global_pool_exists

    if global_pool_exists():  # a CPU encoder of this process made ONNX Runtime's global pool: join it
        so.use_per_session_threads = False
    elif threads:
        so.intra_op_num_threads = threads  # the CPU ops the provider leaves to the host
    return so


class OrtCudaRunner:
    """One graph on the CUDA provider with I/O binding: ``infer`` takes and returns device ``OrtValue``s.

    ``provider``: the CPU provider runs the same binding code on the host (the tests' stand-in for a GPU;
    it has no CUDA graphs, so with ``cuda_graphs`` it runs the fixed-buffer bookkeeping without a capture).
    With ``cuda_graphs`` the outputs returned are the shape bucket's fixed tensors, valid until this runner's
    next call with the same shapes (the loop consumes them before: each segment runs once per batch).
    """

    def __init__(
        self,
        path,
        device_id: int = 0,
        provider: str = PROVIDER,
        *,
        cuda_graphs: bool = False,
        max_graphs: int = 64,
    ) -> None:
        self.path = path
        self.device_id = device_id if provider == PROVIDER else 0
        self.provider = provider
        self.device = "cuda" if provider == PROVIDER else "cpu"
        self.cuda_graphs = cuda_graphs
        self.max_graphs = max_graphs
        self.session = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        self._buckets: dict[tuple, _Bucket] = {}

    def activate(self) -> None:
        if self.session is not None:
            return
        import onnxruntime as ort

        cuda_options = {"device_id": self.device_id}
        if self.cuda_graphs:
            cuda_options["enable_cuda_graph"] = "1"
        providers = [(PROVIDER, cuda_options), "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(
                str(self.path),
                sess_options=cuda_session_options(),
                providers=providers if self.provider == PROVIDER else [self.provider],
            )
        except Exception as e:
            if not self.cuda_graphs:
                raise
            raise RuntimeInputError(
                f"ONNX Runtime could not prepare {self.path} for CUDA graphs ({e}); run with "
                "backend_options={'cuda_graphs': False}"
            ) from e
        if session.get_providers()[0] != self.provider:  # ONNX Runtime fell back to the CPU: never silently
            raise RuntimeInputError(
                f"ONNX Runtime could not start {self.provider} on GPU {self.device_id} for {self.path}: it would "
                f"run on {', '.join(session.get_providers())}"
            )
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def _run_plain(self, feeds: dict[str, Any], run_options=None) -> dict[str, Any]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding, run_options)
        return dict(zip(self.output_names, binding.get_outputs(), strict=True))

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if not self.cuda_graphs:
            return self._run_plain(feeds)
        key = tuple((name, tuple(feeds[name].shape()), feeds[name].data_type()) for name in self.input_names)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_graphs:  # too many shapes to keep a graph each: run plainly
                return self._run_plain(feeds, _run_options(-1))
            bucket = self._new_bucket(feeds, len(self._buckets) + 1)  # 0 is ONNX Runtime's own default id
            self._buckets[key] = bucket
            return bucket.outputs
        for name in self.input_names:
            _copy_into(bucket.inputs[name], feeds[name], self.provider, self.device_id)
        self.session.run_with_iobinding(bucket.binding, bucket.run_options)
        return bucket.outputs

    def _new_bucket(self, feeds: dict[str, Any], graph_id: int) -> _Bucket:
        """Fixed inputs (copies of ``feeds``), one run without capture whose outputs become the fixed outputs
        (and this call's result), and the binding later calls replay under ``graph_id``."""
        import onnxruntime as ort

        inputs = {}
        for name in self.input_names:
            value = feeds[name]
            fixed = ort.OrtValue.ortvalue_from_shape_and_type(
                value.shape(), _ONNX_TYPES[value.data_type()], self.device, self.device_id
            )
            _copy_into(fixed, value, self.provider, self.device_id)
            inputs[name] = fixed
        outputs = self._run_plain(inputs, _run_options(-1))
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        return _Bucket(inputs, outputs, binding, _run_options(graph_id))

    def deactivate(self) -> None:
        self._buckets.clear()
        self.session = None


class _Bucket(NamedTuple):
    inputs: dict[str, Any]  # name -> fixed device OrtValue
    outputs: dict[str, Any]
    binding: Any  # bound once to the fixed tensors
    run_options: Any  # gpu_graph_id of this bucket


def _run_options(graph_id: int):
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", str(graph_id))
    return options


def _copy_into(target, source, provider: str, device_id: int) -> None:
    """``target[...] = source`` on the device (two OrtValues of one shape and type), unless they are one."""
    if source.data_ptr() == target.data_ptr():
        return
    rank = len(source.shape())
    session = _copy_session(source.data_type(), rank, provider, device_id)
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", source)
    binding.bind_ortvalue_output("y", target)
    session.run_with_iobinding(binding)


class HostIO:
    """A device runner with host arrays in and out (the monolithic baseline: what a caller hands over)."""

    def __init__(self, runner: OrtCudaRunner, ops: CudaOps) -> None:
        self.runner, self.ops = runner, ops
        self.input_names, self.output_names = ["input_ids", "attention_mask"], ["pooled"]

    def activate(self) -> None:
        self.runner.activate()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.runner.infer(
            {name: self.ops.from_host(np.ascontiguousarray(v)) for name, v in feeds.items()}
        )
        return {"pooled": self.ops.to_host(out["pooled"])}

    def deactivate(self) -> None:
        self.runner.deactivate()


class CudaOps:
    """Device ``OrtValue``s; compaction by a Gather + Slice graph on the CUDA provider."""

    def __init__(self, device_id: int = 0, provider: str = PROVIDER) -> None:
        self.device = "cuda" if provider == PROVIDER else "cpu"
        self.device_id = device_id if provider == PROVIDER else 0
        self.provider = provider

    def from_host(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    @staticmethod
    def to_host(tensor) -> np.ndarray:
        return tensor.numpy()

    def compact(self, tensor, rows: np.ndarray, seq_axis: int | None, width: int):
        rank = len(tensor.shape())
        axis = None if seq_axis is None else seq_axis % rank
        session = _compaction_session(tensor.data_type(), rank, axis, self.provider, self.device_id)
        feeds = {"x": tensor, "rows": self.from_host(np.asarray(rows, dtype=np.int64))}
        if axis is not None:
            feeds["width"] = self.from_host(np.asarray([width], dtype=np.int64))
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("y", self.device, self.device_id)
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0]


_ONNX_TYPES = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(int32)": 6, "tensor(int64)": 7}


def _helper_session(graph, provider: str, device_id: int):
    """A session of one of the backend's own small graphs (compaction, copy) on ``provider``."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    providers = [(provider, {"device_id": device_id})] if provider == PROVIDER else [provider]
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=cuda_session_options(1), providers=providers
    )


@functools.cache
def _copy_session(data_type: str, rank: int, provider: str, device_id: int):
    """``y = Identity(x)``, one session per kind of tensor: a device-to-device copy into a bound output."""
    from onnx import helper

    elem = _ONNX_TYPES[data_type]
    dims = [f"d{i}" for i in range(rank)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "copy",
        [helper.make_tensor_value_info("x", elem, dims)],
        [helper.make_tensor_value_info("y", elem, dims)],
    )
    return _helper_session(graph, provider, device_id)


@functools.cache
def _compaction_session(data_type: str, rank: int, seq_axis: int | None, provider: str, device_id: int):
    """``y = Slice(Gather(x, rows, axis 0), [0], [width], [seq_axis])``, one session per kind of tensor."""
    from onnx import TensorProto, helper

    elem = _ONNX_TYPES[data_type]
    dims = [f"d{i}" for i in range(rank)]
    inputs = [
        helper.make_tensor_value_info("x", elem, dims),
        helper.make_tensor_value_info("rows", TensorProto.INT64, ["r"]),
    ]
    nodes = [helper.make_node("Gather", ["x", "rows"], ["g" if seq_axis is not None else "y"], axis=0)]
    initializers = []
    if seq_axis is not None:
        inputs.append(helper.make_tensor_value_info("width", TensorProto.INT64, [1]))
        initializers += [
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [seq_axis]),
        ]
        nodes.append(helper.make_node("Slice", ["g", "zero", "width", "axis"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "compact",
        inputs,
        [helper.make_tensor_value_info("y", elem, [f"y{i}" for i in range(rank)])],
        initializer=initializers,
    )
    return _helper_session(graph, provider, device_id)
