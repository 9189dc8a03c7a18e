"""Teacher targets, computed once: every layer's normalised mean-pooled embedding, cached on disk.

CPU training then runs only the student. The cache is a float16 ``.npy`` (read back as a memmap)
``[Lt + 1, N, Ht]``, keyed by the teacher's weights hash, the sentences' hash and ``max_length``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leap_export.errors import LeapError
from leap_export.sources import ModelSource, cache_dir

CHUNK = 1024  # sentences per layer_embeddings call: bounds memory at [Lt + 1, CHUNK, Ht] float32


def sentences_sha256(sentences: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class TeacherTargets:
    path: Path
    key: str
    embeddings: np.ndarray  # float16 memmap [Lt + 1, N, Ht], unit rows
    num_layers: int
    hidden_size: int
    # The corpus indices of the cached rows, sorted, when the cache holds only the sentences a run draws
    # (None: row i is sentence i).
    corpus_rows: np.ndarray | None = None

    def batch(self, indices: np.ndarray):
        """float32 torch tensor ``[Lt + 1, B, Ht]`` for the given sentence (corpus) indices."""
        import torch

        indices = np.asarray(indices)
        if self.corpus_rows is not None:
            rows = np.minimum(np.searchsorted(self.corpus_rows, indices), len(self.corpus_rows) - 1)
            if np.any(self.corpus_rows[rows] != indices):
                raise LeapError(
                    "a batch drew a sentence the teacher cache does not hold (the schedule changed)"
                )
            indices = rows
        return torch.from_numpy(np.asarray(self.embeddings[:, indices], dtype=np.float32))


def cache_key(teacher: ModelSource, corpus_sha256: str, max_length: int) -> str:
    text = f"teacher={teacher.weights_sha256}\ncorpus={corpus_sha256}\nmax_length={max_length}\npool=mean-normalised"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def teacher_targets(
    teacher: ModelSource,
    sentences: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 64,
    folder: Path | None = None,
    show_progress_bar: bool = True,
    compute: bool = True,
    device: str | None = None,
) -> TeacherTargets:
    """Load the cached teacher embeddings for ``sentences``, computing them first if missing.

    ``compute=False`` only loads (DDP ranks other than 0 wait for rank 0 and then call this).
    """
    folder = Path(folder) if folder is not None else cache_dir() / "teacher"
    key = cache_key(teacher, sentences_sha256(sentences), max_length)
    path = folder / f"{key}.npy"
    if not path.is_file():
        if not compute:
            raise LeapError(f"teacher cache {path} is missing (rank 0 should have written it)")
        _compute(
            teacher,
            sentences,
            path,
            max_length=max_length,
            batch_size=batch_size,
            progress=show_progress_bar,
            device=device,
        )
    try:
        embeddings = np.load(path, mmap_mode="r")
    except (
        ValueError,
        OSError,
        EOFError,
    ) as e:  # truncated or overwritten: the file itself is written atomically
        raise LeapError(f"teacher cache {path} is unreadable ({e}); delete it (it is recomputed)") from e
    expected = (teacher.num_layers + 1, len(sentences), teacher.hidden_size)
    if embeddings.shape != expected:
        raise LeapError(f"teacher cache {path} has shape {embeddings.shape}, expected {expected}; delete it")
    return TeacherTargets(path, key, embeddings, teacher.num_layers, teacher.hidden_size)


class _OnDevice:
    """Runs the reference model on a GPU while ``layer_embeddings`` keeps its CPU tensors."""

    def __init__(self, model, device: str) -> None:
        self.model = model.to(device)
        self.device = device

    def __call__(self, output_hidden_states: bool = True, **batch):
        from types import SimpleNamespace

        out = self.model(**{k: v.to(self.device) for k, v in batch.items()}, output_hidden_states=True)
        return SimpleNamespace(hidden_states=tuple(h.float().cpu() for h in out.hidden_states))


def _compute(
    teacher: ModelSource,
    sentences: Sequence[str],
    path: Path,
    *,
    max_length: int,
    batch_size: int,
    progress: bool,
    device: str | None = None,
) -> None:
    from leap_export.reference import layer_embeddings, load_reference

    path.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_reference(teacher, eager=False)
    if device is not None and device != "cpu":
        model = _OnDevice(model, device)
    # Length-sorted batches pad far less; results are scattered back to corpus order.
    order = np.argsort([len(s) for s in sentences], kind="stable")
    shape = (teacher.num_layers + 1, len(sentences), teacher.hidden_size)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sentences), desc=f"teacher {teacher.name}", unit="sent")
    try:
        for start in range(0, len(sentences), CHUNK):
            idx = order[start : start + CHUNK]
            pooled = layer_embeddings(
                teacher,
                [sentences[i] for i in idx],
                batch_size=batch_size,
                max_length=max_length,
                model=model,
                tokenizer=tokenizer,
            )
            norms = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            out[:, idx] = (pooled / norms).astype(np.float16)
            if bar is not None:
                bar.update(len(idx))
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    meta = {
        "teacher": teacher.spec,
        "teacher_sha256": teacher.weights_sha256,
        "sentences": len(sentences),
        "max_length": max_length,
        "shape": list(shape),
    }
    meta_tmp = path.with_suffix(
        f".json.{os.getpid()}.tmp"
    )  # per process: two runs may finish one entry at once
    meta_tmp.write_text(json.dumps(meta, indent=2))
    os.replace(meta_tmp, path.with_suffix(".json"))
