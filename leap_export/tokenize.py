"""``leap-export tokenize``: the token ids the runtime feeds its graphs, written for programs without Python.

The C API (docs/c-api.md) takes token ids, not text: no Hugging Face tokenizers library for C++ is in the
registries this project builds from. These are exactly the ids :class:`trt_runtime.EarlyExitEncoder` computes
(its own :class:`~trt_runtime.tokenize.TokenBatcher`: the build's tokenizer.json, no padding, truncation at the
manifest's ``tokenizer.max_length``, special tokens added); a C++ program pads them per batch with ``pad_id``
(right padding, mask ones then zeros).
"""

from __future__ import annotations

import os
from pathlib import Path


def tokenize_file(artifacts: str | os.PathLike, input_path: str | os.PathLike, output: str | os.PathLike):
    """Token ids of every line of ``input_path`` into ``output``: (sentences, longest row in tokens).

    ``*.json``: ``{"pad_id", "max_length", "vocab_size", "ids": [[...], ...]}``; any other name: one line per
    sentence, its ids separated by single spaces (an empty file for no sentences)."""
    import json

    from leap_export.textio import read_lines
    from trt_runtime.errors import ArtifactError
    from trt_runtime.fileio import atomic_write
    from trt_runtime.manifest import load_manifest, sha256_file
    from trt_runtime.tokenize import TokenBatcher

    manifest = load_manifest(artifacts, check_files=False)
    tok = manifest.tokenizer
    path = manifest.tokenizer_path()
    if not path.is_file() or sha256_file(path) != tok.sha256:  # other ids than the build's: refuse
        raise ArtifactError(
            f"{path} is missing or does not match its sha256 in the manifest; rebuild the artifacts with "
            f"{manifest.rebuild_hint(problems=[tok.file])}"
        )
    batcher = TokenBatcher(manifest.tokenizer_path(), max_length=tok.max_length, pad_id=tok.pad_id)
    texts = read_lines(input_path)
    ids = [row.tolist() for row in batcher.encode(texts)] if texts else []
    if Path(output).suffix.lower() == ".json":
        # one row per line: readable, and far shorter than json.dumps(indent=2)'s one id per line
        rows = ",\n".join("    " + json.dumps(row) for row in ids)
        head = f'{{\n  "pad_id": {tok.pad_id},\n  "max_length": {tok.max_length},\n'
        head += f'  "vocab_size": {batcher.tokenizer.get_vocab_size()},\n'
        payload = (head + ('  "ids": [\n' + rows + "\n  ]\n}\n" if ids else '  "ids": []\n}\n')).encode()
    else:
        payload = "".join(" ".join(map(str, row)) + "\n" for row in ids).encode()
    atomic_write(output, lambda f: f.write(payload))
    return len(ids), max((len(r) for r in ids), default=0)
