"""The backend registry: which backend runs which build, and which one ``backend="auto"`` takes.

========================  ==================================  ===============================================
backend                    runs (manifest variant ``backend``)  needs
========================  ==================================  ===============================================
``onnxruntime-cpu``        ONNX graphs (``onnxruntime``)        onnxruntime (always installed)
``onnxruntime-cuda``       ONNX graphs (``onnxruntime``)        onnxruntime-gpu and an NVIDIA GPU
``tensorrt``               engines (``tensorrt``)               TensorRT 10 or 11, CuPy, an NVIDIA GPU
                                                                matching the engines' compute capability
========================  ==================================  ===============================================

``auto`` tries them in that order reversed (TensorRT where engines for this GPU were built, then ONNX
Runtime on CUDA, then the CPU) and says why it passed over each. A backend asked for by name that cannot run
is an error naming what is missing; nothing falls back silently. Backend modules are imported only when
asked for, so a CPU-only install never imports a GPU stack.
"""

from __future__ import annotations

import importlib

from trt_runtime.backends.base import Backend
from trt_runtime.errors import RuntimeInputError
from trt_runtime.manifest import Manifest, VariantSpec

BACKENDS = {
    "onnxruntime-cpu": "trt_runtime.backends.onnxruntime_cpu:OnnxRuntimeCpu",
    "onnxruntime-cuda": "trt_runtime.backends.onnxruntime_cuda:OnnxRuntimeCuda",
    "tensorrt": "trt_runtime.backends.tensorrt:TensorRT",
}
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
CHOICES = ("auto", *BACKENDS)


def backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise RuntimeInputError(f"backend must be one of {', '.join(CHOICES)}, got {name!r}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def why_not(name: str, manifest: Manifest, variant: str | None) -> tuple[VariantSpec | None, str | None]:
    """(the variant ``name`` would run, None) where it can run here; (None, why not) otherwise.

    ``variant`` None: the build's default variant, or for TensorRT the engines built for this GPU.
    """
    cls = backend_class(name)
    missing = cls.unavailable()
    if missing:
        return None, missing
    try:
        spec = _variant_for(cls, manifest, variant)
    except RuntimeInputError as e:
        return None, str(e)
    problem = cls.cannot_run(manifest, spec)
    return (None, problem) if problem else (spec, None)


def _variant_for(cls: type[Backend], manifest: Manifest, variant: str | None) -> VariantSpec:
    if variant is not None:
        return manifest.variant_spec(variant)
    pick = getattr(cls, "pick_variant", None)  # a backend with builds of its own (TensorRT: per GPU)
    return pick(manifest) if pick else manifest.variant_spec(None)


def choose(
    manifest: Manifest, variant: str | None, backend: str | type[Backend]
) -> tuple[type[Backend], VariantSpec, str]:
    """(backend class, variant, why) for ``backend`` ("auto" or a name). A named backend that cannot run is
    an error that says what is missing. A :class:`Backend` subclass is taken as it is: a backend that runs
    only in a host of its own, outside this registry (the Triton BLS backend inside a Triton model)."""
    if isinstance(backend, type) and issubclass(backend, Backend):
        missing = backend.unavailable()
        spec = None if missing else _variant_for(backend, manifest, variant)
        problem = missing or backend.cannot_run(manifest, spec)
        if problem:
            raise RuntimeInputError(f"backend {backend.name!r} cannot run here: {problem}")
        return backend, spec, f"backend={backend.name!r}"
    if backend not in CHOICES:
        raise RuntimeInputError(f"backend must be one of {', '.join(CHOICES)}, got {backend!r}")
    if backend != "auto":
        spec, why = why_not(backend, manifest, variant)
        if spec is None:
            raise RuntimeInputError(f"backend {backend!r} cannot run here: {why}")
        return backend_class(backend), spec, f"backend={backend!r}"
    passed = []
    for name in AUTO_ORDER:
        spec, why = why_not(name, manifest, variant)
        if spec is not None:
            reason = f"auto: {name}" + (f" ({'; '.join(passed)})" if passed else "")
            return backend_class(name), spec, reason
        passed.append(f"not {name}: {why}")
    raise RuntimeInputError("no backend can run this build here: " + "; ".join(passed))
