"""File-to-file encoding for the CLI: sentences.txt -> emb.npy (+ exit layers JSON), written atomically.

The input streams through in chunks of ``chunk_size`` lines: each chunk is encoded (sorted by length
inside the chunk, as ``EarlyExitEncoder.encode`` sorts one call's sentences) and its rows are appended to
the ``.npy`` file, so memory holds one chunk whatever the file's size. The ``.npy`` header needs the row
count first: a first pass counts the lines and checks that every one is UTF-8, so a bad line stops the run
before any encoding. A pipe (``/dev/stdin``, ``<(zcat f.gz)``) cannot be read twice and is copied to a
temporary file next to the output first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from leap_export.errors import LeapError
from leap_export.textio import iter_lines
from trt_runtime.fileio import (
    atomic_write,
    create_new,
    ensure_parent,
    nearest_existing,
    same_file,
    temp_name,
    write_json_atomic,
)

CHUNK_SIZE = (
    1 << 16
)  # sentences per chunk: ~100 MB of MiniLM embeddings, batches as well packed as a sort of all


def encode_file(
    artifacts,
    input_path,
    output,
    *,
    theta=None,
    min_layer=None,
    batch_size=32,
    exits: bool | None = None,
    exit_layers_path=None,
    variant=None,
    threads=None,
    chunk_size: int = CHUNK_SIZE,
    backend: str = "auto",
) -> dict:
    from tqdm.auto import tqdm

    from trt_runtime.encoder import EarlyExitEncoder

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for name, target in (("--output", output), ("--exit-layers", exit_layers_path)):
        if target is not None and same_file(input_path, target):
            raise LeapError(f"{name} {target} is the input file; writing it would replace your sentences")
    output = Path(output)
    with _readable_twice(Path(input_path), output) as source:
        count = sum(1 for _ in iter_lines(source))  # every line checked before any work
        encoder = EarlyExitEncoder(
            artifacts,
            theta=theta,
            min_layer=min_layer,
            exits=exits,
            variant=variant,
            threads=threads,
            backend=backend,
        )
        exit_layers = np.empty(count, dtype=np.int64)
        row_dtype = np.dtype("<f4")
        problem = _space_problem(output, 128 + count * encoder.embedding_dim * row_dtype.itemsize)
        if problem:  # before hours of encoding, not at the chunk that no longer fits
            raise LeapError(f"cannot write {output}: {problem}")

        def write(f) -> None:
            np.lib.format.write_array_header_1_0(
                f,
                {
                    "descr": np.lib.format.dtype_to_descr(row_dtype),
                    "fortran_order": False,
                    "shape": (count, encoder.embedding_dim),
                },
            )
            done = 0
            # a bar on a terminal (disable=None), for more than a few batches
            with tqdm(
                total=count, desc="encode", unit="sentence", disable=None if count > 4 * batch_size else True
            ) as bar:
                for chunk in _chunks(iter_lines(source), chunk_size):
                    result = encoder.encode_with_exits(
                        chunk, batch_size=batch_size, show_progress_bar=False, on_batch=bar.update
                    )
                    f.write(np.ascontiguousarray(result.embeddings, dtype=row_dtype).tobytes())
                    exit_layers[done : done + len(chunk)] = result.exit_layers
                    done += len(chunk)
            if done != count:
                raise RuntimeError(f"{input_path} changed while it was read ({count} lines, then {done})")

        with _no_room_is_an_error(output):
            atomic_write(output, write)
    stats = encoder.stats.as_dict()
    if exit_layers_path:
        with _no_room_is_an_error(exit_layers_path):
            write_json_atomic(
                Path(exit_layers_path),
                {
                    "policy": encoder.policy.to_dict(),
                    "exit_layers": exit_layers.tolist(),
                    "stats": stats,
                },
            )
    return {**stats, "policy": encoder.policy.to_dict()}


_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def _no_room_is_an_error(path) -> Iterator[None]:
    """A full disk or a file-size limit mid-write: a clear error (the partial file is already removed)."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise
        raise LeapError(f"cannot write {path}: {e.strerror} (the partial file was removed)") from e


def _space_problem(output: Path, size: int) -> str | None:
    """Why ``size`` bytes will not fit where ``output`` is written (a full disk, a file-size limit); None if they may."""
    if output.exists() and not output.is_file() and not output.is_dir():
        return None  # a device or a named pipe: written to, not stored here
    folder = nearest_existing(Path(os.path.realpath(output)).parent)
    mb = _human_bytes(size)
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and size > limit:
            return f"the embeddings need {mb}, over this process's file-size limit ({_human_bytes(limit)}, ulimit -f)"
    except (ImportError, OSError, ValueError):
        pass
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if size > free:
        return f"the embeddings need {mb}, and {folder} has {_human_bytes(free)} free"
    return None


def _human_bytes(n: int) -> str:
    """``3.1 MB``, ``20.5 kB``: a limit of 20 KiB read "0.0 MB" before."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while chunk := list(islice(it, size)):
        yield chunk


@contextlib.contextmanager
def _readable_twice(path: Path, output: Path) -> Iterator[Path]:
    """``path`` itself if it is a regular file (or missing: ``iter_lines`` says so), else a temporary copy
    next to ``output``."""
    if path.is_file() or not path.exists() or path.is_dir():
        yield path
        return
    tmp = temp_name(ensure_parent(output).parent, ".encode-input.", ".txt")
    try:
        with (
            os.fdopen(create_new(tmp), "wb") as dst,
            path.open("rb") as src,
            _no_room_is_an_error(f"a copy of {path} to {tmp}"),
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
