"""Served throughput and latency: leap_encoder with early exit against the same server at full depth, and
against infinity-emb serving the same model.

    python benchmarks/serve_bench.py ARTIFACTS [--sentences FILE] [--concurrency 1,8,32] [--requests 200]
        [--texts-per-request 1] [--instances 1] [--max-batch-size 32] [--max-queue-delay-us 2000]
        [--env PATH] [--infinity ENV [--infinity-model DIR]] [--json OUT.json]

Starts one tritonserver (``leap-export serve``'s machinery: a temporary repository, the server's own Python
environment) on free ports of 127.0.0.1 and drives it over HTTP from ``concurrency`` client threads, each on
its own keep-alive connection, every request ``--texts-per-request`` texts drawn in turn from the sentences.
Both settings run on the same server, one after the other at each concurrency, in rotating order: early
exit (the served policy) and full depth (the request parameter ``full_depth``), so they share the process,
its warm caches and the dynamic batcher. Reported per setting and concurrency: texts/s, p50 and p99 request
latency, and the server's resident memory (the server and its model processes, each) at idle and at its
peak under the highest concurrency. The clients run on the same machine and take CPU from the server, alike
for every setting.

``--infinity ENV`` adds a third setting: infinity-emb (``ENV/bin/infinity_emb``, an environment of its own:
``make infinity``) serving the sentence-transformers folder the build was made from (``--infinity-model`` for
another) with its torch engine on the CPU, its batch size the server's ``--max-batch-size``, started beside
tritonserver on 127.0.0.1 and driven by the same clients in the same rotation (its OpenAI-style
``/embeddings`` route). Before timing, the same texts go to both servers at full depth and the script stops
unless every embedding agrees (cosine >= 0.999): the peer must be serving the same model.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_rss(group: int) -> dict[str, int]:
    """Resident set (KiB) of every process of a process group, by pid and name."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        if int(fields[2]) == group:
            out[f"{stat.parent.name} {name}"] = _rss_kib(int(stat.parent.name))
    return out


def triton_request(batch: list[str], parameters: dict | None) -> tuple[str, str]:
    body = {"inputs": [{"name": "TEXT", "shape": [len(batch), 1], "datatype": "BYTES", "data": batch}]}
    if parameters:
        body["parameters"] = parameters
    return "/v2/models/leap_encoder/infer", json.dumps(body)


def infinity_request(batch: list[str], model: str) -> tuple[str, str]:
    return "/embeddings", json.dumps({"model": model, "input": batch})


def post(host: str, port: int, path: str, body: str) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"POST {path} on port {port}: HTTP {response.status}: {data[:300]!r}")
        return json.loads(data)
    finally:
        conn.close()


class InfinityServer:
    """infinity-emb's ``v2`` server from its own environment, in a process group of its own, stopped with it."""

    MODEL = "peer"

    def __init__(self, env: Path, model_dir: str, batch_size: int, log_path: Path) -> None:
        self.program = Path(env) / "bin" / "infinity_emb"
        if not self.program.is_file():
            raise SystemExit(
                f"--infinity {env}: no bin/infinity_emb there; make the environment with `make infinity`"
            )
        if not Path(model_dir, "config.json").is_file():
            raise SystemExit(
                f"infinity-emb needs the sentence-transformers folder of the model; {model_dir} has no "
                "config.json: pass --infinity-model DIR"
            )
        self.model_dir, self.batch_size, self.log_path = model_dir, batch_size, log_path
        self.process: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> InfinityServer:
        import os
        import urllib.request

        from leap_export.triton.server import free_ports

        self.port = free_ports(n=1)[0]
        args = [str(self.program), "v2", "--model-id", self.model_dir, "--served-model-name", self.MODEL,
                "--engine", "torch", "--device", "cpu", "--batch-size", str(self.batch_size),
                "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        environ = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environ,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.__exit__()
                tail = self.log_path.read_text(errors="replace").splitlines()[-5:]
                raise SystemExit(f"infinity-emb exited while starting: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise SystemExit("infinity-emb was not ready within 300 s")

    def __exit__(self, *exc) -> None:
        import os
        import signal

        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(15)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that outlived the server
        except ProcessLookupError:
            pass
        self.process.wait()


def same_model(triton_port: int, infinity_port: int, texts: list[str]) -> float:
    """The least cosine between the two servers' full-depth embeddings of ``texts``."""
    import numpy as np

    path, body = triton_request(texts, {"full_depth": True})
    ours = post("127.0.0.1", triton_port, path, body)
    out = next(o for o in ours["outputs"] if o["name"] == "EMBEDDING")
    a = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
    path, body = infinity_request(texts, InfinityServer.MODEL)
    peer = post("127.0.0.1", infinity_port, path, body)
    b = np.asarray([d["embedding"] for d in sorted(peer["data"], key=lambda d: d["index"])], dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def run_load(host, port, payloads, concurrency: int, requests: int, request):
    """``requests`` requests from ``concurrency`` threads, each body from ``request(texts)``: (wall seconds,
    latencies, texts served)."""
    latencies: list[float] = []
    texts = [0]
    lock = threading.Lock()
    counter = iter(range(requests))
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=300)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                batch = payloads[i % len(payloads)]
                path, body = request(batch)
                t0 = time.perf_counter()
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - t0
                if response.status != 200:
                    errors.append(data.decode(errors="replace"))
                    return
                with lock:
                    latencies.append(elapsed)
                    texts[0] += len(batch)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"the server refused a request: {errors[0]}")
    return time.perf_counter() - start, latencies, texts[0]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _version(env: Path, package: str) -> str | None:
    found = sorted(env.glob(f"lib/python*/site-packages/{package}-*.dist-info"))
    return found[-1].name.removesuffix(".dist-info").split("-")[1] if found else None


def _ratios(runs: list[dict]) -> dict:
    """Early exit's throughput over each other setting's, and its p99 over theirs, at each concurrency."""
    by = {(r["setting"], r["concurrency"]): r for r in runs}
    out: dict = {"lines": []}
    for (name, c), row in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ours = by.get(("early exit", c))
        if name == "early exit" or ours is None:
            continue
        ratio = {
            "throughput": ours["texts_per_s"] / row["texts_per_s"],
            "p99": ours["p99_ms"] / row["p99_ms"],
            "p50": ours["p50_ms"] / row["p50_ms"],
        }
        out[f"{name} c={c}"] = ratio
        out["lines"].append(
            f"early exit vs {name:<12} c={c:<3} throughput {ratio['throughput']:.2f}x  p50 {ratio['p50']:.2f}x"
            f"  p99 {ratio['p99']:.2f}x (below 1: lower latency)"
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts")
    parser.add_argument(
        "--sentences", help="UTF-8 file, one text per line (default: the built-in sample set)"
    )
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=200, help="requests per setting and concurrency")
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument(
        "--env", default=None, help="the server's Python environment (default: leap-export's)"
    )
    parser.add_argument(
        "--infinity", default=None, help="an environment with infinity-emb (`make infinity`): time it too"
    )
    parser.add_argument(
        "--infinity-model",
        default=None,
        help="the model folder infinity-emb serves (default: the one the build was made from)",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not concurrencies or min(concurrencies) < 1 or args.requests < 1 or args.texts_per_request < 1:
        parser.error("--concurrency, --requests and --texts-per-request take integers >= 1")

    from leap_export.textio import read_lines, sample_sentences
    from leap_export.triton.env import ensure_env
    from leap_export.triton.repository import ServeOptions, write_repository
    from leap_export.triton.server import TritonServer

    sentences = read_lines(args.sentences) if args.sentences else sample_sentences()
    k = args.texts_per_request
    payloads = [[sentences[(i * k + j) % len(sentences)] for j in range(k)] for i in range(len(sentences))]
    options = ServeOptions(args.max_batch_size, args.max_queue_delay_us, args.instances)
    results = {"artifacts": str(args.artifacts), "options": vars(args), "runs": []}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leap-serve-bench-")))
        repo = write_repository(args.artifacts, tmp / "repository", options)
        server = stack.enter_context(TritonServer(repo, ensure_env(args.env), log_path=tmp / "server.log"))
        host = "127.0.0.1"
        port = server.ports["http"]
        settings = {
            "early exit": (port, lambda b: triton_request(b, None)),
            "full depth": (port, lambda b: triton_request(b, {"full_depth": True})),
        }
        groups = {"tritonserver": server.process.pid}
        if args.infinity:
            from trt_runtime.manifest import load_manifest

            source = load_manifest(args.artifacts, check_files=False).source
            model_dir = args.infinity_model or source.get("path", "")
            peer = stack.enter_context(
                InfinityServer(Path(args.infinity), model_dir, args.max_batch_size, tmp / "infinity.log")
            )
            settings["infinity-emb"] = (peer.port, lambda b: infinity_request(b, InfinityServer.MODEL))
            groups["infinity-emb"] = peer.process.pid
            results["infinity"] = {
                "model": model_dir,
                "version": _version(Path(args.infinity), "infinity_emb"),
            }
            agreement = same_model(port, peer.port, sentences[:32])
            results["infinity"]["min_cosine_full_depth"] = agreement
            print(f"infinity-emb vs leap_encoder at full depth: least cosine {agreement:.6f} on 32 texts")
            if agreement < 0.999:
                raise SystemExit(
                    f"infinity-emb's embeddings differ from leap_encoder's at full depth (least cosine "
                    f"{agreement:.4f} < 0.999): it does not serve the same model; pass --infinity-model"
                )
        for port_, request in settings.values():  # warm-up: every padded shape the sentences make
            run_load(host, port_, payloads, 4, len(payloads), request)

        def rss() -> dict[str, int]:
            return {f"{name}: {k}": v for name, g in groups.items() for k, v in group_rss(g).items()}

        results["rss_idle_kib"] = rss()
        peak: dict[str, int] = {}
        names = list(settings)
        for i, concurrency in enumerate(concurrencies):
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
            for name in order:
                port_, request = settings[name]
                stop = threading.Event()

                def sample(stop=stop) -> None:
                    while True:
                        for key, kib in rss().items():
                            peak[key] = max(peak.get(key, 0), kib)
                        if stop.wait(0.1):
                            return

                sampler = threading.Thread(target=sample)
                if concurrency == max(concurrencies):
                    sampler.start()
                wall, latencies, texts = run_load(host, port_, payloads, concurrency, args.requests, request)
                stop.set()
                if sampler.is_alive():
                    sampler.join()
                row = {
                    "setting": name,
                    "concurrency": concurrency,
                    "texts_per_s": texts / wall,
                    "p50_ms": 1000 * statistics.median(latencies),
                    "p99_ms": 1000 * _percentile(latencies, 0.99),
                    "requests": len(latencies),
                }
                results["runs"].append(row)
                print(
                    f"{name:>12}  c={concurrency:<3} {row['texts_per_s']:8.1f} texts/s  p50 {row['p50_ms']:7.1f} ms"
                    f"  p99 {row['p99_ms']:7.1f} ms",
                    flush=True,
                )
        results["rss_peak_kib"] = peak
    results["ratios"] = _ratios(results["runs"])
    for line in results["ratios"]["lines"]:
        print(line)
    for label in ("rss_idle_kib", "rss_peak_kib"):
        total = sum(results[label].values()) / 1024
        parts = ", ".join(
            f"{k.split(' ', 2)[0]} {k.split(' ', 2)[2]} {v / 1024:.0f}"
            for k, v in sorted(results[label].items())
        )
        print(f"{label[4:8]} resident set: {total:.0f} MiB ({parts})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
