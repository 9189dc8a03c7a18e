"""leap_encoder: text in, early-exit sentence embeddings out, as a Triton Python-backend model.

Written by ``leap-export triton`` (do not edit; regenerate). Every request that one ``execute()`` call receives
(the dynamic batcher's batch) runs as ONE early-exit batch with compaction, whatever the text lengths
(``trt_runtime.serving.ServedEncoder``); each request gets its own rows back in its own order. Request
parameters ``theta``, ``min_layer``, ``full_depth`` override the policy for that request only; a bad value
fails that request alone with a one-line error.

Needs only numpy < 2 (numpy 2 crashes the Python backend's stub on BYTES inputs), tokenizers and onnxruntime
in the stub's environment: the runtime (``trt_runtime``) ships beside this file and is imported from here,
ahead of any other copy, so the server runs the runtime the repository was generated with.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path[:1] != [HERE]:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

SCORE_BUCKETS = [0.5, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999]
COSINE_BUCKETS = [0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 0.9999]


class PrometheusSink:
    """trt_runtime.serving.MetricsSink on the Python backend's custom metrics (Triton's /metrics).

    Families are shared by every instance of the model (Triton keys a metric by its name and labels), so the
    counters and histograms add up across instances, and E[layers] is computed from the shared counters.
    """

    def __init__(self, model: str, layers: list[int]) -> None:
        labels = {"model": model}
        counter, gauge, histogram = (
            pb_utils.MetricFamily.COUNTER,
            pb_utils.MetricFamily.GAUGE,
            pb_utils.MetricFamily.HISTOGRAM,
        )
        exits = pb_utils.MetricFamily(
            "leap_exits_total", "Texts whose embedding is the given layer's (their exit layer)", counter
        )
        scores = pb_utils.MetricFamily(
            "leap_exit_score", "Convergence score cos(p_l, p_l-k) of the texts that ran layer l", histogram
        )
        exit_layer = pb_utils.MetricFamily(
            "leap_exit_layer",
            "Exit layer of every text (its _sum / _count is E[layers] over any window)",
            histogram,
        )
        expected = pb_utils.MetricFamily(
            "leap_expected_layers", "Mean exit layer E[layers] of every text served since the start", gauge
        )
        shadow = pb_utils.MetricFamily(
            "leap_shadow_cosine",
            "cosine(served, full-depth) embedding of the texts sampled for a shadow run",
            histogram,
        )
        self._exits = {n: exits.Metric(labels={**labels, "layer": str(n)}) for n in layers}
        self._scores = {
            n: scores.Metric(labels={**labels, "layer": str(n)}, buckets=SCORE_BUCKETS) for n in layers
        }
        self._exit_layer = exit_layer.Metric(labels=labels, buckets=[float(n) for n in layers])
        self._expected = expected.Metric(labels=labels)
        self._shadow = shadow.Metric(labels=labels, buckets=COSINE_BUCKETS)
        self._families = (exits, scores, exit_layer, expected, shadow)  # a family must outlive its metrics

    def exits(self, layer, count):
        self._exits[layer].increment(count)
        for _ in range(count):
            self._exit_layer.observe(float(layer))
        counts = {n: m.value() for n, m in self._exits.items()}
        total = sum(counts.values())
        if total:
            self._expected.set(sum(n * c for n, c in counts.items()) / total)

    def scores(self, layer, scores):
        metric = self._scores[layer]
        for s in np.asarray(scores, dtype=float).tolist():
            metric.observe(s)

    def shadow(self, cosines):
        for c in np.asarray(cosines, dtype=float).tolist():
            self._shadow.observe(c)


class TritonPythonModel:
    def initialize(self, args):
        from trt_runtime import EarlyExitEncoder
        from trt_runtime.runners import default_threads
        from trt_runtime.serving import ServedEncoder

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        threads = params.get("threads", "auto")
        # every instance is its own process with its own ONNX Runtime pool: together they get the CPUs the
        # server may use (its affinity and container quota), not that many each (pools spinning on more
        # threads than cores run several times slower)
        threads = max(1, default_threads() // instances) if threads == "auto" else int(threads)
        segment_models = [m for m in params.get("segment_models", "").split(",") if m]
        backend, extra = params.get("backend") or "auto", {}
        # BLS: the segments are other models of this server, called with the rows still running
        if segment_models:
            from trt_runtime.backends.triton_bls import TritonBls

            backend, extra = TritonBls, {"check_files": False, "backend_options": {"models": segment_models}}
        self.encoder = EarlyExitEncoder(
            os.path.join(HERE, params.get("artifacts", "artifacts")),
            variant=params.get("variant") or None,
            backend=backend,
            threads=threads,
            **extra,
        )
        self.names = {
            "text": config["input"][0]["name"],
            "embedding": config["output"][0]["name"],
            "exit_layer": config["output"][1]["name"],
        }
        self.dtypes = {
            key: pb_utils.triton_string_to_numpy(config["output"][i]["data_type"])
            for i, key in ((0, "embedding"), (1, "exit_layer"))
        }
        sink = PrometheusSink(args["model_name"], self.encoder.manifest.boundaries)
        self.served = ServedEncoder(
            self.encoder, sink=sink, shadow_rate=float(params.get("shadow_rate", "0") or 0)
        )
        pb_utils.Logger.log_info(
            f"leap_encoder: {self.encoder.root.name}, backend {self.encoder.backend} ({self.encoder.backend_reason}), "
            f"variant {self.encoder.variant}, {threads} threads x {instances} instances, policy {self.encoder.policy}"
        )

    def execute(self, requests):
        batch = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, self.names["text"]).as_numpy()
            params = request.parameters()
            batch.append((texts.reshape(-1).tolist(), json.loads(params) if params else {}))
        responses = []
        for served in self.served.serve(batch):
            if served.error is not None:
                # the client's mistake, not the server's: HTTP 400 / gRPC INVALID_ARGUMENT
                error = pb_utils.TritonError(served.error, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor(
                            self.names["embedding"], served.embeddings.astype(self.dtypes["embedding"])
                        ),
                        pb_utils.Tensor(
                            self.names["exit_layer"],
                            served.exit_layers.astype(self.dtypes["exit_layer"])[:, None],
                        ),
                    ]
                )
            )
        return responses

    def finalize(self):
        self.encoder.close()
