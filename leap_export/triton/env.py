"""The Python environment that Triton's Python backend runs ``leap_encoder`` in, made once and reused.

Facts this is built on (tritonserver 2.51 as ``nvidia-pytriton`` 0.7.0 ships it, Python backend r24.10):

- the server binary, its libraries and the Python backend come in the ``nvidia-pytriton`` wheel; the
  backend's stub program (one per Python version, 3.8 to 3.13) must be copied next to the backend's library;
- the stub embeds the Python whose ``libpython3.X.so`` it finds on ``LD_LIBRARY_PATH`` and ignores
  ``PYTHONPATH``; it finds its ``sys.prefix`` (so its site-packages) from the first ``python3`` on ``PATH``,
  so putting this environment's ``bin/`` first on ``PATH`` makes the stub run in it (pytriton does the same);
- numpy 2 crashes the stub on BYTES (string) inputs: the environment holds numpy < 2 (the project's own
  environment may hold numpy 2, hence a separate one).

:func:`ensure_env` creates a virtual environment with the running interpreter (it needs a shared
``libpython``) and installs the server and the runtime's dependencies from PyPI, once: a marker file records
what was installed, so a later call returns at once. Concurrent callers wait for one another (a file lock).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from leap_export.errors import LeapError

REQUIREMENTS = ("nvidia-pytriton==0.7.0", "numpy>=1.24,<2", "tokenizers>=0.15", "onnxruntime>=1.17")
MARKER = "leap-triton-env.json"
ENV_VARIABLE = "LEAP_TRITON_ENV"


def default_env_path() -> Path:
    """``$LEAP_TRITON_ENV``, else ``~/.cache/leap-export/triton-env-py3.X`` (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get(ENV_VARIABLE):
        return Path(os.environ[ENV_VARIABLE]).expanduser().absolute()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "leap-export" / f"triton-env-py{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class TritonEnv:
    """A ready environment: where the server binary, its libraries and the composed backend folder are."""

    root: Path
    python_libdir: Path  # the folder holding the libpython3.X.so the stub embeds
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def pytriton(self) -> Path:
        return self.site_packages / "pytriton"

    @property
    def server(self) -> Path:
        return self.pytriton / "tritonserver" / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        """The Python backend with this Python's stub beside it (composed by :func:`ensure_env`)."""
        return self.root / "triton-backends"

    def environ(self, base: dict | None = None) -> dict:
        """The server's environment: its libraries and this Python's ``libpython`` found, this env's ``bin/``
        first on ``PATH`` (so the stub's Python is this environment)."""
        env = dict(os.environ if base is None else base)
        libs = [str(self.site_packages / "nvidia_pytriton.libs"), str(self.python_libdir)]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), env.get("PATH", "")])
        env.pop("PYTHONHOME", None)
        env.pop("VIRTUAL_ENV", None)
        return env


def python_problem() -> str | None:
    """Why the running Python cannot host the stub (None if it can)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (3, 8) <= sys.version_info[:2] <= (3, 13):
        return f"Python {version}: the bundled Triton Python backend has stubs for Python 3.8 to 3.13 only"
    if not _libpython():
        return (
            f"this Python {version} ({sys.executable}) has no shared libpython{version}.so, which Triton's "
            "Python backend loads; use a Python built with --enable-shared (Debian's, pyenv with "
            'PYTHON_CONFIGURE_OPTS="--enable-shared")'
        )
    return None


def _libpython() -> Path | None:
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
    if libdir and (name.endswith(".so") or ".so." in name):
        path = Path(libdir) / name
        if path.exists():
            return path
    return None


def ensure_env(path: str | os.PathLike | None = None, *, quiet: bool = False) -> TritonEnv:
    """The environment at ``path`` (default: :func:`default_env_path`), created and installed if it is not
    there yet. Installing needs PyPI (about 300 MB, a minute or two); errors are one line naming the fix."""
    import fcntl

    root = Path(path).expanduser().absolute() if path else default_env_path()
    problem = python_problem()
    if problem:
        raise LeapError(f"cannot make the Triton server's environment: {problem}")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = _ready(root)
        if ready is not None:
            return ready
        return _create(root, quiet)


def _ready(root: Path) -> TritonEnv | None:
    try:
        record = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if record.get("requirements") != list(REQUIREMENTS):
        return None
    env = TritonEnv(root, Path(record["python_libdir"]), Path(record["site_packages"]))
    stub = env.backends / "python" / "triton_python_backend_stub"
    return env if env.server.is_file() and stub.is_file() and env.python.exists() else None


def _create(root: Path, quiet: bool) -> TritonEnv:
    out = subprocess.DEVNULL if quiet else sys.stderr

    def run(args: list[str], what: str) -> None:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise LeapError(f"{what} failed (exit {proc.returncode}): {tail or 'no message'}")

    if not quiet:
        print(f"creating the Triton server's Python environment in {root} (once)...", file=sys.stderr)
    (root / MARKER).unlink(missing_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    run([base, "-m", "venv", "--clear", str(root)], f"python -m venv {root}")
    python = str(root / "bin" / "python")
    run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *REQUIREMENTS],
        "pip install " + " ".join(REQUIREMENTS),
    )
    probe = subprocess.run(
        [python, "-c", "import sysconfig, json; print(json.dumps([sysconfig.get_config_var('LIBDIR'), "
         "sysconfig.get_paths()['purelib'], '%d.%d' % __import__('sys').version_info[:2]]))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    libdir, site_packages, version = json.loads(probe.stdout)
    env = TritonEnv(root, Path(libdir), Path(site_packages))
    backend = env.backends / "python"
    backend.mkdir(parents=True, exist_ok=True)
    shipped = env.pytriton / "tritonserver"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        link = backend / name
        link.unlink(missing_ok=True)
        link.symlink_to(shipped / "backends" / "python" / name)
    stub = shipped / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise LeapError(f"nvidia-pytriton ships no Python backend stub for Python {version} ({stub})")
    import shutil

    shutil.copy2(stub, backend / stub.name)
    record = {"requirements": list(REQUIREMENTS), "python_libdir": libdir, "site_packages": site_packages}
    (root / MARKER).write_text(json.dumps(record, indent=2))
    return env
