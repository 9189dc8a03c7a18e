"""``leap-export serve``: a model repository in a temporary folder, tritonserver on it, until Ctrl-C or SIGTERM.

The repository, the server's log and the server itself last as long as the command: Ctrl-C (KeyboardInterrupt)
and SIGTERM (turned into SystemExit by the CLI) both run the ``finally`` that stops the server's whole
process group and removes the folder.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from leap_export.errors import LeapError
from leap_export.triton.env import ensure_env
from leap_export.triton.repository import MODEL_NAME, ServeOptions, write_repository
from leap_export.triton.server import TritonServer


def curl_example(http_url: str) -> str:
    body = json.dumps(
        {
            "inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": ["Hello world", "Hi"]}],
            "parameters": {"theta": 0.9},
        }
    )
    return f"curl -s {http_url}/v2/models/{MODEL_NAME}/infer -d '{body}'"


def serve(
    artifacts,
    options: ServeOptions,
    *,
    host: str = "127.0.0.1",
    ports: dict | None = None,
    env_path=None,
    echo: Callable[..., object] = print,
) -> int:
    """Serve ``artifacts`` until interrupted; returns the server's exit status if it stops by itself (an error)."""
    if options.layout == "bls":
        raise LeapError(
            "the tritonserver that serve runs has the Python backend only: --layout bls needs Triton's onnxruntime "
            "or TensorRT backend; use --layout bls-python here, or write the repository with `leap-export triton "
            "ART --out REPO --layout bls` for a full Triton server"
        )
    env = ensure_env(env_path)
    with tempfile.TemporaryDirectory(prefix="leap-serve-") as tmp:
        repo = write_repository(artifacts, Path(tmp) / "repository", options)
        ports = ports or {}
        server = TritonServer(
            repo,
            env,
            host=host,
            http_port=ports.get("http", 8000),
            grpc_port=ports.get("grpc", 8001),
            metrics_port=ports.get("metrics", 8002),
            log_path=Path(tmp) / "tritonserver.log",
        )
        try:
            server.start()
            where = (
                "on every interface (--host 0.0.0.0)"
                if host in ("0.0.0.0", "")
                else f"on {host} only (--host 0.0.0.0 to accept other machines, e.g. in a container)"
            )
            echo(f"{MODEL_NAME} ready: tritonserver pid {server.process.pid}, listening {where}")
            echo(f"  HTTP     {server.http_url}")
            echo(f"  gRPC     {server.grpc_url}")
            echo(f"  metrics  {server.metrics_url}")
            echo(f"  try:     {curl_example(server.http_url)}")
            echo("Ctrl-C stops it.")
            status = server.process.wait()
            raise LeapError(f"tritonserver stopped by itself (exit {status}): {server.log_tail()}")
        finally:
            server.stop()
