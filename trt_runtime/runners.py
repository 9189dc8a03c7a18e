"""ONNX Runtime sessions on the CPU: their settings and :class:`OrtRunner` (activate / infer / deactivate,
the runner interface of :mod:`trt_runtime.backends.base`, after Polygraphy's runners).

ONNX Runtime on few cores: every ``InferenceSession`` owns an intra-op thread pool whose workers spin
after each run. With one session per segment, the idle pools spin against the busy one and a
segment pipeline runs several times slower than one graph (docs/runtime.md has the figures). All
segment sessions here therefore share ONE process-wide thread pool
(``set_global_thread_pool_sizes`` + ``use_per_session_threads = False``): spinning stays on, and only
one pool exists. That pool is sized once per process, and ONNX Runtime then allows no session a pool of
its own: a later request for another size, or for ``shared_pool=False``, joins the pool and says so.
Where ONNX Runtime was set up before the first encoder (the pool cannot be created), every session gets
a per-session pool with spinning disabled, the next best setting.

Memory goes the same way: every session allocates its per-run activation block from ONE process-wide
CPU arena (``create_and_register_allocator`` + ``session.use_env_allocators``) instead of an arena of its
own. A segment then reuses the block the previous segment just released, still in cache, as the layers of
one monolithic graph do; with an arena per session each segment touches a block of its own, colder in
cache. The arena is shared with ``shared_pool=False`` as well: it is not a thread setting, and with an
arena per session each arena keeps its own peak, so peak memory multiplies.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path

import numpy as np

from trt_runtime.errors import RuntimeInputError

log = logging.getLogger(__name__)

_global_pool_threads: int | None = None  # threads of the process-wide ORT pool, once created
_global_pool_failed = False
_pool_warned: set[str] = set()  # settings already warned about (see ort_session_options)
_shared_arena: bool | None = None  # whether the process-wide CPU arena is registered


def check_threads(threads) -> int | None:
    """``threads`` as an int, or None (the CPUs this process may use); anything else is refused."""
    if threads is not None and (
        isinstance(threads, bool | np.bool_) or not isinstance(threads, numbers.Integral) or threads < 1
    ):
        raise RuntimeInputError(
            f"threads must be an integer >= 1 (or None: the CPUs this process may use), got {threads!r}"
        )
    return None if threads is None else int(threads)  # numpy integers welcome, as everywhere else


def default_threads() -> int:
    """The CPUs this process may use: its CPU affinity, capped by a container's CPU quota.

    A quota (Kubernetes ``limits.cpu``, ``docker --cpus``, systemd ``CPUQuota``) leaves the affinity at
    every core of the node; a spinning pool that size on a quota of 2 cores runs several times slower
    (its threads spin against each other for the cores the quota grants).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def cgroup_cpu_quota() -> float | None:
    """CPUs the process's cgroup may use per period (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None: no quota.

    The smallest quota on the way from the process's cgroup up to the root counts, as the kernel applies
    each. Inside a container the root of ``/sys/fs/cgroup`` is the container's own cgroup.
    """
    try:
        lines = _PROC_CGROUP.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2 (unified)
            quotas += [_v2_quota(d / "cpu.max") for d in _ancestors(_CGROUP_ROOT, path)]
            quotas += [_v2_quota(d / "cpu.max") for d in _ancestors(_CGROUP_ROOT / "unified", path)]
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                quotas += [_v1_quota(d) for d in _ancestors(_CGROUP_ROOT / mount, path)]
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    """``mount/path`` and each folder above it up to ``mount`` (the root alone where the path is not mounted)."""
    parts = [p for p in path.strip().split("/") if p and p != ".."]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_quota(file: Path) -> float | None:
    try:
        quota, period = (file.read_text().split() + ["100000"])[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def ort_session_options(threads: int | None = None, *, shared_pool: bool = True):
    """Session options used for every graph (segments and the monolithic one alike)."""
    import onnxruntime as ort

    global _global_pool_threads, _global_pool_failed
    threads = threads or default_threads()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if shared_pool and _global_pool_threads is None and not _global_pool_failed:
        try:
            ort.set_global_thread_pool_sizes(threads, 1)  # public since ONNX Runtime 1.22
            _global_pool_threads = threads
        except Exception as e:  # the ORT environment already exists in this process, or an older ORT
            _global_pool_failed = True
            log.warning("could not create a shared ONNX Runtime thread pool (%s); using per-session pools", e)
    # the arena is shared with private pools too (shared_pool=False): an allocator registered with the
    # environment serves only the sessions that opt in, so other libraries' sessions are unaffected; an
    # arena per segment session would keep one peak per segment
    if _register_shared_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    if _global_pool_threads is not None:
        # Once the process-wide pool exists, ONNX Runtime refuses sessions with pools of their own
        # ("use_per_session_threads must be false when using a global thread pool"): join it.
        request = "shared_pool=False requested" if not shared_pool else f"{threads} threads requested"
        if (not shared_pool or threads != _global_pool_threads) and request not in _pool_warned:
            _pool_warned.add(request)  # once per setting, not once per segment session
            log.warning(
                "%s, but this process already has ONNX Runtime's shared thread pool (%d threads, sized by the "
                "first encoder), and ONNX Runtime allows no other pool after it: using the shared pool. Create "
                "every encoder with the same settings, the first with shared_pool=False for private pools",
                request,
                _global_pool_threads,
            )
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def global_pool_exists() -> bool:
    """Whether this process's Python binding has ONNX Runtime's global thread pool: every session made
    afterwards must join it (``use_per_session_threads = False``), whatever its provider."""
    return _global_pool_threads is not None


def _register_shared_arena() -> bool:
    """Register one CPU arena allocator for the whole process (once); False if ORT refuses."""
    global _shared_arena
    if _shared_arena is None:
        import onnxruntime as ort

        try:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, None)
            _shared_arena = True
        except Exception as e:  # e.g. registered already by the host application: use per-session arenas
            log.warning(
                "could not register a shared ONNX Runtime CPU arena (%s); using per-session arenas", e
            )
            _shared_arena = False
    return _shared_arena


def check_providers(providers: list[str] | None) -> None:
    """Every requested ONNX Runtime execution provider exists in the installed onnxruntime; else an error
    naming what is missing (ONNX Runtime itself would warn and run on the CPU)."""
    if not providers:
        return
    import onnxruntime as ort

    if isinstance(providers, str) or not all(isinstance(p, str) for p in providers):
        raise RuntimeInputError(f"providers must be a list of provider names, got {providers!r}")
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        hint = (
            " (install onnxruntime-gpu for CUDAExecutionProvider)"
            if "CUDAExecutionProvider" in missing
            else ""
        )
        raise RuntimeInputError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not available in this onnxruntime "
            f"{ort.__version__} (it has {', '.join(available)}){hint}; leave providers out to run on the CPU"
        )


class OrtRunner:
    """ONNX Runtime runner for one graph."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        shared_pool: bool = True,
    ) -> None:
        self.threads = check_threads(threads)
        self.path = Path(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.shared_pool = shared_pool
        self.session = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    def activate(self) -> None:
        if self.session is not None:
            return
        import onnxruntime as ort

        check_providers(self.providers)
        so = ort_session_options(self.threads, shared_pool=self.shared_pool)
        session = ort.InferenceSession(str(self.path), sess_options=so, providers=self.providers)
        # ONNX Runtime falls back to the CPU with a log line when a listed provider cannot start (a GPU
        # build on a machine without a GPU): never silently elsewhere than asked
        dropped = [p for p in self.providers if p not in session.get_providers()]
        if dropped:
            raise RuntimeInputError(
                f"ONNX Runtime could not start {', '.join(dropped)} for {self.path.name} (it would run on "
                f"{', '.join(session.get_providers())} instead): is the GPU and its driver there? Leave "
                "providers out to run on the CPU"
            )
        self.session = session
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            self.activate()
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds), strict=True))

    def deactivate(self) -> None:
        self.session = None

    def __enter__(self) -> OrtRunner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()
