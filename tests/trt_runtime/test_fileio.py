"""Output files: atomic for regular files, written through for streams, symlinks kept."""

import os
import threading

from trt_runtime.fileio import atomic_write, ordinary_modes, temp_folder


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
    reader = threading.Thread(
        target=lambda: got.append(fifo.read_bytes()), daemon=True
    )  # never blocks the exit
    reader.start()
    atomic_write(fifo, lambda f: f.write(b"through the pipe"))
    reader.join(timeout=30)
    assert got == [b"through the pipe"]
    assert fifo.is_fifo()


def test_published_folders_and_files_get_the_users_umask(tmp_path):
    """mkdtemp makes a folder 0700: a build folder renamed into place from it must get 0777 & ~umask (and its
    files 0666 & ~umask), as mkdir and open() would give them."""
    old = os.umask(0o027)
    try:
        tmp = temp_folder(tmp_path, ".build.")
        (tmp / "sub").mkdir(mode=0o700)
        os.close(os.open(tmp / "sub" / "f.onnx", os.O_WRONLY | os.O_CREAT, 0o600))
        assert oct(tmp.stat().st_mode & 0o777) == oct(0o750)
        ordinary_modes(tmp)
    finally:
        os.umask(old)
    assert oct((tmp / "sub").stat().st_mode & 0o777) == oct(0o750)
    assert oct((tmp / "sub" / "f.onnx").stat().st_mode & 0o777) == oct(0o640)


def test_an_output_folder_that_is_not_writable_is_named_before_any_work(tmp_path, monkeypatch):
    """(A test run as root cannot make a folder unwritable by its mode, so access() answers as for a user.)"""
    import trt_runtime.fileio as fileio

    monkeypatch.setattr(fileio.os, "access", lambda path, mode: os.fspath(path) != os.fspath(tmp_path))
    problem = fileio.output_problem(tmp_path / "e.npy")
    assert problem and f"folder {tmp_path} is not writable" in problem
    assert fileio.output_problem(tmp_path / "new", folder=True)
