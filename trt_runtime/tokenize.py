"""Tokenisation with `tokenizers`, truncating exactly as sentence-transformers does.

The packaged tokenizer.json files pad and truncate to a fixed 128 tokens; sentence-transformers
overrides that with the model's ``max_seq_length``. We do the same: no built-in padding, truncation at
``max_length`` (special tokens included), and padding per batch to its longest row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def runtime_tokenizer(tokenizer_json: str | Path, max_length: int):
    """``tokenizers.Tokenizer`` from ``tokenizer_json`` set as the runtime tokenizes: no padding, truncation at
    ``max_length``. ``build`` saves it into the artifact so a consumer loading the file as shipped agrees."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


class TokenBatcher:
    def __init__(self, tokenizer_json: str | Path, *, max_length: int, pad_id: int) -> None:
        self.tokenizer = runtime_tokenizer(
            tokenizer_json, max_length
        )  # older builds kept the source's settings
        self.pad_id = pad_id
        self.max_length = max_length

    def encode(self, sentences: Sequence[str]) -> list[np.ndarray]:
        """Token ids per sentence (int32), with special tokens, truncated."""
        sentences = list(sentences)
        try:
            encoded = self.tokenizer.encode_batch(sentences)
        except TypeError:
            # tokenizers refuses a str holding a lone surrogate (not encodable as UTF-8) with "TextEncodeInput
            # must be Union[...]", a type error naming no sentence; checked only on failure, so free otherwise
            _refuse_surrogates(sentences)
            raise
        return [np.asarray(e.ids, dtype=np.int32) for e in encoded]

    def pad(self, ids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad to the longest row: (input_ids, attention_mask), both int32 ``[B, S]``."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(ids), width), dtype=np.int32)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        return input_ids, mask


def _refuse_surrogates(sentences: Sequence[str]) -> None:
    from trt_runtime.errors import RuntimeInputError

    for i, text in enumerate(sentences):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise RuntimeInputError(
                f"sentence #{i} is not valid Unicode text: it holds a lone surrogate U+{ord(text[e.start]):04X} at "
                f"character {e.start} (text decoded with errors='surrogateescape', or a JSON \\ud800-style escape); "
                "repair it first, e.g. text.encode('utf-8', 'replace').decode('utf-8')"
            ) from None
