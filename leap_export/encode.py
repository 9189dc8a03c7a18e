"""File-to-file encoding for the CLI: sentences.txt -> emb.npy (+ exit layers JSON), written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from leap_export.textio import read_lines
from trt_runtime.manifest import write_json_atomic


def encode_file(artifacts, input_path, output, *, theta=None, min_layer=None, batch_size=32, exits=True,
                exit_layers_path=None, variant=None, threads=None) -> dict:
    from trt_runtime.encoder import EarlyExitEncoder

    sentences = read_lines(input_path)
    encoder = EarlyExitEncoder(artifacts, theta=theta, min_layer=min_layer, exits=exits, variant=variant,
                               threads=threads)
    result = encoder.encode_with_exits(sentences, batch_size=batch_size, show_progress_bar=None)
    save_npy_atomic(Path(output), result.embeddings)
    stats = encoder.stats.as_dict()
    if exit_layers_path:
        write_json_atomic(Path(exit_layers_path), {
            "policy": encoder.policy.to_dict(),
            "exit_layers": result.exit_layers.tolist(),
            "stats": stats,
        })
    return stats


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
