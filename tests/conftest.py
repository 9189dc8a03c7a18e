"""Shared fixtures: tiny randomly initialised models built here (no download), one per architecture.

Each is a complete sentence-transformers folder (config, weights, tokenizer, modules.json, pooling,
normalize), so every stage treats it exactly like a real model. Built once per session; tests that
modify one copy it first.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64}


def _minilm_path() -> Path:
    from leap_export.sources import resolve_model

    return resolve_model("minilm-l6").path


def write_st_folder(model, folder: Path, tokenizer_from: Path, max_seq_length: int = 64) -> Path:
    """Save a transformers model as a sentence-transformers folder (mean pooling + Normalize)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tokenizer_from / name).is_file():
            shutil.copy2(tokenizer_from / name, folder / name)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ]
        )
    )
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": model.config.hidden_size,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (folder / "2_Normalize").mkdir(exist_ok=True)
    return folder


def _tiny(arch: str, folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

    torch.manual_seed(0 if arch == "bert" else 1)
    tok = _minilm_path()
    if arch == "bert":
        model = BertModel(
            BertConfig(vocab_size=30522, max_position_embeddings=128, **TINY), add_pooling_layer=False
        )
    else:
        model = MPNetModel(
            MPNetConfig(vocab_size=30527, max_position_embeddings=130, **TINY), add_pooling_layer=False
        )
    return write_st_folder(model.eval(), folder, tok)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: _tiny(arch, root / arch) for arch in ("bert", "mpnet")}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models) -> Path:
    return tiny_models["bert"]


@pytest.fixture(scope="session")
def tiny_mpnet(tiny_models) -> Path:
    return tiny_models["mpnet"]


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """Default build (min_layer 2 of 4 -> segments 1-2, 3, 4) of each tiny model."""
    from leap_export.export import build

    root = tmp_path_factory.mktemp("tiny-artifacts")
    return {arch: build(path, root / arch, min_layer=2, progress=False) for arch, path in tiny_models.items()}


@pytest.fixture(scope="session")
def minilm_artifacts(tmp_path_factory) -> Path:
    """The packaged all-MiniLM-L6-v2, built once per session (default settings) for the tests that read it
    (test_minilm_e2e, test_capi); none of them writes into it (a test that adds a variant copies it first)."""
    from leap_export.export import build

    return build("minilm-l6", tmp_path_factory.mktemp("minilm") / "art", progress=False)


SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "How do I reset my password?",
    "Stock markets fell sharply after the central bank raised rates again this week.",
    "",
    "   ",
    "ok",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "Le chat dort sur le canapé.",
    "A very long sentence " + "that keeps going and going " * 20,
    "Why does ice float on water?",
    "The orchestra tuned their instruments.",
    "Please update the firmware before connecting the device.",
]


@pytest.fixture
def sentences() -> list[str]:
    return list(SENTENCES)
