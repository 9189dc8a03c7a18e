"""The PyTorch reference: the source model through transformers, masked mean pooling per layer.

This is what sentence-transformers computes (Transformer -> Pooling(mean) -> Normalize), with every
layer's pooled vector exposed, and is the ground truth for ``verify`` and ``diagnose``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leap_export.errors import LeapError
from leap_export.sources import ModelSource, resolve_model


def load_reference(source: ModelSource | str | os.PathLike, *, eager: bool = True):
    """(model, tokenizer) in eval mode on CPU. ``eager`` attention matches the exported graphs."""
    import torch  # noqa: F401
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not isinstance(source, ModelSource):
        source = resolve_model(source)
    kwargs = {"attn_implementation": "eager"} if eager else {}
    model = from_pretrained(AutoModel, source.path, "weights", **kwargs).eval()
    tokenizer = from_pretrained(AutoTokenizer, source.path, "tokenizer")
    return model, tokenizer


def from_pretrained(cls, folder: Path, what: str, **kwargs):
    """``cls.from_pretrained(folder)``, with a damaged or incomplete folder reported as a :class:`LeapError`."""
    try:
        return cls.from_pretrained(str(folder), **kwargs)
    except Exception as e:  # transformers, safetensors and torch raise many types for a damaged folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise LeapError(
            f"could not load the model's {what} from {folder}: {type(e).__name__}: {first[:300]}. "
            "The folder looks damaged or incomplete; restore it from the model's original files."
        ) from e


def tokenize(tokenizer, sentences: Sequence[str], max_length: int):
    """Exactly what sentence-transformers' Transformer module does (pad to longest, truncate)."""
    return tokenizer(
        list(sentences),
        padding=True,
        truncation="longest_first",
        max_length=max_length,
        return_tensors="pt",
    )


def token_counts(
    source: ModelSource | str | os.PathLike, sentences: Sequence[str], max_length: int | None = None
):
    """Each sentence's token count as the reference model sees it (special tokens included, truncated at
    ``max_length``, default the model's max sequence length): the lengths of diagnose's by-length report."""
    from transformers import AutoTokenizer

    if not isinstance(source, ModelSource):
        source = resolve_model(source)
    tokenizer = from_pretrained(AutoTokenizer, source.path, "tokenizer")
    ids = tokenizer(
        list(sentences), truncation="longest_first", max_length=max_length or source.max_seq_length
    )
    return np.array([len(x) for x in ids["input_ids"]])


def masked_mean(hidden, mask):
    """sentence-transformers' mean pooling: sum over unmasked tokens / max(count, 1e-9)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def layer_embeddings(
    source: ModelSource | str | os.PathLike,
    sentences: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    model=None,
    tokenizer=None,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """Masked-mean pooled hidden states of every layer: float32 array ``[L + 1, N, H]``, not normalised.

    Index 0 is the embedding output, index ``l`` the output of transformer layer ``l``.
    """
    import torch

    if not isinstance(source, ModelSource):
        source = resolve_model(source) if not isinstance(source, Path) or source.is_dir() else source
    if model is None or tokenizer is None:
        model, tokenizer = load_reference(source)
    max_length = max_length or source.max_seq_length
    out = np.zeros((source.num_layers + 1, len(sentences), source.hidden_size), dtype=np.float32)
    starts = range(0, len(sentences), batch_size)
    if show_progress_bar:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="reference (PyTorch)", unit="batch")
    with torch.inference_mode():
        for start in starts:
            batch = tokenize(tokenizer, sentences[start : start + batch_size], max_length)
            outputs = model(**batch, output_hidden_states=True)
            for layer, hidden in enumerate(outputs.hidden_states):
                out[layer, start : start + len(batch["input_ids"])] = (
                    masked_mean(hidden, batch["attention_mask"]).float().numpy()
                )
    return out
