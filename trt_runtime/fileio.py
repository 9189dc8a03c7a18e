"""Output files: checked before any work, written atomically, with the user's umask.

Every file leap-export writes goes to a temporary file in the target folder first and is renamed over
the target, so a reader never sees half a file and an interrupted run leaves the old file in place.
Output paths are checked up front (``output_problem``), so a long run does not fail at its last step
because the target's folder is missing, a file or not writable, or the target is read-only.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from trt_runtime.errors import OutputPathError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode ``open()`` / ``mkdir`` would: mkstemp, mkdtemp and some writers create it private."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask())


def ordinary_modes(folder: str | os.PathLike) -> None:
    """``ordinary_mode`` for ``folder`` and everything in it (a folder about to be published)."""
    for path in [Path(folder), *Path(folder).rglob("*")]:
        ordinary_mode(path)


def temp_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A temporary folder in ``parent`` (where its contents will be renamed to), with an ordinary mode."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    ordinary_mode(tmp)
    return tmp


def replace_folder(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``out`` (same file system); an existing ``out`` is removed only
    after the move succeeded, and put back if it failed, so a reader sees the old folder or the new one."""
    import shutil

    tmp, out = Path(tmp), Path(out)
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:  # put the old folder back: the caller removes tmp, which would leave neither
            os.replace(old, out)
            raise
        if old.is_symlink():  # out was a link to a folder elsewhere: that folder stays; the link goes
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def output_problem(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as an output file (or, with ``folder``, created as a folder); None if it can.

    Nothing is created. The folder an output goes into must exist (a typo in it must not leave a tree of
    new folders behind), and an existing file is replaced only where ``cp`` would replace it: not a
    read-only one (no write permission for this user, or no write bit at all, which ``cp`` run as root
    would ignore but the file's owner meant).
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder; choose a folder path"
        if not folder and path.is_dir():
            return f"{path} is a folder; pass a file path"
        if not folder and path.is_file() and read_only(path):
            return (
                f"{path} is read-only: refusing to replace it; make it writable (chmod u+w {path}) or choose "
                "another output path"
            )
    parent = path.parent
    if not parent.exists():
        return (
            f"cannot write {path}: folder {parent} does not exist; create it first (mkdir -p {parent}) or fix "
            "the path"
        )
    if not parent.is_dir():
        return f"cannot write {path}: {parent} is a file, not a folder; choose another output path"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write {path}: folder {parent} is not writable; choose another output path"
    return None


def read_only(path: str | os.PathLike) -> bool:
    """No write permission for this user, or no write bit for anyone (``chmod a-w``, which root could ignore)."""
    return not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Same regular file (or the same not-yet-existing path); pipes and devices such as /dev/stdin never match."""

    def kind(path):
        try:
            return stat.S_IFMT(os.stat(path).st_mode)
        except OSError:
            return None

    ka, kb = kind(a), kind(b)
    if ka is not None and kb is not None:
        return ka == kb == stat.S_IFREG and os.path.samefile(a, b)
    if ka is None and kb is None:
        return os.path.realpath(a) == os.path.realpath(b)
    return False


def ensure_parent(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """``path``, once :func:`output_problem` finds nothing wrong with it; else a clear ``OutputPathError``.

    ``folder``: ``path`` is an output folder (it may exist as one), not a file. No folder is created here.
    """
    path = Path(path)
    problem = output_problem(path, folder=folder)
    if problem:
        raise OutputPathError(problem)
    return path


def temp_name(folder: str | os.PathLike, prefix: str, suffix: str) -> Path:
    """A fresh name for a temporary file in ``folder``, not yet created: create it with ``create_new``
    inside the ``try`` that removes it. (``mkstemp`` creates the file before its caller holds the name, so
    a signal landing in between, SIGTERM raised as an exception, left a stray file nothing could remove.)"""
    return Path(folder) / f"{prefix}{os.getpid()}.{secrets.token_hex(6)}{suffix}"


def create_new(path: Path) -> int:
    """Create ``path`` (it must not exist) for writing, with the user's umask; its file descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(f)`` into a temporary file next to ``path``, then rename it to ``path`` (mode 0666 & ~umask, or
    the mode of the file it replaces, as ``cp`` keeps it).

    A symlink is followed (the file it points to is replaced, the link stays). A stream or device
    (``/dev/stdout``, a named pipe) is written directly: renaming over it would replace the device itself.
    """
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        with open(path, "wb") as f:
            write(f)
        return Path(path)
    if os.path.islink(path):
        path = os.path.realpath(path)
    path = ensure_parent(path)
    tmp = temp_name(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(create_new(tmp), "wb") as f:
            write(f)
        if path.is_file():  # replaced as cp replaces a file: it keeps its mode
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_bytes(data: Any, *, allow_nan: bool = True) -> bytes:
    """``data`` as the indented JSON every tool output uses; ``allow_nan=False`` refuses NaN/Infinity."""
    return (json.dumps(data, indent=2, sort_keys=False, allow_nan=allow_nan) + "\n").encode()


def write_json_atomic(path: str | os.PathLike, data: Any, *, allow_nan: bool = True) -> Path:
    """``data`` as indented JSON; ``allow_nan=False`` refuses NaN/Infinity (strict JSON) instead of writing them."""
    text = json_bytes(data, allow_nan=allow_nan)
    return atomic_write(path, lambda f: f.write(text))
