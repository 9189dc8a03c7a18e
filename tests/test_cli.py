"""The CLI as a user runs it: real subprocesses, real files."""

import json
import subprocess
import sys

import numpy as np
import pytest

from leap_export.reference import layer_embeddings

CLI = [sys.executable, "-m", "leap_export.cli"]


def run(*args, ok=True):
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_build_inspect_encode_verify(tiny_bert, tmp_path, sentences):
    art = tmp_path / "art"
    run("build", tiny_bert, "--out", art, "--min-layer", "2")
    assert "segments" in run("inspect", art).stdout
    assert json.loads(run("inspect", art, "--json").stdout)["num_layers"] == 4
    src = tmp_path / "in.txt"
    src.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    out, exits = tmp_path / "emb.npy", tmp_path / "exits.json"
    run(
        "encode",
        art,
        "--input",
        src,
        "--output",
        out,
        "--exit-layers",
        exits,
        "--theta",
        "0.5",
        "--batch-size",
        5,
    )
    emb = np.load(out)
    assert emb.shape == (len(sentences), 32)
    record = json.loads(exits.read_text())
    assert len(record["exit_layers"]) == len(sentences) and record["policy"]["theta"] == 0.5
    run("encode", art, "--input", src, "--output", out, "--full-depth")
    ref = layer_embeddings(tiny_bert, sentences)[-1]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.sum(np.load(out) * ref, axis=1).min() >= 0.99999
    report = tmp_path / "report.json"
    proc = run("verify", art, "--sentences", src, "--report", report)
    data = json.loads(report.read_text())
    assert "PASSED" in proc.stdout and data["passed"] is True
    # the verdict names where it ran and what did not run, and a backend that did not run says why
    passed = next(line for line in proc.stdout.splitlines() if line.startswith("PASSED"))
    assert data["backends"]["onnxruntime-cpu"]["ran"] and "on onnxruntime-cpu" in passed
    for name, b in data["backends"].items():
        assert b["ran"] or (b["why_not"] and name in passed.split("(")[-1]), (name, b, passed)


def test_verify_exits_1_and_lists_failures(tiny_bert, tiny_mpnet, tmp_path):
    art = tmp_path / "art"
    run("build", tiny_bert, "--out", art, "--min-layer", "2")
    proc = run("verify", art, "--model", tiny_mpnet, ok=False)  # the wrong reference model
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "source weights" in proc.stdout
    # another architecture: said once, instead of a shape error from comparing 32- with 48-wide vectors
    assert "is another model: architecture mpnet (the build: bert)" in " ".join(proc.stdout.split())
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: (d / "config.json").write_text("notjson"),
            "config.json (the model's config) is not valid JSON",
        ),
        (
            lambda d: (d / "config.json").write_text('{"model_type": "bert"}'),
            "'num_hidden_layers' must be a positive",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
            "could not load the model's weights",
        ),
        (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer.json"),
    ],
)
def test_a_damaged_model_folder_gives_a_clear_error(damage, message, tiny_bert, tmp_path):
    import shutil

    folder = shutil.copytree(tiny_bert, tmp_path / "model")
    damage(folder)
    proc = run("build", folder, "--out", tmp_path / "art", ok=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "art").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "no-such-model", "--out", "{tmp}/x"], "unknown model"),
        (["encode", "{tmp}/missing", "--input", "{tmp}/in.txt", "--output", "{tmp}/o.npy"], "not a folder"),
        (
            ["encode", "{art}", "--input", "{tmp}/latin1.txt", "--output", "{tmp}/o.npy"],
            "line 2: not valid UTF-8",
        ),
        (["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/o.npy", "--theta", "0"], "(0, 1]"),
        (["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/o.txt"], "name it *.npy"),
        (
            [
                "encode",
                "{art}",
                "--input",
                "{tmp}/in.txt",
                "--output",
                "{tmp}/o.npy",
                "--exit-layers",
                "{tmp}/in.txt",
            ],
            "same file as the input --input",
        ),
        (
            [
                "encode",
                "{art}",
                "--input",
                "{tmp}/in.txt",
                "--output",
                "{tmp}/o.npy",
                "--exit-layers",
                "{tmp}/o.npy",
            ],
            "same file as the output --output",
        ),
        (
            [
                "encode",
                "{art}",
                "--input",
                "{tmp}/in.txt",
                "--output",
                "{tmp}/o.npy",
                "--exit-layers",
                "{tmp}/./o.npy",
            ],
            "same file as the output --output",
        ),  # one path spelt two ways
        (
            ["verify", "{art}", "--sentences", "{tmp}/in.txt", "--report", "{tmp}/in.txt"],
            "same file as the input",
        ),
        (
            ["diagnose", "{model}", "--sentences", "{tmp}/in.txt", "--report", "{tmp}/in.txt"],
            "same file as the input",
        ),
        (["verify", "{art}", "--report", "{art}/manifest.json"], "would overwrite a file the input folder"),
        (
            ["evaluate", "{art}", "--sentences", "{tmp}/in.txt", "--report", "{art}/seg_00.onnx"],
            "would overwrite a file the input folder",
        ),
        (
            ["diagnose", "{model}", "--report", "{model}/config.json"],
            "would overwrite a file the input folder",
        ),
        (["diagnose", "{art}"], "is a leap-export artifact folder, not a model folder"),
        (["evaluate", "{art}", "--min-layer", "4"], "min_layer must be below the 4 layers"),
        (
            [
                "encode",
                "{art}",
                "--input",
                "{tmp}/in.txt",
                "--output",
                "{tmp}/o.npy",
                "--full-depth",
                "--theta",
                "0.5",
            ],
            "--theta and --min-layer would be ignored",
        ),
        (
            ["build", "{model}", "--out", "{art}", "--precision", "int8", "--boundaries", "2,3"],
            "--boundaries would be ignored",
        ),
        (
            ["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/o.npy", "--batch-size", "0"],
            ">= 1",
        ),
        (["build", "{model}", "--out", "{tmp}/b", "--boundaries", "3,x"], "comma-separated"),
        (["build", "{model}", "--out", "{tmp}/b", "--opset", "11"], "outside 12..20"),
        (["build", "{model}", "--out", "{tmp}/b", "--min-layer", "4"], "could never exit early"),
        (["build", "{model}", "--out", "{tmp}/b", "--patience", "4"], "could never exit early"),
        (
            ["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/o.npy", "--min-layer", "99"],
            "exceeds the model's 4 layers",
        ),
        # output paths are checked before any work: nothing is half-written
        (
            ["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/in.txt/o.npy"],
            "in.txt is a file",
        ),
        (
            [
                "encode",
                "{art}",
                "--input",
                "{tmp}/in.txt",
                "--output",
                "{tmp}/o.npy",
                "--exit-layers",
                "{tmp}/in.txt/e.json",
            ],
            "in.txt is a file",
        ),
        (["verify", "{art}", "--report", "{tmp}/in.txt/r.json"], "in.txt is a file"),
        (["verify", "{art}", "--sentences", "{tmp}/empty.txt"], "empty.txt is empty"),
        (["bench", "{art}", "--sentences", "{tmp}/empty.txt"], "empty.txt holds no sentences"),
        (["build", "{model}", "--out", "{tmp}/in.txt/art"], "in.txt is a file"),
        (["build", "{model}", "--out", "{tmp}/in.txt"], "is a file, not a folder"),
        (["bench", "{art}", "--out", "{tmp}/in.txt/b"], "in.txt is a file"),
        (["bench", "{art}", "--batch-sizes", "1,0"], "integers >= 1"),
        (["bench", "{art}", "--batch-sizes", ","], "integers >= 1"),
        (["bench", "{art}", "--iters", "0"], "--iters"),
        # a missing folder is named, not created (a typo would leave a tree of folders behind)
        (
            ["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/no/such/o.npy"],
            "folder {tmp}/no/such does not exist; create it first (mkdir -p {tmp}/no/such)",
        ),
        (["build", "{model}", "--out", "{tmp}/no/art"], "folder {tmp}/no does not exist"),
        (["verify", "{art}", "--report", "{tmp}/no/r.json"], "folder {tmp}/no does not exist"),
        # usage errors have the one shape of every other error
        (["encode", "{art}", "--input", "{tmp}", "--output", "{tmp}/o.npy"], "is a directory"),
        (
            ["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/o.npy", "--min-layer", "0"],
            ">= 1",
        ),
        (
            ["encode", "{art}", "--input", "{tmp}/in.txt", "--output", "{tmp}/o.npy", "--no-such"],
            "No such option",
        ),
    ],
)
def test_bad_input_gives_a_clear_error_and_no_output(args, message, tiny_artifacts, tiny_bert, tmp_path):
    (tmp_path / "in.txt").write_text("hello\n", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    fmt = {"tmp": tmp_path, "art": tiny_artifacts["bert"], "model": tiny_bert}
    proc = run(*[a.format(**fmt) for a in args], ok=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message.format(**fmt) in proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr  # one shape: no usage text
    assert not (tmp_path / "o.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "in.txt", "latin1.txt"]


def test_outputs_get_the_users_umask(tiny_artifacts, tmp_path):
    """Temporary files are created 0600; what is published must get the mode ``open()`` would give it."""
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n", encoding="utf-8")
    out, exits = tmp_path / "sub" / "emb.npy", tmp_path / "exits.json"
    out.parent.mkdir()
    proc = subprocess.run(
        [
            "sh",
            "-c",
            'umask 022 && exec "$@"',
            "sh",
            *CLI,
            "encode",
            str(tiny_artifacts["bert"]),
            "--input",
            str(src),
            "--output",
            str(out),
            "--exit-layers",
            str(exits),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert oct(out.stat().st_mode & 0o777) == oct(0o644) and oct(exits.stat().st_mode & 0o777) == oct(0o644)


def test_bench_command_writes_its_tables(tiny_artifacts, tmp_path, sentences):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    out = tmp_path / "bench"
    proc = run(
        "bench",
        tiny_artifacts["bert"],
        "--sentences",
        src,
        "--batch-sizes",
        "1,2",
        "--warmup",
        1,
        "--iters",
        3,
        "--no-baselines",
        "--breakdown",
        "--schedule",
        "blocks",
        "--out",
        out,
    )
    assert "graph breaks" in proc.stdout and "blocks" in proc.stdout
    report = json.loads((out / "bench.json").read_text())
    assert report["schedule"] == "blocks" and set(report["results"]["2"]["breakdown"]) == {
        "monitoring_ops",
        "graph_breaks",
    }
    assert (out / "bench.png").stat().st_size > 0
    bad = run("bench", tiny_artifacts["bert"], "--schedule", "random", ok=False)
    assert bad.returncode == 2 and "random" in bad.stderr
    two = run(
        "bench",
        tiny_artifacts["bert"],
        "--sentences",
        src,
        "--batch-sizes",
        "1",
        "--warmup",
        1,
        "--iters",
        2,
        "--no-baselines",
        "--processes",
        2,
    )
    assert "Median over 2 fresh processes" in two.stdout
    bad = run("bench", tiny_artifacts["bert"], "--processes", 0, ok=False)
    assert bad.returncode == 2 and "--processes" in bad.stderr


def test_inspect_hashes_every_variant_and_names_the_broken_one(tiny_artifacts, tmp_path):
    import shutil

    from leap_export.export import build

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], art)
    build(art, art, precision="int8", progress=False)
    assert run("inspect", art).stdout.count("files verified") == 2
    with open(art / "int8" / "seg_01.onnx", "r+b") as f:  # corrupt the int8 build only
        f.seek(200)
        f.write(b"\0\0\0\0")
    proc = run("inspect", art, ok=False)
    assert proc.returncode == 2
    assert "segments" in proc.stdout and "files verified" in proc.stdout and "files NOT INTACT" in proc.stdout
    assert "int8: int8/seg_01.onnx does not match its sha256" in proc.stderr
    assert f"--out {art} --precision int8 --force" in proc.stderr
    assert (
        json.loads(run("inspect", art, "--json", ok=False).stdout)["num_layers"] == 4
    )  # printed all the same
    assert run("inspect", art, "--no-hash-check").returncode == 0


def test_inspect_reads_a_manifest_without_source(tiny_artifacts, tmp_path):
    """The runtime does not need ``source`` (a hand-written manifest may lack it): inspect said KeyError."""
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], art)
    manifest = json.loads((art / "manifest.json").read_text())
    del manifest["source"]
    (art / "manifest.json").write_text(json.dumps(manifest))
    out = run("inspect", art).stdout
    assert "source unknown" in out and "weights sha256 unknown" in out and "files verified" in out


def test_no_progress_hides_the_bars(tiny_bert, tmp_path):
    shown = run("build", tiny_bert, "--out", tmp_path / "a", "--min-layer", "2")
    hidden = run("build", tiny_bert, "--out", tmp_path / "b", "--min-layer", "2", "--no-progress")
    assert "export" in shown.stderr and "segment" in shown.stderr and "%|" in shown.stderr
    assert "%|" not in hidden.stderr
    for command in ("train", "bench", "evaluate", "diagnose", "calibrate", "corpus", "verify"):
        assert "--no-progress" in run(command, "--help").stdout


def test_python_dash_m_leap_export_is_the_command():
    proc = subprocess.run(
        [sys.executable, "-m", "leap_export", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "Usage:" in proc.stdout and "calibrate" in proc.stdout, proc.stderr


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
@pytest.mark.parametrize("phase", ["copying a piped input", "encoding"])
def test_encode_stopped_by_a_service_manager_leaves_no_temporary_files(
    tiny_artifacts, tmp_path, signame, phase
):
    """SIGTERM (systemd, Kubernetes, ``timeout``) and SIGHUP killed the process on the spot, leaving the hidden
    ``.emb.npy.*.tmp`` (and a piped input's copy) behind, as large as the run had got; Ctrl-C cleaned up."""
    import signal
    import time

    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} here")
    out = tmp_path / "emb.npy"
    out.write_bytes(b"earlier output")

    def default_handling():  # a test run under nohup would pass an ignored SIGHUP on
        signal.signal(getattr(signal, signame), signal.SIG_DFL)

    args = [
        *CLI,
        "encode",
        str(tiny_artifacts["bert"]),
        "--output",
        str(out),
        "--exit-layers",
        str(tmp_path / "x.json"),
    ]
    if phase == "encoding":
        src = tmp_path / "in" / "big.txt"  # outside the output folder, which must end up as it was
        src.parent.mkdir()
        src.write_text("a short line to embed\n" * 200_000, encoding="utf-8")
        proc = subprocess.Popen(
            [*args, "--input", str(src)], stderr=subprocess.PIPE, preexec_fn=default_handling
        )
        pattern = ".emb.npy.*.tmp"
    else:
        proc = subprocess.Popen(
            [*args, "--input", "/dev/stdin"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=default_handling,
        )
        proc.stdin.write(b"a line\n" * 1000)  # the pipe stays open: the copy waits for more
        proc.stdin.flush()
        pattern = ".encode-input.*.txt"
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(pattern)):
            if proc.poll() is not None or time.monotonic() > deadline:  # fail, not hang reading a live stderr
                proc.kill()
                pytest.fail(f"no {pattern} appeared: {proc.communicate(timeout=60)[1].decode()}")
            time.sleep(0.01)
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, signame), err  # as a shell reports the signal
    assert (f"aborted ({signame})" if signame != "SIGINT" else "aborted") in err.decode()  # Ctrl-C: 130
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["emb.npy"]  # no .tmp, no input copy
    assert out.read_bytes() == b"earlier output"


def test_encode_that_cannot_fit_its_output_says_so_before_encoding(tiny_artifacts, tmp_path):
    """A file-size limit (``ulimit -f``, as a full disk): a clear error before any encoding, not a traceback
    at the first chunk that no longer fits; nothing half-written, the earlier output kept."""
    resource = pytest.importorskip("resource")
    src = tmp_path / "in" / "in.txt"
    src.parent.mkdir()
    src.write_text("a line\n" * 5000, encoding="utf-8")  # 5000 x 32 float32: 640 kB of embeddings
    out = tmp_path / "emb.npy"
    out.write_bytes(b"earlier output")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    for source, stdin in ((src, None), ("/dev/stdin", subprocess.PIPE)):  # a pipe is first copied: that fails
        proc = subprocess.Popen([*CLI, "encode", str(tiny_artifacts["bert"]), "--input", str(source), "--output",
                                 str(out)], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=limit, text=True)  # fmt: skip
        _, err = proc.communicate(src.read_text() + "x" * 100_000 + "\n" if stdin else None, timeout=300)
        assert proc.returncode == 2 and "Traceback" not in err, err
        assert "cannot write" in err and ("file-size limit" in err or "File too large" in err), err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "in"]
        assert out.read_bytes() == b"earlier output"


def test_encode_running_out_of_room_midway_is_a_clear_error(tiny_artifacts, tmp_path, monkeypatch):
    import errno

    import leap_export.encode as enc
    from leap_export.errors import LeapError

    class Full:  # the disk fills up after the header
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

    real = enc.atomic_write
    monkeypatch.setattr(enc, "atomic_write", lambda path, write: real(path, lambda f: write(Full(f))))
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(LeapError, match="No space left on device"):
        enc.encode_file(tiny_artifacts["bert"], src, tmp_path / "emb.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_termination_signals_unwind_once_and_an_ignored_one_stays_ignored():
    """``nohup`` (SIGHUP ignored by the parent) must keep working; the handler unwinds the first SIGTERM with
    status 143 and a second one kills on the spot, as a stuck unwind must not make the process unkillable."""
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "from leap_export.cli import _exit_on_termination\n"
        "_exit_on_termination()\n"
        "os.kill(os.getpid(), signal.SIGHUP)\n"
        "print('still here after SIGHUP', flush=True)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "except SystemExit as e:\n"
        "    print('unwound', e.code, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('not killed', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == ["still here after SIGHUP", "unwound 143"], proc.stdout + proc.stderr
    assert proc.returncode == -15, proc.stderr


def test_devices_are_never_the_same_file_as_each_other(tiny_artifacts, tmp_path):
    """`--input /dev/null --exit-layers /dev/null` reads one device and writes the other: no file is replaced."""
    out = tmp_path / "e.npy"
    proc = run(
        "encode",
        tiny_artifacts["bert"],
        "--input",
        "/dev/null",
        "--output",
        out,
        "--exit-layers",
        "/dev/null",
    )
    assert "0 embeddings" in proc.stderr and np.load(out).shape == (0, 32)


def test_inspect_counts_policy_history_entries_in_words():
    from leap_export.inspect import _entries

    assert [_entries(n) for n in (0, 1, 2)] == [
        "0 entries",
        "1 entry",
        "2 entries",
    ]  # inspect's "history: ..."


def test_a_read_only_output_is_refused_and_a_replaced_one_keeps_its_mode(tiny_artifacts, tmp_path):
    """As ``cp`` would: a file without write permission is not replaced (not even by root, who could: the
    owner took the write bit away), and a file that is replaced keeps its mode."""
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n", encoding="utf-8")
    locked = tmp_path / "locked.npy"
    locked.write_bytes(b"mine")
    locked.chmod(0o444)
    proc = run("encode", tiny_artifacts["bert"], "--input", src, "--output", locked, ok=False)
    assert proc.returncode == 2 and f"{locked} is read-only: refusing to replace it" in proc.stderr
    assert locked.read_bytes() == b"mine" and oct(locked.stat().st_mode & 0o777) == oct(0o444)
    private = tmp_path / "private.npy"
    private.write_bytes(b"old")
    private.chmod(0o600)
    run("encode", tiny_artifacts["bert"], "--input", src, "--output", private)
    assert private.read_bytes() != b"old" and oct(private.stat().st_mode & 0o777) == oct(0o600)
