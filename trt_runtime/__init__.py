"""trt_runtime: the deployable half. numpy, tokenizers, onnxruntime; never torch.

Loads a leap-export artifact folder, runs its segments in order and stops each sample as soon as
its embedding has converged, compacting the batch as samples leave.
"""

from trt_runtime.errors import ArtifactError, RuntimeInputError
from trt_runtime.manifest import Manifest, load_manifest
from trt_runtime.policy import ExitPolicy

__all__ = [
    "ArtifactError",
    "RuntimeInputError",
    "Manifest",
    "load_manifest",
    "ExitPolicy",
    "EarlyExitEncoder",
    "ort_session_options",
]
__version__ = "0.1.0"


def __getattr__(name):  # the encoder pulls in onnxruntime: import it only when asked for
    if name == "EarlyExitEncoder":
        from trt_runtime.encoder import EarlyExitEncoder

        return EarlyExitEncoder
    if name == "ort_session_options":  # for other ONNX Runtime sessions in a process that runs the encoder
        from trt_runtime.runners import ort_session_options

        return ort_session_options
    raise AttributeError(name)
