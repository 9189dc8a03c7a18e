"""Timing a call on the GPU's clock with CUDA events (CuPy), for ``leap-export bench`` on a GPU backend.

``EventTimer(stream)(fn, x)`` records an event on ``stream``, calls ``fn(x)``, records a second event, waits
for it and returns the time between the two in seconds (``cudaEventElapsedTime``: about 0.5 µs
resolution). Every call the bench times ends synchronised with the host (the runtime returns host arrays),
so the second event is recorded after all the call's GPU work, whichever stream it ran on, and the first
when the GPU is idle: the two events span the whole call, copies to and from the device and the host's
work between segments included.

Never run: no GPU has been lent to this project. CuPy is imported only when a timer is made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def cupy_missing() -> str | None:
    """Why CUDA events cannot be used here (CuPy not installed), or None."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    return None


class EventTimer:
    """``timer(fn, x)``: seconds between two CUDA events recorded on ``stream`` around ``fn(x)``.

    ``stream``: a ``cupy.cuda.Stream``, or None for CUDA's legacy default stream.
    """

    name = "cuda-events"

    def __init__(self, stream: Any = None) -> None:
        import cupy

        self._cupy = cupy
        self._stream = stream if stream is not None else cupy.cuda.Stream.null
        self._start = cupy.cuda.Event()
        self._stop = cupy.cuda.Event()

    def __call__(self, fn: Callable[[Any], Any], x: Any) -> float:
        self._start.record(self._stream)
        fn(x)
        self._stop.record(self._stream)
        self._stop.synchronize()
        return self._cupy.cuda.get_elapsed_time(self._start, self._stop) / 1e3
