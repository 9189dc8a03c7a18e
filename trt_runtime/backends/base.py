"""What a backend is: a loader of a build's graphs, the runners it makes, and the tensor operations compaction
needs where its tensors live (after Polygraphy: ``polygraphy/backend/base``).

The early-exit loop (:class:`trt_runtime.chain.SegmentChain`) composes a backend's runners with the exit
policy and never asks which backend it has: a runner takes a dict of the backend's tensors and returns one,
and :class:`TensorOps` moves tensors to and from the host and gathers the rows that survive an exit (on the
device for a GPU backend). The one host synchronisation per segment is the read of its scores, for the exit
decision.

A backend may also offer a *fast path*: something that runs a whole padded batch at once where the generic
loop would hand off between Python and the runtime at every segment (the ONNX Runtime CPU backend's C host
loop). The encoder uses it whenever a batch is not traced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from trt_runtime.manifest import Manifest, VariantSpec


class Runner(Protocol):
    """One graph (or engine): activate, then ``infer`` any number of times, then deactivate."""

    input_names: list[str]
    output_names: list[str]

    def activate(self) -> None: ...

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]: ...

    def deactivate(self) -> None: ...


class TensorOps(Protocol):
    """The tensor operations of the loop, where a backend keeps its tensors (numpy arrays, device buffers)."""

    def from_host(self, array: np.ndarray) -> Any:
        """A host array as the backend's tensor (a copy to the device on a GPU)."""

    def to_host(self, tensor: Any) -> np.ndarray:
        """The backend's tensor as a host array (a copy from the device, a synchronisation, on a GPU)."""

    def compact(self, tensor: Any, rows: np.ndarray, seq_axis: int | None, width: int) -> Any:
        """``tensor`` restricted to the batch rows ``rows`` (host int64 indices, in order) and, where
        ``seq_axis`` is not None, to the first ``width`` positions of that axis; contiguous."""


class FastPath(Protocol):
    """A whole padded batch at once (the exit test, compaction and statistics inside)."""

    def run(
        self, input_ids: np.ndarray, mask: np.ndarray, policy: tuple[float, int, int, bool] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pooled vector at each row's exit ``[B, H]``, exit layers ``[B]``) under ``policy`` = (theta as
        float32, min_layer, patience, enabled): the third element of the encoder's rule."""

    def totals(self, reset: bool = False) -> np.ndarray:
        """Per segment: score sum, rows run, rows exited (``[n_seg, 3]``), counted since the last reset."""


class Backend:
    """Base of every backend. Subclasses set ``name`` and ``runs`` and implement the methods below.

    ``runs``: the manifest variant ``backend`` values whose files this backend can run ("onnxruntime" for
    ONNX graphs, "tensorrt" for engines).
    """

    name: ClassVar[str]
    runs: ClassVar[tuple[str, ...]]
    ops: TensorOps
    max_batch: int | None = None  # the most rows one run takes (TensorRT: its profile's); None: no limit

    def __init__(
        self, manifest: Manifest, variant: VariantSpec, *, threads: int | None, options: dict
    ) -> None:
        self.manifest = manifest
        self.variant = variant
        self.threads = threads
        self.options = options
        self._runners: list[Runner] | None = None  # made by segment_runners, released by close

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run in this process at all (a library or a device missing); None if it can."""
        raise NotImplementedError

    @classmethod
    def cannot_run(cls, manifest: Manifest, variant: VariantSpec) -> str | None:
        """Why this backend cannot run ``variant`` of ``manifest`` here (beyond :meth:`unavailable`); None if it can."""
        if variant.backend not in cls.runs:
            return (
                f"variant {variant.name!r} is a {variant.backend} build; {cls.name} runs "
                f"{' or '.join(cls.runs)} builds"
            )
        return None

    def segment_runners(self) -> Sequence[Runner]:
        """One activated runner per segment, in order (made once)."""
        raise NotImplementedError

    def monolithic_runner(self) -> Runner:
        """The build's monolithic full-depth graph, in the same runtime and settings as the segments: the
        baseline a comparison with this backend must time. ``infer`` returns ``{"pooled": host array}``."""
        raise NotImplementedError

    def fast_path(self) -> FastPath | None:
        """The backend's whole-batch runner, or None."""
        return None

    def event_timer(self) -> tuple[Callable[[Callable[[Any], Any], Any], float] | None, str]:
        """(a timer of one call on the device's clock, why) or (None, why there is none): ``timer(fn, x)`` runs
        ``fn(x)`` and returns the seconds it took. The CPU backends have none; bench then uses the host's clock."""
        return None, f"{self.name} has no device clock: timed with the host's clock (time.perf_counter)"

    @property
    def loop(self) -> tuple[str, str]:
        """("native" | "python", why): which host loop runs an untraced batch."""
        return "python", f"{self.name} runs the generic loop"

    def close(self) -> None:
        """Release sessions, engines and device memory (also done when the backend is collected). A backend
        that holds more than its segment runners releases that too, then calls this."""
        for runner in self._runners or []:
            runner.deactivate()
        self._runners = None
