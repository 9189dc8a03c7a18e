"""One segment graph of a leap-export build, served by the Python backend on ONNX Runtime (CPU).

Written by ``leap-export triton --layout bls-python`` (do not edit; regenerate): the BLS layout's segment models
for a server without the onnxruntime backend (the tritonserver that nvidia-pytriton ships has the Python
backend only). The graph, the tensor names and types are those of ``--layout bls``'s ``onnxruntime_onnx``
models; only the backend differs. The orchestrator calls one segment at a time, so each session may use
every CPU, without spinning threads that would fight the next segment's process for the cores.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        self.session = ort.InferenceSession(
            os.path.join(HERE, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs
            }
            values = self.session.run(self.outputs, feeds)
            tensors = [
                pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in zip(self.outputs, values, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
