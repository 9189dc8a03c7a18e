"""A gRPC client of leap_encoder for tests/test_triton.py, run with the Triton environment's Python (it has
tritonclient[grpc]; the project's environment need not). Reads a JSON list of requests
``{"texts": [...], "parameters": {...}}`` on stdin and writes one JSON answer per request on stdout:
``{"embedding": [[...]], "exit_layer": [...]}`` or ``{"error": "..."}``.

    python tests/triton_grpc_client.py 127.0.0.1:8001 [--clients 8] < requests.json
"""

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def ask(client, request: dict) -> dict:
    texts = np.array([t.encode() for t in request["texts"]], dtype=object).reshape(-1, 1)
    text = grpcclient.InferInput("TEXT", list(texts.shape), "BYTES")
    text.set_data_from_numpy(texts)
    try:
        result = client.infer("leap_encoder", [text], parameters=request.get("parameters") or None)
    except InferenceServerException as e:
        return {"error": e.message()}
    return {
        "embedding": result.as_numpy("EMBEDDING").tolist(),
        "exit_layer": result.as_numpy("EXIT_LAYER").reshape(-1).tolist(),
    }


def main() -> None:
    """``--clients N``: N threads, each with its own connection, share the requests; answers stay in order."""
    url = sys.argv[1]
    clients = int(sys.argv[sys.argv.index("--clients") + 1]) if "--clients" in sys.argv else 1
    requests = json.load(sys.stdin)
    local = threading.local()

    def one(request: dict) -> dict:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
        return ask(local.client, request)

    with ThreadPoolExecutor(clients) as pool:
        json.dump(list(pool.map(one, requests)), sys.stdout)


if __name__ == "__main__":
    main()
