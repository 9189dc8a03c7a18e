"""The host loop in C: ``libleap_runtime.so`` (``trt_runtime/_native``), loaded with ctypes.

The library is the runtime's public C API (``trt_runtime/_native/include/leap_runtime.h``, docs/c-api.md):
this module calls the same functions a C or C++ program calls. One ``leap_run`` runs a padded batch
through every segment: the exit test, the statistics, compaction with the padding trim and the scatter back
happen in C, between ONNX Runtime runs, with no Python in between. That removes the Python binding's per-run
work from each hand-off, the largest part of the batch-1 monitoring overhead that the host adds
(docs/runtime.md).

The C library calls ONNX Runtime's C API in the ``libonnxruntime.so`` that the onnxruntime wheel ships
beside its Python module. That is a second copy of ONNX Runtime in the process, with its own environment,
thread pool and arena: sessions made here never meet the Python binding's, so every graph a comparison
times (the monolithic baseline of ``bench`` included: :class:`NativeRunner`) must run here too, never
half here and half there. The settings are those of :func:`trt_runtime.runners.ort_session_options`:
one process-wide pool of ``threads`` threads with spinning, one shared CPU arena, ``ORT_ENABLE_ALL``.

Unavailable (the library was not built: no C compiler at install; a wheel without it; ONNX Runtime older
than 1.22): :func:`status` says why, and the encoder keeps its Python loop.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trt_runtime.errors import ArtifactError, RuntimeInputError

log = logging.getLogger(__name__)

LIBRARY_NAME = "libleap_runtime.so"
_ID_TYPES = {np.dtype(np.int32): 6, np.dtype(np.int64): 7}  # leap_dtype: LEAP_INT32, LEAP_INT64
# leap_status
LEAP_OK, LEAP_ERR_ARGUMENT, LEAP_ERR_INPUT, LEAP_ERR_POLICY = 0, 1, 2, 3
LEAP_ERR_ARTIFACT, LEAP_ERR_UNSUPPORTED, LEAP_ERR_ONNXRUNTIME, LEAP_ERR_MEMORY = 4, 5, 6, 7
LEAP_OPEN_NO_HASH_CHECK = 1

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_runtime: ctypes.c_void_p | None = None  # this process's leap_runtime (its ONNX Runtime pool)
_error: str | None = None  # why the C loop cannot run here (None: not tried yet, or it runs)
_threads: int | None = None  # the size of the C library's pool, once created
_warned: set[int] = set()


class NativeError(RuntimeError):
    """The C library failed (ONNX Runtime's message, or what the library checked, follows)."""

    def __init__(self, message: str, status: int = LEAP_ERR_ONNXRUNTIME) -> None:
        super().__init__(message)
        self.status = status


# the structs of leap_runtime.h, field for field
class _RuntimeOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("ort_library", ctypes.c_char_p), ("threads", ctypes.c_int)]


class _OpenOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("variant", ctypes.c_char_p), ("flags", ctypes.c_uint32)]


class _Policy(ctypes.Structure):
    _fields_ = [
        ("theta", ctypes.c_float),
        ("min_layer", ctypes.c_int32),
        ("patience", ctypes.c_int32),
        ("exits", ctypes.c_int32),
    ]


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
    ]


class _ModelInfo(ctypes.Structure):
    _fields_ = [
        ("num_layers", ctypes.c_int32),
        ("hidden_size", ctypes.c_int32),
        ("max_seq_length", ctypes.c_int32),
        ("vocab_size", ctypes.c_int32),
        ("pad_id", ctypes.c_int32),
        ("normalize", ctypes.c_int32),
        ("num_segments", ctypes.c_int32),
        ("segment_layers", ctypes.POINTER(ctypes.c_int32)),
        ("default_policy", _Policy),
        ("variant", ctypes.c_char_p),
        ("architecture", ctypes.c_char_p),
    ]


_STATS = np.dtype([("layer", "<i8"), ("score_sum", "<f8"), ("rows", "<i8"), ("exited", "<i8")])


def extension_path() -> Path | None:
    """The compiled ``trt_runtime/libleap_runtime.so`` (None: not built)."""
    path = Path(__file__).resolve().parent / LIBRARY_NAME
    return path if path.is_file() else None


def header_dir() -> Path:
    """The folder holding the public header ``leap_runtime.h``."""
    return Path(__file__).resolve().parent / "_native" / "include"


def onnxruntime_library() -> Path | None:
    """ONNX Runtime's C library inside the installed onnxruntime wheel (found without importing the wheel)."""
    import glob

    spec = importlib.util.find_spec("onnxruntime")
    for root in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(glob.glob(os.path.join(root, "capi", "libonnxruntime.so*")))
        if found:
            return Path(found[0])
    return None


def _load() -> ctypes.CDLL:
    path = extension_path()
    if path is None:
        raise OSError(
            f"the C library trt_runtime/{LIBRARY_NAME} is not built (reinstall with a C compiler present: "
            "pip install -e . or pip install leap-export)"
        )
    lib = ctypes.CDLL(str(path))
    vp, i, u32, sz, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t, ctypes.c_char_p
    out = ctypes.POINTER(ctypes.c_void_p)
    for name, restype, argtypes in (
        ("leap_version", i, []),
        ("leap_version_string", cp, []),
        ("leap_last_error", cp, []),
        ("leap_runtime_create", i, [ctypes.POINTER(_RuntimeOptions), out]),
        ("leap_runtime_ort_version", cp, [vp]),
        ("leap_runtime_threads", i, [vp]),
        ("leap_runtime_destroy", None, [vp]),
        ("leap_model_open", i, [vp, cp, ctypes.POINTER(_OpenOptions), out]),
        ("leap_model_open_graph", i, [vp, cp, ctypes.POINTER(cp), sz, sz, ctypes.c_int32, out]),
        ("leap_model_info_get", i, [vp, ctypes.POINTER(_ModelInfo)]),
        ("leap_model_close", None, [vp]),
        # pointers as plain integers (numpy's ctypes.data): no per-call conversion objects
        (
            "leap_run",
            i,
            [
                vp,
                ctypes.POINTER(_Tensor),
                ctypes.POINTER(_Tensor),
                ctypes.POINTER(_Policy),
                u32,
                vp,
                sz,
                vp,
                sz,
            ],
        ),  # fmt: skip
        ("leap_stats", i, [vp, vp, sz, i]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _raise(status: int, what: str = "") -> None:
    message = _lib.leap_last_error().decode(errors="replace")
    if what:
        message = f"{what}: {message}"
    if status in (LEAP_ERR_INPUT, LEAP_ERR_POLICY, LEAP_ERR_ARGUMENT):
        raise RuntimeInputError(message)
    if status == LEAP_ERR_ARTIFACT:
        raise ArtifactError(message)
    raise NativeError(message, status)


def status(threads: int) -> str | None:
    """None when the C host loop can run in this process (loading it and creating its runtime the first
    time: ``threads`` sizes ONNX Runtime's pool); otherwise why not."""
    global _lib, _runtime, _error, _threads
    with _lock:
        if _runtime is not None:
            if threads != _threads and threads not in _warned:
                _warned.add(threads)
                log.warning(
                    "%d threads requested, but the C host loop's ONNX Runtime pool already has %d (sized "
                    "by the first encoder of this process): using it",
                    threads,
                    _threads,
                )
            return None
        if _error is not None:
            return _error
        try:
            lib = _load()
            ort = onnxruntime_library()
            if ort is None:
                raise OSError(
                    "the installed onnxruntime wheel has no C library (onnxruntime/capi/libonnxruntime.so)"
                )
            options = _RuntimeOptions(ctypes.sizeof(_RuntimeOptions), os.fsencode(ort), int(threads))
            runtime = ctypes.c_void_p()
            if lib.leap_runtime_create(ctypes.byref(options), ctypes.byref(runtime)) != LEAP_OK:
                raise OSError(lib.leap_last_error().decode(errors="replace"))
        except OSError as e:
            _error = str(e)
            return _error
        _lib, _runtime, _threads = lib, runtime, int(threads)
        log.debug(
            "C host loop: leap_runtime %s, ONNX Runtime %s from %s, %d threads",
            lib.leap_version_string().decode(),
            lib.leap_runtime_ort_version(runtime).decode(),
            ort,
            threads,
        )
        return None


def _policy_struct(policy: tuple) -> _Policy:
    theta, min_layer, patience, enabled = policy
    return _Policy(theta, min_layer, patience, 1 if enabled else 0)


class NativeModel:
    """A build opened by the C library (``leap_model_open``): the encoder's fast path.

    ``variant``: the manifest's variant to run (None: its default). ``check_files``: have the library compare
    each file's sha256 with the manifest (the encoder has already done it, so it passes False).
    A build the library cannot run (a TensorRT variant, graphs taking inputs it does not know) raises
    :class:`NativeError` with ``status == LEAP_ERR_UNSUPPORTED``.
    """

    def __init__(
        self, root: str | os.PathLike, variant: str | None = None, *, check_files: bool = True
    ) -> None:
        self._model: ctypes.c_void_p | None = None
        self._init_model(
            lambda out: _lib.leap_model_open(
                _runtime,
                os.fsencode(root),
                ctypes.byref(
                    _OpenOptions(
                        ctypes.sizeof(_OpenOptions),
                        None if variant is None else variant.encode(),
                        0 if check_files else LEAP_OPEN_NO_HASH_CHECK,
                    )
                ),
                out,
            )
        )

    def _init_model(self, open_fn) -> None:
        if _lib is None or _runtime is None:
            raise RuntimeInputError(
                "the C host loop is not loaded in this process (trt_runtime.native.status)"
            )
        model = ctypes.c_void_p()
        rc = open_fn(ctypes.byref(model))
        if rc != LEAP_OK:
            _raise(rc)
        self._model = model
        info = _ModelInfo()
        _lib.leap_model_info_get(model, ctypes.byref(info))
        self.hidden_size = int(info.hidden_size)
        self.n_seg = int(info.num_segments)
        self.layers = [int(info.segment_layers[k]) for k in range(self.n_seg)]
        self.vocab_size = int(info.vocab_size)
        self.max_seq_length = int(info.max_seq_length)
        self._policies: dict[tuple, _Policy] = {}

    def run(
        self, input_ids: np.ndarray, mask: np.ndarray, policy: tuple | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One padded batch: (pooled vectors at each row's exit ``[B, H]``, exit layers ``[B]``).

        ``policy``: ``(theta, min_layer, patience, exits)`` (the third element of the encoder's rule), or None
        for the manifest's default; the library checks it against the build as the encoder does."""
        model = self._model
        if model is None:
            raise RuntimeInputError("this model is closed")
        input_ids = np.ascontiguousarray(input_ids)
        mask = np.ascontiguousarray(mask, dtype=input_ids.dtype)
        kind = _ID_TYPES.get(input_ids.dtype)
        if kind is None or input_ids.ndim != 2 or mask.shape != input_ids.shape:
            raise RuntimeInputError(
                f"input ids and mask must be int32 or int64 [batch, sequence] arrays of one "
                f"shape, got {input_ids.dtype} {input_ids.shape} and {mask.shape}"
            )
        batch, width = input_ids.shape
        out = np.empty((batch, self.hidden_size), dtype=np.float32)
        layers = np.empty(batch, dtype=np.int64)
        c_policy = None
        if policy is not None:
            c_policy = self._policies.get(policy)
            if c_policy is None:  # one struct per rule, made once (a rule is swapped, not edited)
                c_policy = _policy_struct(policy)
                if len(self._policies) < 64:
                    self._policies[policy] = c_policy
            c_policy = ctypes.byref(c_policy)
        rc = _lib.leap_run(
            model,
            ctypes.byref(_Tensor(input_ids.ctypes.data, kind, batch, width)),
            ctypes.byref(_Tensor(mask.ctypes.data, kind, batch, width)),
            c_policy,
            0,
            out.ctypes.data,
            out.size,
            layers.ctypes.data,
            batch,
        )
        if rc != LEAP_OK:
            _raise(rc, "ONNX Runtime (C host loop)" if rc == LEAP_ERR_ONNXRUNTIME else "")
        return out, layers

    def totals(self, reset: bool = False) -> np.ndarray:
        """The statistics of every batch run so far, ``[n_seg, 3]``: per segment the sum of the scores it
        computed, the rows it ran, the rows that left after it (kept in C, so that the loop does no
        Python per batch for them). ``reset``: start again from zero."""
        totals = np.zeros((self.n_seg, 3), dtype=np.float64)
        if self._model is not None:
            stats = np.zeros(self.n_seg, dtype=_STATS)
            _lib.leap_stats(self._model, stats.ctypes.data, self.n_seg, int(reset))
            totals[:, 0] = stats["score_sum"]
            totals[:, 1] = stats["rows"]
            totals[:, 2] = stats["exited"]
        return totals

    def close(self) -> None:
        if _lib is not None and self._model is not None:
            _lib.leap_model_close(self._model)
        self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _GraphModel(NativeModel):
    """One ONNX graph (``leap_model_open_graph``): every row leaves at its end."""

    def __init__(
        self, path: str | os.PathLike, outputs: Sequence[str], pooled: int, hidden_size: int
    ) -> None:
        self._model = None
        names = (ctypes.c_char_p * len(outputs))(*[o.encode() for o in outputs])
        self._init_model(
            lambda out: _lib.leap_model_open_graph(
                _runtime, os.fsencode(path), names, len(outputs), pooled, int(hidden_size), out
            )
        )


class NativeRunner:
    """A monolithic graph (``input_ids``, ``attention_mask`` -> every output in ``outputs``) run by the C
    library, so that it is timed in the same ONNX Runtime, pool and arena as a :class:`NativeModel` (the
    runner interface of ``trt_runtime.runners``; ``infer`` returns ``{"pooled": <output pooled>}``)."""

    def __init__(
        self,
        path: str | os.PathLike,
        outputs: list[dict],
        hidden_size: int,
        *,
        pooled: str = "pooled",
        inputs: Sequence[str] = ("input_ids", "attention_mask"),
    ) -> None:
        self.path = Path(path)
        self.input_names = list(inputs)
        self.output_names = ["pooled"]
        names = [o["name"] for o in outputs]
        if pooled not in names:
            raise RuntimeInputError(f"{path}: no output named {pooled!r} among {names}")
        self._graph = _GraphModel(path, names, names.index(pooled), hidden_size)

    def activate(self) -> None:
        pass

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pooled, _ = self._graph.run(feeds["input_ids"], feeds["attention_mask"], None)
        return {"pooled": pooled}

    def deactivate(self) -> None:
        self._graph.close()
