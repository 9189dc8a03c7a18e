"""The C API (``trt_runtime/_native/include/leap_runtime.h``, docs/c-api.md) used from C and C++.

The C++ example (``examples/cpp``) is built with CMake against the installed header and library, as
docs/c-api.md says, and must give what :class:`EarlyExitEncoder` gives on the packaged MiniLM (same exit
layers, cosine >= 0.99999) with exits at several layers. The library, the example and
``tests/capi/bad_inputs.c`` are then built from source with AddressSanitizer and UndefinedBehaviorSanitizer
and run on bad input (null pointers, damaged folders, batch 0, a sequence over the maximum, ids out of the
vocabulary, a mask of the wrong shape, bad policies) and from several threads: every case must come back as
its error code and a message, never a crash or a sanitizer report.

Needs a C and a C++ compiler and CMake (``make test`` installs them: the Makefile's ``cxx`` target and the dev
extra's ``cmake``); the library itself is built at install (setup.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trt_runtime import native

ROOT = Path(__file__).resolve().parent.parent
# compiles C and C++ (with sanitizers): once per CI run, in the first environment (it does not depend on
# transformers); the Makefile's second pass leaves it out
pytestmark = pytest.mark.capi
NATIVE = ROOT / "trt_runtime" / "_native"
# the library's status codes (leap_status)
ARTIFACT, UNSUPPORTED, ONNXRUNTIME = (
    native.LEAP_ERR_ARTIFACT,
    native.LEAP_ERR_UNSUPPORTED,
    native.LEAP_ERR_ONNXRUNTIME,
)


def _tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
        if found:
            return found
    pytest.fail(
        f"none of {', '.join(names)} is installed: `make cxx` installs a C++ compiler, the dev extra cmake"
    )


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _capi(*flags: str) -> str:
    return _run([sys.executable, "-m", "leap_export", "c-api", *flags]).stdout.strip()


@pytest.fixture(scope="module")
def library() -> Path:
    path = native.extension_path()
    assert path is not None, "pip install -e . should have built trt_runtime/libleap_runtime.so"
    return path


def test_c_api_command_prints_the_installed_locations(library):
    includes, libs = _capi("--includes"), _capi("--libs")
    assert includes == f"-I{native.header_dir()}" and (native.header_dir() / "leap_runtime.h").is_file()
    assert libs == f"-L{library.parent} -lleap_runtime -Wl,-rpath,{library.parent}"
    assert _capi("--includes", "--libs") == f"{includes} {libs}"
    assert Path(_capi("--library")) == library and Path(_capi("--ort-library")).is_file()
    summary = _capi()
    assert "leap_runtime 1.0.0" in summary and str(library) in summary
    # python -m trt_runtime.capi: the same, for a runtime-only install
    assert _run([sys.executable, "-m", "trt_runtime.capi", "--includes"]).stdout.strip() == includes


def test_the_wheel_installs_the_library_and_the_header(tmp_path):
    """A built wheel holds libleap_runtime.so and leap_runtime.h where `leap-export c-api` looks for them."""
    import zipfile

    # with build isolation, as `pip install` builds (this environment's setuptools may be older than needed)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path, ROOT])
    (wheel,) = tmp_path.glob("leap_export-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"trt_runtime/libleap_runtime.so", "trt_runtime/_native/include/leap_runtime.h"} <= names, sorted(
        names
    )


def test_the_library_exports_the_public_api_only(library):
    """Every exported symbol is a leap_* function of the header, and every function of the header is exported."""
    import re

    nm = _run(["nm", "-D", "--defined-only", library]).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if " T " in line}
    header = (native.header_dir() / "leap_runtime.h").read_text()
    declared = set(re.findall(r"LEAP_API [^;(]*?\b(leap_\w+)\(", header))
    assert exported == declared, exported ^ declared


def test_the_header_compiles_as_c_and_cpp(tmp_path):
    """Strict C99 and C++17, no warnings: extern "C", no name a C++ program would trip on."""
    src = "#include <leap_runtime.h>\nint main(void) { return leap_version() == LEAP_RUNTIME_VERSION ? 0 : 1; }\n"
    (tmp_path / "a.c").write_text(src)
    (tmp_path / "a.cpp").write_text(src)
    inc = f"-I{native.header_dir()}"
    _run([_tool("gcc", "cc"), "-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror", inc, "-c", tmp_path / "a.c", "-o", tmp_path / "a.o"])  # fmt: skip
    _run([_tool("g++", "c++"), "-std=c++17", "-Wall", "-Wextra", "-Wpedantic", "-Werror", inc, "-c", tmp_path / "a.cpp", "-o", tmp_path / "b.o"])  # fmt: skip


def test_tokenize_writes_the_runtimes_ids(tiny_artifacts, sentences, tmp_path):
    from trt_runtime import EarlyExitEncoder

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentences) + "\n")
    want = [ids.tolist() for ids in EarlyExitEncoder(tiny_artifacts["bert"]).tokenizer.encode(sentences)]
    for name in ("ids.txt", "ids.json"):
        proc = _run([sys.executable, "-m", "leap_export", "tokenize", tiny_artifacts["bert"], "--input", texts, "--output", tmp_path / name])  # fmt: skip
        assert f"{len(sentences)} sentences" in proc.stdout
    lines = (tmp_path / "ids.txt").read_text().splitlines()
    assert [[int(t) for t in line.split()] for line in lines] == want
    data = json.loads((tmp_path / "ids.json").read_text())
    assert data["ids"] == want and data["pad_id"] == 0 and data["vocab_size"] == 30522
    assert data["max_length"] == json.loads((tiny_artifacts["bert"] / "manifest.json").read_text())["tokenizer"]["max_length"]  # fmt: skip


# -- the C++ example and the sanitizers on the packaged MiniLM (slow: the build) --------------------------


def _texts() -> list[str]:
    from leap_export.textio import sample_sentences

    return [
        "Terraced vineyards cling to the volcanic slopes above the harbour town.",
        "Can a spreadsheet formula refer to a cell in another workbook?",
        "",
        "x " * 600,  # truncated at the maximum length
        "Die Bibliothek schließt heute früher als sonst.",
    ] + sample_sentences()


def _splitting_theta(art: Path, texts: list[str]) -> float:
    """A theta some sentences reach after layer 3 or 4 and others do not (split_theta, as test_minilm_e2e
    picks one), from the scores the build's own graphs compute (a traced batch)."""
    from leap_export.verify import split_theta
    from trt_runtime import EarlyExitEncoder

    enc = EarlyExitEncoder(art, exits=False)
    scores = []
    enc.run_ids(
        enc.tokenizer.encode(texts),
        on_segment=lambda t: scores.append(t.score) if t.layer in (3, 4) else None,
    )
    return split_theta(np.concatenate(scores))


def _build_example(build: Path, *cmake_args) -> Path:
    cmake = _tool("cmake")
    _run([cmake, "-S", ROOT / "examples" / "cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_CXX_COMPILER={_tool('g++', 'c++')}", f"-DCMAKE_C_COMPILER={_tool('gcc', 'cc')}", *cmake_args])  # fmt: skip
    _run([cmake, "--build", build])
    return build / "leap_embed"


def _parse(stdout: str, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [line.split("\t") for line in stdout.splitlines()]
    layers = np.array([int(r[0]) for r in rows])
    emb = np.array([[float(v) for v in r[1].split()] for r in rows], dtype=np.float32)
    assert emb.shape[1] == hidden
    return emb, layers


@pytest.mark.slow
def test_cpp_example_equals_the_python_runtime(minilm_artifacts, library, tmp_path):
    from trt_runtime import EarlyExitEncoder, capi

    exe = _build_example(tmp_path / "build", f"-DLEAP_INCLUDE_DIR={capi.value('include_dir')}", f"-DLEAP_LIBRARY={capi.value('library')}")  # fmt: skip
    texts = _texts()
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    _run([sys.executable, "-m", "leap_export", "tokenize", minilm_artifacts, "--input", tmp_path / "texts.txt", "--output", tmp_path / "ids.txt"])  # fmt: skip
    theta = _splitting_theta(minilm_artifacts, texts)
    env = {**os.environ, "LEAP_ORT_LIBRARY": capi.value("ort_library")}
    proc = _run([exe, minilm_artifacts, tmp_path / "ids.txt", "--theta", repr(theta), "--normalize"], env=env)
    got, got_layers = _parse(proc.stdout, 384)
    want = EarlyExitEncoder(minilm_artifacts, theta=theta, warn_exit_check=False).encode_with_exits(texts)
    assert got_layers.tolist() == want.exit_layers.tolist()
    assert len(set(got_layers.tolist())) >= 2, "the theta must split the sentences"
    assert np.sum(got * want.embeddings, axis=1).min() >= 0.99999
    assert "layer 3:" in proc.stderr  # the statistics
    # the example program of docs/c-api.md, as written, in C and in C++
    import re
    import shlex

    doc = (ROOT / "docs" / "c-api.md").read_text()
    (source,) = re.findall(r"```c\n(.*?)```", doc, flags=re.S)
    (tmp_path / "doc.c").write_text(source)
    flags = shlex.split(capi.value("includes") + " " + capi.value("libs"))
    for compiler, std, lang in (
        (_tool("gcc", "cc"), "-std=c11", "c"),
        (_tool("g++", "c++"), "-std=c++17", "c++"),
    ):
        _run([compiler, std, "-Wall", "-Wextra", "-Werror", "-x", lang, tmp_path / "doc.c", "-x", "none", *flags, "-o", tmp_path / "doc"])  # fmt: skip
        assert _run([tmp_path / "doc", minilm_artifacts], env=env).stdout.startswith("exit layers ")
    # full depth: every sentence at layer 6
    proc = _run([exe, minilm_artifacts, tmp_path / "ids.txt", "--full-depth", "--normalize"], env=env)
    got, got_layers = _parse(proc.stdout, 384)
    want = EarlyExitEncoder(minilm_artifacts, exits=False).encode(texts)
    assert set(got_layers.tolist()) == {6} and np.sum(got * want, axis=1).min() >= 0.99999


def _damaged_copies(art: Path, root: Path) -> list[str]:
    """STATUS:FOLDER arguments for bad_inputs: copies of ``art`` broken one way each (big files linked)."""
    manifest = json.loads((art / "manifest.json").read_text())
    cases = []

    def copy(name: str, status: int, edit=None, files: dict | None = None) -> None:
        folder = root / name
        shutil.copytree(art, folder, copy_function=os.symlink)
        data = json.loads(json.dumps(manifest))
        if edit:
            edit(data)
        (folder / "manifest.json").unlink()
        (folder / "manifest.json").write_text(json.dumps(data) if isinstance(data, dict) else data)
        for rel, content in (files or {}).items():
            (folder / rel).unlink(missing_ok=True)
            if content is not None:
                (folder / rel).write_bytes(content)
        cases.append(f"{status}:{folder}")

    seg1 = manifest["variants"]["fp32"]["segments"][1]["file"]
    flipped = bytearray((art / seg1).read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    copy("missing-segment", ARTIFACT, files={seg1: None})
    copy("corrupted-segment", ARTIFACT, files={seg1: bytes(flipped)})
    copy("no-manifest", ARTIFACT, files={"manifest.json": None})
    text = (art / "manifest.json").read_bytes()
    for cut in range(1, len(text), len(text) // 9):  # cut anywhere: inside a string, a number, a key...
        copy(f"manifest-cut-at-{cut}", ARTIFACT, files={"manifest.json": text[:cut]})
    copy("nested-manifest", ARTIFACT, files={"manifest.json": b"[" * 200000 + b"]" * 200000})
    copy("schema-1", ARTIFACT, lambda d: d.update(schema_version=1))
    copy("not-leap-export", ARTIFACT, lambda d: d.update(format="other"))
    copy("no-segments", ARTIFACT, lambda d: d.update(segments=[]))
    copy("gap-in-layers", ARTIFACT, lambda d: d["segments"][1].update(layers=[4, 4]))
    copy(
        "outside-path", ARTIFACT, lambda d: d["variants"]["fp32"]["segments"][0].update(file="../seg_00.onnx")
    )
    copy("hidden-a-string", ARTIFACT, lambda d: d.update(hidden_size="384"))
    empty_tokenizer = b'{"model": {}}'  # with its own hash: the library reads it and finds no vocabulary
    copy("tokenizer-without-vocabulary", ARTIFACT, lambda d: d["tokenizer"].update(sha256=_sha256(empty_tokenizer)),
         files={manifest["tokenizer"]["file"]: empty_tokenizer})  # fmt: skip
    copy("tensorrt-variant", UNSUPPORTED, lambda d: d["variants"]["fp32"].update(backend="tensorrt"))
    copy("unknown-input", UNSUPPORTED, lambda d: d["segments"][1]["inputs"].append({"name": "position_ids"}))

    # bytes changed at random (seeded): opened or refused, any status, but never a crash or a sanitizer report
    rng = np.random.default_rng(29)
    for i in range(6):
        mutated = bytearray(text)
        mutated[int(rng.integers(len(text)))] = int(rng.integers(32, 127))
        copy(f"manifest-mutated-{i}", -1, files={"manifest.json": bytes(mutated)})

    # a graph that is not ONNX, recorded with its own hash: ONNX Runtime refuses it, in a message
    def bad_graph(d):
        d["variants"]["fp32"]["segments"][2]["sha256"] = _sha256(b"not a graph")

    copy("not-a-graph", ONNXRUNTIME, bad_graph, files={manifest["variants"]["fp32"]["segments"][2]["file"]: b"not a graph"})  # fmt: skip
    return cases


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_bad_input_under_address_and_undefined_behaviour_sanitizers(minilm_artifacts, tmp_path):
    san = [
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        "-fno-omit-frame-pointer",
        "-g",
        "-O1",
    ]
    libdir = tmp_path / "lib"
    libdir.mkdir()
    lib = libdir / "libleap_runtime.so"
    inc = f"-I{native.header_dir()}"
    gcc = _tool("gcc", "cc")
    _run([gcc, "-std=c11", *san, "-fPIC", "-shared", "-fvisibility=hidden", inc, NATIVE / "leap_runtime.c",
          NATIVE / "leap_json.c", "-o", lib, "-Wl,-soname,libleap_runtime.so", "-ldl", "-lpthread", "-lm"])  # fmt: skip
    bad = tmp_path / "bad_inputs"
    _run([gcc, "-std=c11", *san, inc, ROOT / "tests" / "capi" / "bad_inputs.c", "-o", bad, f"-L{libdir}",
          "-lleap_runtime", f"-Wl,-rpath,{libdir}", "-lpthread", "-lm"])  # fmt: skip
    ort = str(native.onnxruntime_library())
    # leaks are errors too; ONNX Runtime is not instrumented, but what it allocates passes ASan's malloc
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=23", "UBSAN_OPTIONS": "print_stacktrace=1"}  # fmt: skip
    cases = _damaged_copies(minilm_artifacts, tmp_path / "damaged")
    proc = subprocess.run([bad, minilm_artifacts, ort, *cases], capture_output=True, text=True, env=env)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report[-8000:]
    assert (
        "0 failure(s)" in proc.stdout
        and "ERROR: AddressSanitizer" not in report
        and "runtime error" not in report
    )
    assert proc.stdout.count("\nok open: damaged ") == len(cases), proc.stdout
    for line in proc.stdout.splitlines():  # every refusal says why in words
        if line.startswith("ok ") and "LEAP_ERR_" in line:
            assert len(line.split(": ", 2)[-1]) > 10, line
    assert "does not match its sha256" in proc.stdout and "is outside the vocabulary" in proc.stdout

    # the C++ example built with the sanitizers against the sanitized library: a valid run, then bad ids
    exe = _build_example(tmp_path / "build-san", f"-DLEAP_INCLUDE_DIR={native.header_dir()}", f"-DLEAP_LIBRARY={lib}", "-DLEAP_SANITIZE=ON")  # fmt: skip
    (tmp_path / "ids.txt").write_text("101 7592 2088 102\n101 102\n")
    env["LEAP_ORT_LIBRARY"] = ort
    proc = _run([exe, minilm_artifacts, tmp_path / "ids.txt", "--theta", "0.9"], env=env)
    assert len(proc.stdout.splitlines()) == 2
    (tmp_path / "bad.txt").write_text("101 99999999 102\n")
    proc = subprocess.run(
        [exe, minilm_artifacts, tmp_path / "bad.txt"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1, proc.stderr
    assert (
        "leap_run: LEAP_ERR_INPUT: input_ids row 0, position 1: id 99999999 is outside the vocabulary"
        in proc.stderr
    )
