"""File-to-file encoding for the CLI: sentences.txt -> emb.npy (+ exit layers JSON), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leap_export.textio import read_lines
from trt_runtime.fileio import atomic_write, write_json_atomic


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
    atomic_write(path, lambda f: np.save(f, array))
