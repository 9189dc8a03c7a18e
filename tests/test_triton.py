"""leap_encoder on a real tritonserver (2.51, from nvidia-pytriton), started here on 127.0.0.1 with free ports.

The server runs in the Triton environment (numpy < 2), made once by ``leap_export.triton.env.ensure_env`` at
``$LEAP_TRITON_ENV`` (the Makefile sets ``.venv-triton`` in the clone), else ``.venv-triton`` here; the tests
are skipped, with the reason, only where it cannot be made (no PyPI, a Python without a shared libpython).
Every server is stopped, with its whole process group, when its fixture ends, whether the tests passed or not.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from leap_export.triton.repository import MODEL_NAME, ServeOptions, write_repository

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the quick brown fox jumps over a lazy dog while seven tired sailors sing about distant harbours "
    "rain falls softly on old copper roofs and the market opens before dawn every single day"
).split()
pytestmark = pytest.mark.triton
THETAS = [None, 0.9999, 0.99995, 0.99999]  # the tiny model's scores sit near 1: these split its exits


def _env_path() -> Path:
    return Path(os.environ.get("LEAP_TRITON_ENV") or ROOT / ".venv-triton")


@pytest.fixture(scope="session")
def triton_env():
    from leap_export.errors import LeapError
    from leap_export.triton.env import ensure_env

    try:
        return ensure_env(_env_path(), quiet=True)
    except LeapError as e:
        if os.environ.get("CI"):  # CI installs everything: a missing server is a failure there, not a skip
            pytest.fail(f"the Triton server's environment could not be made: {e}")
        pytest.skip(f"the Triton server's environment cannot be made here: {e}")


@pytest.fixture(scope="module")
def server(triton_env, tiny_artifacts, tmp_path_factory):
    from leap_export.triton.server import TritonServer

    root = tmp_path_factory.mktemp("triton")
    options = ServeOptions(max_batch_size=32, max_queue_delay_us=20000, instances=2, shadow_rate=1.0)
    repo = write_repository(tiny_artifacts["bert"], root / "repo", options)
    server = TritonServer(repo, triton_env, log_path=root / "server.log")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        assert not _group_alive(server.process.pid), "a server process outlived stop()"


def _group_alive(pid: int) -> bool:
    from leap_export.triton.server import group_alive

    return group_alive(pid)


# -- clients ---------------------------------------------------------------------------------------------------


def infer(url: str, texts: list[str], params: dict | None = None) -> dict:
    """One HTTP/JSON request: {"embedding", "exit_layer"} or {"error", "status"}."""
    body = {"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}]}
    if params:
        body["parameters"] = params
    return _post(url, json.dumps(body).encode(), {"Content-Type": "application/json"})


def _post(url: str, data: bytes, headers: dict) -> dict:
    request = urllib.request.Request(f"{url}/v2/models/{MODEL_NAME}/infer", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            out = {o["name"]: o for o in json.loads(r.read())["outputs"]}
    except urllib.error.HTTPError as e:
        return {"error": json.loads(e.read()).get("error", ""), "status": e.code}
    n, dim = out["EMBEDDING"]["shape"]
    return {
        "embedding": np.asarray(out["EMBEDDING"]["data"], dtype=np.float32).reshape(n, dim),
        "exit_layer": out["EXIT_LAYER"]["data"],
        "exit_shape": out["EXIT_LAYER"]["shape"],
    }


def infer_binary(url: str, items: list[bytes]) -> dict:
    """Raw bytes in Triton's binary tensor extension (the JSON form cannot carry invalid UTF-8)."""
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "TEXT",
                    "shape": [len(items), 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return _post(url, header + raw, headers)


def metrics(server) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as r:
        text = r.read().decode()
    found = {}
    for name, labels, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, flags=re.M):
        found[(name, frozenset(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(value)
    return found


def metric(found: dict, name: str, **labels) -> float:
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 300)))


@pytest.fixture(scope="module")
def local(tiny_artifacts):
    """The local runtime under each theta the tests send: the reference every response is checked against."""
    from trt_runtime import EarlyExitEncoder

    art = tiny_artifacts["bert"]
    encoders = {t: EarlyExitEncoder(art) if t is None else EarlyExitEncoder(art, theta=t) for t in THETAS}
    return {**encoders, "full": EarlyExitEncoder(art, exits=False)}


def _check(answer: dict, texts: list[str], encoder) -> None:
    assert "error" not in answer, answer
    ref = encoder.encode_with_exits(texts)
    got = np.asarray(answer["embedding"], dtype=np.float32)
    assert got.shape == ref.embeddings.shape
    assert np.sum(got * ref.embeddings, axis=1).min() >= 0.99999
    assert list(answer["exit_layer"]) == ref.exit_layers.tolist()


# -- the tests -------------------------------------------------------------------------------------------------


def test_config_is_valid_for_tritons_own_schema(server, triton_env, tiny_artifacts):
    """config.pbtxt parses with the model_config protobuf that tritonclient ships, with the manifest's dims."""
    from trt_runtime import load_manifest

    code = (
        "import sys, json; from google.protobuf import text_format; "
        "from tritonclient.grpc import model_config_pb2 as mc; "
        "c = text_format.Parse(open(sys.argv[1]).read(), mc.ModelConfig()); "
        "print(json.dumps({'inputs': [[i.name, mc.DataType.Name(i.data_type), list(i.dims)] for i in c.input], "
        "'outputs': [[o.name, mc.DataType.Name(o.data_type), list(o.dims)] for o in c.output], "
        "'batch': c.max_batch_size, 'instances': c.instance_group[0].count, "
        "'delay': c.dynamic_batching.max_queue_delay_microseconds}))"
    )
    config = server.repository / MODEL_NAME / "config.pbtxt"
    proc = subprocess.run(
        [str(triton_env.python), "-c", code, str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    parsed = json.loads(proc.stdout)
    hidden = load_manifest(tiny_artifacts["bert"]).hidden_size
    assert parsed == {
        "inputs": [["TEXT", "TYPE_STRING", [1]]],
        "outputs": [["EMBEDDING", "TYPE_FP32", [hidden]], ["EXIT_LAYER", "TYPE_INT32", [1]]],
        "batch": 32,
        "instances": 2,
        "delay": 20000,
    }


def test_http_concurrent_mixed_lengths_and_thetas(server, local):
    """8 clients x 50 requests of 1-300 words and mixed thetas: every response is its own request's rows."""
    before = metrics(server)

    def client(seed: int) -> list[tuple]:
        rng = random.Random(seed)
        done = []
        for _ in range(50):
            texts = [_text(rng) for _ in range(rng.randint(1, 3))]
            theta = rng.choice(THETAS)
            answer = infer(server.http_url, texts, None if theta is None else {"theta": theta})
            done.append((texts, theta, answer))
        return done

    with ThreadPoolExecutor(8) as pool:
        results = [r for part in pool.map(client, range(8)) for r in part]
    assert len(results) == 400
    layers_by_theta: dict = {}
    for texts, theta, answer in results:
        _check(answer, texts, local[theta])
        assert answer["exit_shape"] == [len(texts), 1]
        layers_by_theta.setdefault(theta, set()).update(answer["exit_layer"])
    assert len(set().union(*layers_by_theta.values())) >= 2, "the thetas sent should give different exits"
    after = metrics(server)
    requests = metric(after, "nv_inference_request_success", model=MODEL_NAME) - metric(
        before, "nv_inference_request_success", model=MODEL_NAME
    )
    executions = metric(after, "nv_inference_exec_count", model=MODEL_NAME) - metric(
        before, "nv_inference_exec_count", model=MODEL_NAME
    )
    assert requests == 400
    assert executions < requests, "the dynamic batcher merged no requests into one execute()"


def test_grpc_concurrent_clients_match_the_local_runtime(server, triton_env, local):
    """8 gRPC clients share 80 requests of mixed lengths, thetas and full_depth; every answer is its own."""
    rng = random.Random(7)
    requests = []
    for i in range(80):
        params = (
            {"theta": rng.choice(THETAS[1:])} if i % 3 == 1 else {"full_depth": True} if i % 3 == 2 else {}
        )
        requests.append({"texts": [_text(rng) for _ in range(rng.randint(1, 3))], "parameters": params})
    requests.append({"texts": ["x"], "parameters": {"theta": 2.0}})
    proc = subprocess.run(
        [
            str(triton_env.python),
            str(ROOT / "tests" / "triton_grpc_client.py"),
            server.grpc_url,
            "--clients",
            "8",
        ],
        input=json.dumps(requests),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    assert len(answers) == len(requests)
    for request, answer in zip(requests[:-1], answers[:-1], strict=True):
        params = request["parameters"]
        if params.get("full_depth"):
            _check(answer, request["texts"], local["full"])
        else:
            _check(answer, request["texts"], local[params.get("theta")])
    assert "theta must be a number in (0, 1], got 2.0" in answers[-1]["error"]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda url: infer(url, ["a"], {"theta": 2.0}), "theta must be a number in (0, 1], got 2.0"),
        (lambda url: infer(url, ["a"], {"theta": "high"}), "theta must be a number"),
        (lambda url: infer(url, ["a"], {"min_layer": 99}), "min_layer 99 exceeds the model's 4 layers"),
        (lambda url: infer(url, ["a"], {"full_depth": True, "theta": 0.9}), "drop them, or drop full_depth"),
        (lambda url: infer(url, ["a"], {"thetta": 0.9}), "unknown request parameter 'thetta'"),
        (lambda url: infer_binary(url, [b"fine", b"\xff\xfe"]), "text #1 is not valid UTF-8"),
        (lambda url: infer(url, ["a"] * 10_000), "batch-size must be <= 32"),
        (
            lambda url: _post(
                url,
                json.dumps(
                    {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "INT32", "data": [1]}]}
                ).encode(),
                {},
            ),
            "expects 'BYTES'",
        ),
        (
            lambda url: _post(
                url,
                json.dumps(
                    {"inputs": [{"name": "TEXT", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}
                ).encode(),
                {},
            ),
            "shape",
        ),
        (
            lambda url: _post(url, json.dumps({"inputs": []}).encode(), {}),
            "expected 1 inputs but got 0",
        ),
    ],
    ids=[
        "theta-2",
        "theta-text",
        "min-layer-99",
        "full-depth-and-theta",
        "unknown-parameter",
        "non-utf8",
        "over-max-batch",
        "wrong-dtype",
        "wrong-shape",
        "missing-input",
    ],
)
def test_malformed_requests_get_a_clear_error_and_the_server_keeps_serving(server, local, make, message):
    answer = make(server.http_url)
    assert "error" in answer, answer
    assert answer["status"] == 400 and message in answer["error"], answer
    _check(infer(server.http_url, ["still serving?"]), ["still serving?"], local[None])


def test_an_empty_batch_is_refused_by_triton(server, local):
    answer = infer(server.http_url, [])
    assert answer["status"] == 400 and "expected 1 string elements" in answer["error"], answer
    _check(infer(server.http_url, ["still serving?"]), ["still serving?"], local[None])


def test_a_10mb_text_is_truncated_and_served(server, local):
    text = "word " * (2 * 1024 * 1024)  # 10 MiB
    started = time.perf_counter()
    answer = infer(server.http_url, [text])
    seconds = time.perf_counter() - started
    # truncated at max_seq_length tokens, it is the same text as its first 200 words (the reference is quick)
    _check(answer, ["word " * 200], local[None])
    assert seconds < 5, f"a 10 MB text took {seconds:.1f} s (tokenised whole: about 10 s on 2 cores)"


def test_metrics_count_what_was_sent(server):
    """Exits per layer, scores per layer, exit-layer histogram, shadow cosines and E[layers] on /metrics."""
    before = metrics(server)
    rng = random.Random(11)
    sent, layers = 0, []
    for theta in (None, 0.99999, None):
        texts = [_text(rng) for _ in range(5)]
        answer = infer(server.http_url, texts, None if theta is None else {"theta": theta})
        sent += len(texts)
        layers += answer["exit_layer"]
    infer(server.http_url, ["a"], {"theta": 7})  # refused: counts nowhere
    after = metrics(server)

    def delta(name, **labels):
        return metric(after, name, model=MODEL_NAME, **labels) - metric(
            before, name, model=MODEL_NAME, **labels
        )

    for layer in (2, 3, 4):
        assert delta("leap_exits_total", layer=layer) == layers.count(layer)
    assert delta("leap_exit_layer_count") == sent
    assert delta("leap_exit_layer_sum") == sum(layers)
    assert delta("leap_exit_score_count", layer=2) == sent  # every text runs the first segment
    assert delta("leap_shadow_cosine_count") == sent  # shadow_rate 1.0
    assert delta("leap_shadow_cosine_bucket", le="+Inf") == sent
    # Triton's own series that deploy/kubernetes scales and alerts on
    assert delta("nv_inference_request_success") == 4 and delta("nv_inference_queue_duration_us") > 0
    # E[layers]: from the counters every instance shares
    counts = {layer: metric(after, "leap_exits_total", model=MODEL_NAME, layer=layer) for layer in (2, 3, 4)}
    expected = sum(k * v for k, v in counts.items()) / sum(counts.values())
    assert metric(after, "leap_expected_layers", model=MODEL_NAME) == pytest.approx(expected, rel=1e-9)


# -- leap-export serve -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_runs_until_stopped_and_leaves_nothing(triton_env, tiny_artifacts, local, sig):
    cmd = [
        sys.executable,
        "-m",
        "leap_export.cli",
        "serve",
        str(tiny_artifacts["bert"]),
        "--env",
        str(triton_env.root),
    ]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    out = []
    try:
        deadline = time.monotonic() + 180
        while not out or not out[-1].startswith("Ctrl-C stops it"):
            assert time.monotonic() < deadline and proc.poll() is None, (out, proc.stderr.read())
            try:
                out.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        text = "".join(out)
        pid = int(re.search(r"tritonserver pid (\d+)", text)[1])
        assert "listening on 127.0.0.1 only (--host 0.0.0.0" in text
        http = re.search(r"HTTP +(http://\S+)", text)[1]
        assert re.search(r"metrics +http://127\.0\.0\.1:\d+/metrics", text)
        curl = re.search(r"try: +(curl .*)$", text, flags=re.M)[1]
        assert json.loads(
            subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60).stdout
        )["outputs"]
        _check(infer(http, ["served by leap-export serve"]), ["served by leap-export serve"], local[None])
        proc.send_signal(sig)
        assert proc.wait(60) == (143 if sig == signal.SIGTERM else 130)
        assert not _group_alive(pid), "tritonserver or a stub outlived leap-export serve"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_packaged_minilm_served_equals_the_local_runtime(triton_env, tmp_path_factory):
    """The stock all-MiniLM-L6-v2 (exits off by default: its build fails the exit check): served at its default
    and at per-request thetas that turn exits on, from 4 concurrent clients, equal to the local runtime."""
    from leap_export.export import build
    from leap_export.textio import sample_sentences
    from leap_export.triton.server import TritonServer
    from trt_runtime import EarlyExitEncoder

    root = tmp_path_factory.mktemp("triton-minilm")
    art = build("minilm-l6", root / "art", progress=False)
    repo = write_repository(art, root / "repo", ServeOptions(max_queue_delay_us=20000))
    thetas = [None, 0.9, 0.97]
    local = {t: EarlyExitEncoder(art) if t is None else EarlyExitEncoder(art, theta=t) for t in thetas}
    sentences = sample_sentences()

    def client(seed: int) -> list[tuple]:
        rng = random.Random(seed)
        done = []
        for _ in range(10):
            texts = [
                rng.choice(sentences) if rng.random() < 0.7 else _text(rng) for _ in range(rng.randint(1, 4))
            ]
            theta = rng.choice(thetas)
            done.append(
                (texts, theta, infer(server.http_url, texts, None if theta is None else {"theta": theta}))
            )
        return done

    server = TritonServer(repo, triton_env, log_path=root / "server.log")
    try:
        server.start()
        with ThreadPoolExecutor(4) as pool:
            results = [r for part in pool.map(client, range(4)) for r in part]
    finally:
        server.stop()
    layers = set()
    for texts, theta, answer in results:
        _check(answer, texts, local[theta])
        layers.update(answer["exit_layer"])
    assert len(layers) >= 2, "the thetas sent should make some texts exit early"


# -- the BLS layout ----------------------------------------------------------------------------------------------

PARSE_CONFIGS = (
    "import sys, json; from google.protobuf import text_format; "
    "from tritonclient.grpc import model_config_pb2 as mc; out = {}\n"
    "for path in sys.argv[1:]:\n"
    "    c = text_format.Parse(open(path).read(), mc.ModelConfig())\n"
    "    out[c.name] = {'platform': c.platform, 'backend': c.backend, 'batch': c.max_batch_size, "
    "'cc': dict(c.cc_model_filenames), 'kind': mc.ModelInstanceGroup.Kind.Name(c.instance_group[0].kind), "
    "'inputs': [[i.name, mc.DataType.Name(i.data_type), list(i.dims)] for i in c.input], "
    "'outputs': [[o.name, mc.DataType.Name(o.data_type), list(o.dims)] for o in c.output]}\n"
    "print(json.dumps(out))"
)


def _parse_configs(triton_env, paths) -> dict:
    proc = subprocess.run(
        [str(triton_env.python), "-c", PARSE_CONFIGS, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _triton_dims(shape, hidden) -> list[int]:
    return [hidden if d == "hidden" else -1 if d in ("batch", "sequence") else int(d) for d in shape]


def test_bls_configs_are_valid_for_tritons_own_schema(triton_env, tiny_artifacts, tmp_path):
    """onnxruntime_onnx segment models (CPU build) and tensorrt_plan ones (a build with engines for two GPUs):
    Triton's ModelConfig protobuf parses them, and their I/O is the manifest's, segment by segment."""
    from dataclasses import replace

    from leap_export.triton.repository import segment_models
    from trt_runtime import load_manifest

    manifest = load_manifest(tiny_artifacts["bert"])
    hidden = manifest.hidden_size
    repo = write_repository(manifest.root, tmp_path / "bls", ServeOptions(layout="bls"))
    onnx = _parse_configs(triton_env, sorted(repo.glob("*/config.pbtxt")))
    engines = {
        f"trt-sm{cc.replace('.', '')}": {
            **manifest.data["variants"]["fp32"],
            "backend": "tensorrt",
            "precision": "fp16",
            "segments": [{"file": f"trt/sm{cc}/seg_{i:02d}.plan", "sha256": "0"} for i in range(3)],
            "tensorrt": {"version": "10.16.0", "compute_capability": cc},
        }
        for cc in ("8.9", "9.0")
    }
    with_engines = replace(
        manifest, data={**manifest.data, "variants": {**manifest.data["variants"], **engines}}
    )
    configs = tmp_path / "trt"
    for name, config, files in segment_models(with_engines, ServeOptions(layout="bls")):
        (configs / name).mkdir(parents=True)
        (configs / name / "config.pbtxt").write_text(config)
        assert set(files) == {"model_sm89.plan", "model_sm90.plan"}
    plans = _parse_configs(triton_env, sorted(configs.glob("*/config.pbtxt")))
    assert onnx["leap_encoder"]["backend"] == "python"
    for seg, spec in zip(manifest.segments, manifest.data["segments"], strict=True):
        name = f"leap_segment_{seg.index}"
        io = {
            "inputs": [
                [
                    t["name"],
                    "TYPE_FP32" if t["dtype"] == "float32" else "TYPE_INT32",
                    _triton_dims(t["shape"], hidden),
                ]
                for t in spec["inputs"]
            ],
            "outputs": [
                [
                    t["name"],
                    "TYPE_FP32" if t["dtype"] == "float32" else "TYPE_INT32",
                    _triton_dims(t["shape"], hidden),
                ]
                for t in spec["outputs"]
            ],
        }
        assert onnx[name] == {
            "platform": "onnxruntime_onnx",
            "backend": "",
            "batch": 0,
            "cc": {},
            "kind": "KIND_GPU",
            **io,
        }
        assert plans[name] == {
            "platform": "tensorrt_plan",
            "backend": "",
            "batch": 0,
            "cc": {"8.9": "model_sm89.plan", "9.0": "model_sm90.plan"},
            "kind": "KIND_GPU",
            **io,
        }
    assert len(onnx) == len(manifest.segments) + 1


def test_bls_orchestrator_serves_the_local_runtimes_rows(triton_env, tiny_artifacts, local, tmp_path):
    """--layout bls-python on the real server: the orchestrator's loop over segment models gives the local
    runtime's embeddings and exits, concurrently, and a segment model sees only the rows still running."""
    from leap_export.triton.server import TritonServer

    repo = write_repository(
        tiny_artifacts["bert"], tmp_path / "repo", ServeOptions(layout="bls-python", max_queue_delay_us=20000)
    )
    server = TritonServer(repo, triton_env, log_path=tmp_path / "server.log")

    def client(seed: int) -> list[tuple]:
        rng = random.Random(seed)
        done = []
        for _ in range(10):
            texts = [_text(rng) for _ in range(rng.randint(1, 3))]
            theta = rng.choice(THETAS)
            done.append(
                (texts, theta, infer(server.http_url, texts, None if theta is None else {"theta": theta}))
            )
        return done

    try:
        server.start()
        with ThreadPoolExecutor(4) as pool:
            results = [r for part in pool.map(client, range(4)) for r in part]
        bad = infer(server.http_url, ["a"], {"theta": 2.0})
        found = metrics(server)
    finally:
        server.stop()
        assert not _group_alive(server.process.pid)
    for texts, theta, answer in results:
        _check(answer, texts, local[theta])
    assert "theta must be a number in (0, 1]" in bad["error"]
    calls = [metric(found, "nv_inference_request_success", model=f"leap_segment_{i}") for i in range(3)]
    executions = metric(found, "nv_inference_exec_count", model=MODEL_NAME)
    # one call of the first segment per early-exit batch: one per policy in each execute(), fewer than requests
    assert executions <= calls[0] < len(results)
    assert calls[2] < calls[0]  # batches whose rows all exited never reached the last segment
    sent = sum(len(texts) for texts, _, _ in results)
    assert metric(found, "leap_exit_layer_count", model=MODEL_NAME) == sent


def test_serve_bench_script_measures_both_settings(triton_env, tiny_artifacts, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), str(tiny_artifacts["bert"])]
    cmd += ["--concurrency", "1,3", "--requests", "12", "--env", str(triton_env.root), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    runs = {(r["setting"], r["concurrency"]): r for r in result["runs"]}
    assert set(runs) == {(s, c) for s in ("early exit", "full depth") for c in (1, 3)}
    for run in runs.values():
        assert run["requests"] == 12 and run["texts_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
    for label in ("rss_idle_kib", "rss_peak_kib"):
        names = {key.split(" ", 2)[2] for key in result[label]}  # "tritonserver: PID NAME"
        assert "tritonserver" in names and any(n.startswith("triton_python") for n in names), result[label]


@pytest.fixture(scope="session")
def infinity_env() -> Path:
    """infinity-emb's own environment (`make infinity`; LEAP_INFINITY_ENV to point elsewhere)."""
    env = Path(os.environ.get("LEAP_INFINITY_ENV") or ROOT / ".venv-infinity")
    if not (env / "bin" / "infinity_emb").is_file():
        if os.environ.get("CI"):  # CI makes it (make test): missing there is a failure, not a skip
            pytest.fail(f"no infinity-emb environment at {env}; `make infinity` makes it")
        pytest.skip(f"no infinity-emb environment at {env}; `make infinity` makes it")
    return env


def test_serve_bench_script_times_infinity_emb_serving_the_same_model(
    triton_env, infinity_env, tiny_artifacts, tmp_path
):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), str(tiny_artifacts["bert"])]
    cmd += ["--concurrency", "2", "--requests", "10", "--env", str(triton_env.root)]
    cmd += ["--infinity", str(infinity_env), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["infinity"]["min_cosine_full_depth"] >= 0.999  # the peer served the very same model
    runs = {r["setting"]: r for r in result["runs"]}
    assert set(runs) == {"early exit", "full depth", "infinity-emb"}
    assert all(r["requests"] == 10 and r["texts_per_s"] > 0 for r in runs.values())
    ratio = result["ratios"]["infinity-emb c=2"]
    assert ratio["throughput"] == pytest.approx(
        runs["early exit"]["texts_per_s"] / runs["infinity-emb"]["texts_per_s"]
    )
    assert any(k.startswith("infinity-emb: ") for k in result["rss_peak_kib"])
    assert "early exit vs infinity-emb" in proc.stdout
    # the peer's server is gone with the script
    assert not any(
        "infinity_emb" in p.read_text(errors="replace") for p in Path("/proc").glob("[0-9]*/cmdline")
    )


def test_serve_bench_refuses_a_peer_serving_another_model(
    triton_env, infinity_env, tiny_artifacts, tiny_models, tmp_path
):
    base = [sys.executable, str(ROOT / "benchmarks" / "serve_bench.py"), str(tiny_artifacts["bert"])]
    base += [
        "--concurrency",
        "1",
        "--requests",
        "2",
        "--env",
        str(triton_env.root),
        "--infinity",
        str(infinity_env),
    ]
    proc = subprocess.run(
        base + ["--infinity-model", str(tiny_models["mpnet"])], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0 and "does not serve the same model" in proc.stderr, proc.stdout + proc.stderr
    proc = subprocess.run(
        base + ["--infinity-model", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0 and "sentence-transformers folder" in proc.stderr, proc.stdout + proc.stderr
