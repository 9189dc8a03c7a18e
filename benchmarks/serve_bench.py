"""Served throughput and latency: leap_encoder with early exit against the same server at full depth.

    python benchmarks/serve_bench.py ARTIFACTS [--sentences FILE] [--concurrency 1,8,32] [--requests 200]
        [--texts-per-request 1] [--instances 1] [--max-batch-size 32] [--max-queue-delay-us 2000]
        [--env PATH] [--json OUT.json]

Starts one tritonserver (``leap-export serve``'s machinery: a temporary repository, the server's own Python
environment) on free ports of 127.0.0.1 and drives it over HTTP from ``concurrency`` client threads, each on
its own keep-alive connection, every request ``--texts-per-request`` texts drawn in turn from the sentences.
Both settings run on the same server, one after the other at each concurrency, in alternating order: early
exit (the served policy) and full depth (the request parameter ``full_depth``), so they share the process,
its warm caches and the dynamic batcher. Reported per setting and concurrency: texts/s, p50 and p99 request
latency, and the server's resident memory (the server and its model processes, each) at idle and at its
peak under the highest concurrency. The clients run on the same machine and take CPU from the server, alike
for both settings.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
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


def run_load(host, port, payloads, concurrency: int, requests: int, parameters: dict | None):
    """``requests`` requests from ``concurrency`` threads: (wall seconds, latencies, texts served)."""
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
                body = {
                    "inputs": [{"name": "TEXT", "shape": [len(batch), 1], "datatype": "BYTES", "data": batch}]
                }
                if parameters:
                    body["parameters"] = parameters
                t0 = time.perf_counter()
                conn.request("POST", "/v2/models/leap_encoder/infer", json.dumps(body))
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
    settings = {"early exit": None, "full depth": {"full_depth": True}}
    results = {"artifacts": str(args.artifacts), "options": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="leap-serve-bench-") as tmp:
        repo = write_repository(args.artifacts, Path(tmp) / "repository", options)
        with TritonServer(repo, ensure_env(args.env), log_path=Path(tmp) / "server.log") as server:
            host, port = "127.0.0.1", server.ports["http"]
            for params in settings.values():  # warm-up: every padded shape the sentences make
                run_load(host, port, payloads, 4, len(payloads), params)
            results["rss_idle_kib"] = group_rss(server.process.pid)
            peak: dict[str, int] = {}
            for i, concurrency in enumerate(concurrencies):
                order = list(settings.items()) if i % 2 == 0 else list(settings.items())[::-1]
                for name, params in order:
                    stop = threading.Event()

                    def sample(stop=stop) -> None:
                        while True:
                            for key, kib in group_rss(server.process.pid).items():
                                peak[key] = max(peak.get(key, 0), kib)
                            if stop.wait(0.1):
                                return

                    sampler = threading.Thread(target=sample)
                    if concurrency == max(concurrencies):
                        sampler.start()
                    wall, latencies, texts = run_load(
                        host, port, payloads, concurrency, args.requests, params
                    )
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
                        f"{name:>10}  c={concurrency:<3} {row['texts_per_s']:8.1f} texts/s  p50 {row['p50_ms']:7.1f} ms"
                        f"  p99 {row['p99_ms']:7.1f} ms",
                        flush=True,
                    )
            results["rss_peak_kib"] = peak
    for label in ("rss_idle_kib", "rss_peak_kib"):
        total = sum(results[label].values()) / 1024
        parts = ", ".join(f"{k.split(' ', 1)[1]} {v / 1024:.0f}" for k, v in sorted(results[label].items()))
        print(f"{label[4:8]} resident set: {total:.0f} MiB ({parts})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
