"""``leap-export encode``'s file path: streamed in chunks, equal to the in-memory API, never half-written."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from leap_export.encode import encode_file
from leap_export.errors import LeapError
from trt_runtime import EarlyExitEncoder


@pytest.fixture
def lines(sentences) -> list[str]:
    return [*sentences, "", "  ", sentences[0]]  # empty lines are embedded too, as the reference embeds them


def test_chunks_stream_into_one_npy_equal_to_the_api(tiny_artifacts, lines, tmp_path):
    art = tiny_artifacts["bert"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    api = EarlyExitEncoder(art, theta=0.5).encode_with_exits(lines, batch_size=1)
    stats = encode_file(art, src, tmp_path / "e.npy", theta=0.5, batch_size=1, chunk_size=7,
                        exit_layers_path=tmp_path / "x.json")  # fmt: skip
    emb = np.load(tmp_path / "e.npy")
    assert emb.dtype == np.float32 and emb.shape == api.embeddings.shape == (len(lines), 32)
    np.testing.assert_array_equal(emb, api.embeddings)  # batch 1: no batch composition, so bit for bit
    assert json.loads((tmp_path / "x.json").read_text())["exit_layers"] == api.exit_layers.tolist()
    assert stats["samples"] == len(lines)

    encode_file(art, src, tmp_path / "b.npy", theta=0.5, batch_size=4, chunk_size=5)  # batches inside chunks
    batched = np.load(tmp_path / "b.npy")
    assert batched.shape == emb.shape
    assert (batched * emb).sum(axis=1).min() >= 0.99999
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "e.npy", "in.txt", "x.json"]


def test_a_pipe_is_read_once_and_its_copy_removed(tiny_artifacts, lines, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    threading.Thread(target=feed, daemon=True).start()
    out = tmp_path / "out" / "e.npy"
    out.parent.mkdir()
    encode_file(tiny_artifacts["bert"], fifo, out, theta=0.5, chunk_size=4)
    want = EarlyExitEncoder(tiny_artifacts["bert"], theta=0.5).encode(lines, batch_size=32)
    assert (np.load(out) * want).sum(axis=1).min() >= 0.99999
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.npy"]  # no spooled copy left behind


def test_a_bad_line_stops_before_any_work_and_an_empty_file_gives_no_rows(tiny_artifacts, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n" * 50 + b"caf\xe9\n")
    with pytest.raises(LeapError, match="line 51: not valid UTF-8"):
        encode_file(tiny_artifacts["bert"], bad, tmp_path / "sub" / "e.npy", chunk_size=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # not even the output's folder
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    encode_file(tiny_artifacts["bert"], empty, tmp_path / "e.npy")
    assert np.load(tmp_path / "e.npy").shape == (0, 32)


def test_exit_layers_on_stdout_is_json_alone(tiny_artifacts, lines, tmp_path):
    # The summary line goes to stderr, so `--exit-layers /dev/stdout | jq` reads one JSON document.
    import subprocess
    import sys

    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "leap_export.cli", "encode", str(tiny_artifacts["bert"]), "--input", str(src),
         "--output", str(tmp_path / "e.npy"), "--theta", "0.5", "--exit-layers", "/dev/stdout"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert len(json.loads(run.stdout)["exit_layers"]) == len(lines)
    assert f"{len(lines)} embeddings ->" in run.stderr


@pytest.mark.parametrize(
    "data, want",
    [
        (b"a\r\nb\r\n", ["a", "b"]),  # CRLF
        (b"\xef\xbb\xbfa\r\nb", ["a", "b"]),  # a UTF-8 byte-order mark, no final newline
        (b"\xef\xbb\xbf", []),  # an editor's empty UTF-8 file (Notepad): no lines, as an empty file has none
        (b"\xef\xbb\xbf\n", [""]),  # one empty line, as b"\n" is
        # one line each: only \n ends a line (str.splitlines would also break at \v \f \x1c-\x1e \x85 \u2028 \u2029)
        ("a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g\rh\n".encode(), ["a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g\rh"]),
    ],
)
def test_lines_are_what_the_file_holds_between_newlines(tiny_artifacts, tmp_path, data, want):
    src = tmp_path / "in.txt"
    src.write_bytes(data)
    encode_file(tiny_artifacts["bert"], src, tmp_path / "e.npy", theta=0.5)
    got = np.load(tmp_path / "e.npy")
    assert got.shape == (len(want), 32)
    if want:
        np.testing.assert_allclose(
            got, EarlyExitEncoder(tiny_artifacts["bert"], theta=0.5).encode(want), atol=1e-6
        )


def test_a_utf16_file_is_named_as_one_with_the_right_conversion(tiny_artifacts, tmp_path):
    # The generic hint, `iconv -f latin1`, turns UTF-16 into valid UTF-8 with a NUL after every letter,
    # which would then embed without an error.
    src = tmp_path / "in.txt"
    src.write_bytes("hello\r\nworld\r\n".encode("utf-16"))  # with its byte-order mark, as Windows writes it
    with pytest.raises(LeapError, match=r"is UTF-16, not UTF-8.*iconv -f utf-16 -t utf-8"):
        encode_file(tiny_artifacts["bert"], src, tmp_path / "e.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_chunks_are_chunk_size_lines_and_exit_layers_keep_input_order(tiny_artifacts, tmp_path, monkeypatch):
    """Memory holds one chunk of exactly ``chunk_size`` lines (the last one the rest), and each row and each
    exit layer lands at its own line's position, across chunk boundaries and the length sort inside a chunk."""
    from trt_runtime.encoder import EarlyExitEncoder as Encoder

    art = tiny_artifacts["bert"]
    lines = [f"line {i} " + "word " * (7 * i % 11) for i in range(10)]  # lengths out of order
    api_at = {theta: Encoder(art, theta=theta).encode_with_exits(lines, batch_size=1)
              for theta in [0.9998 + i * 0.00001 for i in range(11)]}  # fmt: skip
    theta = max(api_at, key=lambda t: len(set(api_at[t].exit_layers.tolist())))
    api = api_at[theta]
    assert len(set(api.exit_layers.tolist())) >= 2, "no theta here gives mixed exits: the order is untested"
    sizes = []
    real = Encoder.encode_with_exits
    monkeypatch.setattr(
        Encoder,
        "encode_with_exits",
        lambda self, chunk, **kw: sizes.append(len(chunk)) or real(self, chunk, **kw),
    )
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    encode_file(art, src, tmp_path / "e.npy", theta=theta, batch_size=1, chunk_size=4,
                exit_layers_path=tmp_path / "x.json")  # fmt: skip
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), api.embeddings)
    record = json.loads((tmp_path / "x.json").read_text())
    assert record["exit_layers"] == api.exit_layers.tolist()
    assert record["stats"]["samples"] == len(lines) and record["policy"]["theta"] == theta


def test_the_space_check_counts_the_npy_bytes_exactly(tiny_artifacts, tmp_path, monkeypatch):
    """Free space (and ``ulimit -f``) are checked against the file's real size: header + rows x dim x 4 bytes."""
    import collections
    import resource

    import leap_export.encode as enc

    src = tmp_path / "in" / "in.txt"
    src.parent.mkdir()
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    out = tmp_path / "out" / "e.npy"
    out.parent.mkdir()
    need = 128 + 3 * 32 * 4
    usage = collections.namedtuple("usage", "total used free")
    real_disk_usage = enc.shutil.disk_usage
    monkeypatch.setattr(enc.shutil, "disk_usage", lambda p: usage(10**9, 0, need - 1))
    with pytest.raises(LeapError, match=r"has [1-9][\d.,]* (bytes|kB) free"):  # a small file: not "0.0 MB"
        encode_file(tiny_artifacts["bert"], src, out)
    assert list(out.parent.iterdir()) == []  # nothing written, not even a temporary file
    monkeypatch.setattr(enc.shutil, "disk_usage", lambda p: usage(10**9, 0, need))
    encode_file(tiny_artifacts["bert"], src, out)
    assert out.stat().st_size == need  # the estimate is the file's size
    monkeypatch.setattr(enc.shutil, "disk_usage", real_disk_usage)
    out.unlink()
    real_getrlimit = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda r: (need - 1, real_getrlimit(r)[1])
                        if r == resource.RLIMIT_FSIZE else real_getrlimit(r))  # fmt: skip
    # before encoding, not a write that fails; a limit of a few kB reads as such, not "0.0 MB"
    with pytest.raises(LeapError, match=r"file-size limit \([1-9][\d.,]* (bytes|kB), ulimit -f\)"):
        encode_file(tiny_artifacts["bert"], src, out)
    assert sorted(p.name for p in out.parent.iterdir()) == []


def test_a_file_that_changes_while_it_is_read_publishes_nothing(tiny_artifacts, tmp_path, monkeypatch):
    """The header's row count comes from the first pass; a second pass with fewer lines must not publish a
    .npy whose header promises rows it does not hold."""
    import leap_export.encode as enc

    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    passes = []
    real = enc.iter_lines

    def shrinking(path, **kw):
        passes.append(path)
        lines = list(real(path, **kw))
        return iter(lines if len(passes) == 1 else lines[:-1])

    monkeypatch.setattr(enc, "iter_lines", shrinking)
    with pytest.raises(RuntimeError, match="changed while it was read"):
        encode_file(tiny_artifacts["bert"], src, tmp_path / "e.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_the_library_refuses_to_write_over_its_input(tiny_artifacts, tmp_path):
    """``encode_file`` itself (not only the CLI's option check) never replaces the sentences it reads."""
    src = tmp_path / "in.txt"
    src.write_text("one\n", encoding="utf-8")
    with pytest.raises(LeapError, match="--output .* is the input file"):
        encode_file(tiny_artifacts["bert"], src, src)
    with pytest.raises(LeapError, match="--exit-layers .* is the input file"):
        encode_file(
            tiny_artifacts["bert"], src, tmp_path / "e.npy", exit_layers_path=tmp_path / "." / "in.txt"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"] and src.read_text() == "one\n"


def test_a_byte_order_mark_is_dropped_from_the_first_line_only(tmp_path):
    """A BOM starts a file; U+FEFF further on is text (a zero-width no-break space) and is kept as it is."""
    from leap_export.textio import read_lines

    src = tmp_path / "in.txt"
    src.write_bytes(b"\xef\xbb\xbfa\n\xef\xbb\xbfb\n\xef\xbb\xbf\nc")
    assert read_lines(src) == ["a", "\ufeffb", "\ufeff", "c"]
