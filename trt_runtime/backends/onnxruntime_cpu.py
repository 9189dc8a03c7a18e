"""ONNX Runtime on the CPU: the default backend, and the only one that runs everywhere.

Tensors are numpy arrays (:class:`~trt_runtime.chain.NumpyOps`). Its fast path is the C host loop
(:mod:`trt_runtime.native`): one call per batch runs every segment through ONNX Runtime's C API, with the exit
test, the statistics and compaction in C. ``loop="auto"`` (or ``TRT_RUNTIME_LOOP``) takes it wherever it can
run: the library built at install (``libleap_runtime.so``, the public C API of docs/c-api.md), the shared pool
(the default), graphs whose inputs it knows. Where it cannot, the generic loop runs the same rule in Python on
sessions of the Python binding, with the same results to the last bit; ``loop="native"`` refuses to fall back,
``loop="python"`` takes the Python loop.
"""

from __future__ import annotations

import logging
import os

from trt_runtime.backends.base import Backend
from trt_runtime.chain import NumpyOps
from trt_runtime.errors import RuntimeInputError
from trt_runtime.runners import OrtRunner, default_threads

log = logging.getLogger(__name__)

LOOPS = ("auto", "native", "python")


class OnnxRuntimeCpu(Backend):
    name = "onnxruntime-cpu"
    runs = ("onnxruntime",)
    ops = NumpyOps()

    def __init__(self, manifest, variant, *, threads, options: dict) -> None:
        super().__init__(manifest, variant, threads=threads, options=options)
        self.shared_pool = bool(options.get("shared_pool", True))
        self._native = None
        self._loop = self._choose_loop(options.get("loop", "auto"))

    @classmethod
    def unavailable(cls) -> str | None:
        import importlib.util

        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"

    # -- the fast path ---------------------------------------------------------------------------------

    def _choose_loop(self, loop: str) -> tuple[str, str]:
        if loop not in LOOPS:
            raise RuntimeInputError(f"loop must be 'auto', 'native' or 'python', got {loop!r}")
        asked = loop
        if loop == "auto":
            loop = os.environ.get("TRT_RUNTIME_LOOP", "auto").strip().lower() or "auto"
            if loop not in LOOPS:
                raise RuntimeInputError(f"TRT_RUNTIME_LOOP must be auto, native or python, got {loop!r}")
        if loop == "python":
            return "python", f"loop={asked!r}" if asked == "python" else "TRT_RUNTIME_LOOP=python"
        if not self.shared_pool:
            why = "shared_pool=False (private per-session pools run on the Python binding)"
        else:
            from trt_runtime import native

            why = native.status(self.threads or default_threads())
            if why is None:
                try:  # the files were hashed by the encoder already (or it was told not to)
                    self._native = native.NativeModel(
                        self.manifest.root, self.variant.name, check_files=False
                    )
                    return "native", "the C host loop"
                except native.NativeError as e:
                    if e.status != native.LEAP_ERR_UNSUPPORTED:
                        raise
                    why = str(e)
        if loop == "native":
            asked_by = "loop='native'" if asked == "native" else "TRT_RUNTIME_LOOP=native"
            raise RuntimeInputError(
                f"{asked_by}: the C host loop cannot run here: {why}; use loop='auto' or 'python'"
            )
        log.debug("Python host loop: %s", why)
        return "python", why

    def fast_path(self):
        return self._native

    @property
    def loop(self) -> tuple[str, str]:
        return self._loop

    # -- runners -------------------------------------------------------------------------------------------

    def _runner(self, path) -> OrtRunner:
        runner = OrtRunner(path, threads=self.threads, shared_pool=self.shared_pool)
        runner.activate()
        return runner

    def segment_runners(self) -> list[OrtRunner]:
        """Sessions in the Python binding (with the C loop, made at the first traced batch)."""
        if self._runners is None:
            self._runners = [self._runner(self.manifest.root / f.file) for f in self.variant.segments]
        return self._runners

    def monolithic_runner(self):
        """In the C library's ONNX Runtime with the C loop (its pool and arena), else the Python binding's."""
        path = self.manifest.root / self.variant.full.file
        if self._native is not None:
            from trt_runtime.native import NativeRunner

            return NativeRunner(path, list(self.variant.full_outputs), self.manifest.hidden_size)
        return self._runner(path)

    def close(self) -> None:
        if self._native is not None:
            self._native.close()
            self._native = None
        super().close()
