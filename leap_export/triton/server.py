"""Run tritonserver on a model repository, and stop it leaving no process behind.

The server starts in a session of its own (its own process group, which the Python backend's stub processes,
one per model instance, belong to as well), so :meth:`TritonServer.stop` reaches every one of them: SIGTERM
to the group (Triton unloads its models and removes its shared memory), then SIGKILL to whatever is left
after ``grace`` seconds. On Linux the server also gets SIGTERM should the process that started it die first,
so not even a killed ``leap-export serve`` leaves a server behind (the kernel ties that signal to the thread
that started the server: start it from a thread that lives as long as the server should).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from leap_export.errors import LeapError
from leap_export.triton.env import TritonEnv


def free_ports(host: str = "127.0.0.1", n: int = 3) -> list[int]:
    """``n`` distinct ports free on ``host`` right now (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class TritonServer:
    """One tritonserver process. ``start()`` returns once the server is ready; ``stop()`` or the ``with`` block's
    end stops it. A port of 0 means a free one, chosen at start."""

    def __init__(
        self,
        repository: str | os.PathLike,
        env: TritonEnv,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_path: str | os.PathLike | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.env = env
        self.host = host
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.log_path = Path(log_path) if log_path else self.repository.parent / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    # -- where it listens ----------------------------------------------------------------------------------

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.ports['metrics']}/metrics"

    # -- life cycle ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> TritonServer:
        if self.process is not None:
            raise LeapError("this server is already started")
        wanted = [k for k, v in self.ports.items() if not v]
        for key, port in zip(wanted, free_ports(self._client_host, len(wanted)), strict=True):
            self.ports[key] = port
        args = [
            str(self.env.server),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.env.backends}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--exit-timeout-secs=10",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env.environ(),
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LeapError(
                    f"tritonserver exited with status {self.process.returncode} while starting: {self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise LeapError(f"tritonserver was not ready within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 6) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        errors = [line for line in text.splitlines() if line[:1] in "EW" or "rror" in line]
        return " | ".join((errors or text.splitlines())[-lines:]) or "(empty log)"

    def stop(self, grace: float = 20.0) -> int | None:
        """Stop the server and every process of its group; returns its exit status (None: never started)."""
        process = self.process
        if process is None:
            return None
        group = process.pid  # start_new_session: the group id is the server's pid
        _signal_group(group, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            process.wait()
        deadline = time.monotonic() + grace
        while group_alive(group) and time.monotonic() < deadline:  # stubs finishing after the server
            time.sleep(0.1)
        _signal_group(group, signal.SIGKILL)
        return process.returncode

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(group: int) -> bool:
    """Whether any process of process group ``group`` is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False
