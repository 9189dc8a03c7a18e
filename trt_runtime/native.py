"""The host loop in C: ``trt_runtime/_native/chain.c``, loaded with ctypes.

One call runs a padded batch through every segment: the exit test, the statistics, compaction with the
padding trim and the scatter back happen in C, between ONNX Runtime runs, with no Python in between.
That removes the Python binding's per-run work from each hand-off, the largest part of the batch-1
monitoring overhead that the host adds (docs/runtime.md).

The C library calls ONNX Runtime's C API in the ``libonnxruntime.so`` that the onnxruntime wheel ships
beside its Python module. That is a second copy of ONNX Runtime in the process, with its own environment,
thread pool and arena: sessions made here never meet the Python binding's, so every graph a comparison
times (the monolithic baseline of ``bench`` included: :class:`NativeRunner`) must run here too, never
half here and half there. The settings are those of :func:`trt_runtime.runners.ort_session_options`:
one process-wide pool of ``threads`` threads with spinning, one shared CPU arena, ``ORT_ENABLE_ALL``.

Unavailable (the extension was not built: no C compiler at install; a wheel without the C library;
ONNX Runtime older than 1.22): :func:`status` says why, and the encoder keeps its Python loop.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trt_runtime.errors import RuntimeInputError

log = logging.getLogger(__name__)

_SRC_IDS, _SRC_MASK = -1, -2
_ID_TYPES = {np.dtype(np.int32): 6, np.dtype(np.int64): 7}
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None  # why the C loop cannot run here (None: not tried yet, or it runs)
_threads: int | None = None  # the size of the C library's pool, once created
_warned: set[int] = set()


class NativeError(RuntimeError):
    """ONNX Runtime failed inside the C host loop (its message follows)."""


def extension_path() -> Path | None:
    """The compiled ``trt_runtime/_chain*.so`` (None: not built)."""
    here = Path(__file__).resolve().parent
    found = sorted(glob.glob(str(here / "_chain*.so")))
    return Path(found[0]) if found else None


def onnxruntime_library() -> Path | None:
    """ONNX Runtime's C library inside the installed onnxruntime wheel (found without importing the wheel)."""
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
            "the C extension trt_runtime/_chain*.so is not built (reinstall with a C compiler present: "
            "pip install -e . or pip install leap-export)"
        )
    lib = ctypes.CDLL(str(path))
    vp, i, i64, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_char_p
    lib.lx_version.restype = cp
    lib.lx_last_error.restype = cp
    lib.lx_init.argtypes = [cp, i]
    lib.lx_init.restype = i
    lib.lx_session_open.argtypes = [cp]
    lib.lx_session_open.restype = vp
    lib.lx_session_close.argtypes = [vp]
    lib.lx_session_close.restype = None
    lib.lx_chain_new.argtypes = [i]
    lib.lx_chain_new.restype = vp
    lib.lx_chain_free.argtypes = [vp]
    lib.lx_chain_free.restype = None
    ints = ctypes.POINTER(ctypes.c_int)
    names = ctypes.POINTER(ctypes.c_char_p)
    lib.lx_chain_segment.argtypes = [vp, i, vp, i, i, names, ints, ints, i, names, ints, i, i]
    lib.lx_chain_segment.restype = i
    lib.lx_chain_run.argtypes = [vp, vp, vp, i, i64, i64, ctypes.c_float, cp, vp, i64, vp]
    lib.lx_chain_run.restype = i
    lib.lx_chain_stats.argtypes = [vp, vp, i]
    lib.lx_chain_stats.restype = None
    return lib


def _last_error() -> str:
    return _lib.lx_last_error().decode(errors="replace")


def status(threads: int) -> str | None:
    """None when the C host loop can run in this process (loading it and creating its pool the first
    time: ``threads`` sizes that pool); otherwise why not."""
    global _lib, _error, _threads
    with _lock:
        if _lib is not None:
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
            if lib.lx_init(os.fsencode(ort), int(threads)) != 0:
                raise OSError(lib.lx_last_error().decode(errors="replace"))
        except OSError as e:
            _error = str(e)
            return _error
        _lib, _threads = lib, int(threads)
        log.debug("C host loop: ONNX Runtime %s from %s, %d threads", lib.lx_version().decode(), ort, threads)
        return None


def _c_strings(items: Sequence[str]):
    return (ctypes.c_char_p * len(items))(*[s.encode() for s in items])


def _c_ints(items: Sequence[int]):
    return (ctypes.c_int * len(items))(*items)


def _seq_axis(shape: list) -> int:
    return shape.index("sequence") if "sequence" in shape else -1


class NativeChain:
    """Graphs run one after the other in C, as the encoder's segments are (``run``).

    ``segments``: one dict per graph, in order: ``path``, ``end`` (its exit layer), ``inputs`` (name ->
    ``"ids"``, ``"mask"`` or ``(segment index, output name)``), ``outputs`` (the manifest's output
    entries: name and shape; every one is computed), ``pooled`` (the output holding the pooled vector,
    default ``"pooled"``) and ``score`` (the output holding the convergence score; None only for the
    last graph, which every row leaves).
    """

    def __init__(self, segments: list[dict], hidden_size: int) -> None:
        if _lib is None:
            raise RuntimeInputError(
                "the C host loop is not loaded in this process (trt_runtime.native.status)"
            )
        self.hidden_size = int(hidden_size)
        self.n_seg = len(segments)
        self._sessions: list[int] = []
        self._chain = None
        try:
            chain = _lib.lx_chain_new(self.n_seg)
            if not chain:
                raise RuntimeInputError(f"the C host loop takes 1 to 64 segments, not {self.n_seg}")
            self._chain = chain
            out_names: list[list[str]] = []
            for k, seg in enumerate(segments):
                session = _lib.lx_session_open(os.fsencode(seg["path"]))
                if not session:
                    raise NativeError(_last_error())
                self._sessions.append(session)
                names = [o["name"] for o in seg["outputs"]]
                out_names.append(names)
                src_seg, src_out = [], []
                for source in seg["inputs"].values():
                    if source in ("ids", "mask"):
                        src_seg.append(_SRC_IDS if source == "ids" else _SRC_MASK)
                        src_out.append(0)
                    else:
                        src_seg.append(source[0])
                        src_out.append(out_names[source[0]].index(source[1]))
                score = -1 if seg.get("score") is None else names.index(seg["score"])
                if (
                    _lib.lx_chain_segment(
                        chain,
                        k,
                        session,
                        int(seg["end"]),
                        len(seg["inputs"]),
                        _c_strings(list(seg["inputs"])),
                        _c_ints(src_seg),
                        _c_ints(src_out),
                        len(names),
                        _c_strings(names),
                        _c_ints([_seq_axis(list(o.get("shape", []))) for o in seg["outputs"]]),
                        names.index(seg.get("pooled", "pooled")),
                        score,
                    )
                    != 0
                ):
                    raise NativeError(_last_error())
        except BaseException:
            self.close()
            raise

    def run(
        self, input_ids: np.ndarray, mask: np.ndarray, theta: float, can_exit: bytes
    ) -> tuple[np.ndarray, np.ndarray]:
        """One padded batch: (pooled vectors at each row's exit [B, H], exit layers [B]). ``can_exit[k]``:
        may a row leave after segment k (every row still running leaves after the last)."""
        if self._chain is None:
            raise RuntimeInputError("this chain is closed")
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
        if (
            _lib.lx_chain_run(
                self._chain,
                input_ids.ctypes.data,
                mask.ctypes.data,
                kind,
                batch,
                width,
                theta,
                can_exit,
                out.ctypes.data,
                self.hidden_size,
                layers.ctypes.data,
            )
            != 0
        ):
            raise NativeError(f"ONNX Runtime (C host loop): {_last_error()}")
        return out, layers

    def totals(self, reset: bool = False) -> np.ndarray:
        """The statistics of every batch run so far, ``[n_seg, 3]``: per segment the sum of the scores it
        computed, the rows it ran, the rows that left after it (kept in C, so that the loop does no
        Python per batch for them). ``reset``: start again from zero."""
        totals = np.zeros((self.n_seg, 3), dtype=np.float64)
        if self._chain is not None:
            _lib.lx_chain_stats(self._chain, totals.ctypes.data, int(reset))
        return totals

    def close(self) -> None:
        if _lib is None:
            return
        if self._chain:
            _lib.lx_chain_free(self._chain)
            self._chain = None
        for s in self._sessions:
            _lib.lx_session_close(s)
        self._sessions = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class NativeRunner:
    """A monolithic graph (``input_ids``, ``attention_mask`` -> every output in ``outputs``) run by the C
    library, so that it is timed in the same ONNX Runtime, pool and arena as a :class:`NativeChain` (the
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
        sources = {name: ("ids" if name == "input_ids" else "mask") for name in self.input_names}
        self._chain = NativeChain(
            [
                {
                    "path": str(path),
                    "end": 0,
                    "inputs": sources,
                    "outputs": outputs,
                    "pooled": pooled,
                    "score": None,
                }
            ],
            hidden_size,
        )

    def activate(self) -> None:
        pass

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pooled, _ = self._chain.run(feeds["input_ids"], feeds["attention_mask"], 1.0, b"\0")
        return {"pooled": pooled}

    def deactivate(self) -> None:
        self._chain.close()
