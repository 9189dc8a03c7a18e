"""Output files: atomic for regular files, written through for streams, symlinks kept."""

import os
import threading

from trt_runtime.fileio import atomic_write


def test_a_symlinked_output_replaces_its_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target.name)
    atomic_write(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temporary left over


def test_a_pipe_is_written_to_not_replaced(tmp_path):
    """As root, renaming over /dev/stdout replaced the device with a file; a named pipe shows the same."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)  # never blocks the exit
    reader.start()
    atomic_write(fifo, lambda f: f.write(b"through the pipe"))
    reader.join(timeout=30)
    assert got == [b"through the pipe"]
    assert fifo.is_fifo()
