"""Segments served by other Triton models, called from a Triton Python model (BLS: business logic scripting).

For GPU deployments with Triton: every segment graph is a model of its own on Triton's onnxruntime or
TensorRT backend (``leap-export triton --layout bls``), and the orchestrator model (``leap_encoder``, Python)
runs the one early-exit loop (:class:`trt_runtime.chain.SegmentChain`) across them: each segment run is a
``pb_utils.InferenceRequest`` to that segment's model, carrying only the rows still running. Tensors come
back to the orchestrator as host arrays, so compaction is the CPU backend's numpy gather.

Not in the registry (``backend="auto"`` never takes it): it runs only inside a Triton Python model, which
passes the class itself, ``EarlyExitEncoder(..., backend=TritonBls, backend_options={"models": [...]})``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from trt_runtime.backends.base import Backend
from trt_runtime.chain import NumpyOps
from trt_runtime.errors import RuntimeInputError


class BlsRunner:
    """One segment model on the same server: ``infer`` sends the feeds it takes, returns the outputs asked for."""

    def __init__(self, model: str, inputs, outputs) -> None:
        self.model = model
        self.input_names = list(inputs)
        self.output_names = list(outputs)

    def activate(self) -> None:
        pass

    def infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        import triton_python_backend_utils as pb_utils

        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(feeds[name])) for name in self.input_names]
        response = pb_utils.InferenceRequest(
            model_name=self.model, requested_output_names=self.output_names, inputs=tensors
        ).exec()
        if response.has_error():
            raise RuntimeError(f"segment model {self.model}: {response.error().message()}")
        return {
            name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.output_names
        }

    def deactivate(self) -> None:
        pass


class TritonBls(Backend):
    name = "triton-bls"
    runs = ("onnxruntime", "tensorrt")
    ops = NumpyOps()

    def __init__(self, manifest, variant, *, threads, options: dict) -> None:
        super().__init__(manifest, variant, threads=threads, options=options)
        models = list(options.get("models") or [])
        if len(models) != len(manifest.segments):
            raise RuntimeInputError(
                f"the BLS backend needs one segment model per segment ({len(manifest.segments)}), got {models}"
            )
        self._runners = [
            BlsRunner(model, seg.inputs, seg.outputs)
            for model, seg in zip(models, manifest.segments, strict=True)
        ]

    @classmethod
    def unavailable(cls) -> str | None:
        if importlib.util.find_spec("triton_python_backend_utils") is None:
            return "the BLS backend runs only inside a Triton Python-backend model"
        return None

    def segment_runners(self):
        return self._runners

    def monolithic_runner(self):
        raise RuntimeInputError("the BLS backend serves the segments only (no monolithic graph)")

    def close(self) -> None:
        self._runners = []
