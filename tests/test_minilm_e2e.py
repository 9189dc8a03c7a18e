"""End to end on the packaged all-MiniLM-L6-v2 against sentence-transformers' own encode."""

import numpy as np
import pytest

from leap_export.export import build
from leap_export.textio import sample_sentences
from leap_export.verify import split_theta, verify
from trt_runtime import EarlyExitEncoder
from trt_runtime.policy import convergence_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    from leap_export.sources import resolve_model

    return SentenceTransformer(str(resolve_model("minilm-l6").path), device="cpu")


TEXTS = [
    "An unseen sentence about volcanic soil and vineyards on the slopes of Etna.",
    "What is the airspeed velocity of an unladen swallow?",
    "",
    "x " * 600,
    "Les vignerons récoltent le raisin à la main en septembre.",
    "Reboot the router, then check whether the firmware update completed.",
] + sample_sentences()


def test_full_depth_equals_sentence_transformers(minilm_artifacts, st_model):
    ours = EarlyExitEncoder(minilm_artifacts, exits=False).encode(TEXTS, batch_size=8)
    theirs = st_model.encode(TEXTS, batch_size=8)
    assert np.sum(ours * theirs, axis=1).min() >= 0.99999
    assert np.abs(ours - theirs).max() < 1e-5


def test_stock_model_never_exits_at_the_default_policy(minilm_artifacts):
    result = EarlyExitEncoder(minilm_artifacts).encode_with_exits(TEXTS)
    assert (
        result.exit_layers == 6
    ).mean() >= 0.95  # the stock MiniLM hardly ever exits at theta 0.95 (docs/data.md)


def test_verify_passes(minilm_artifacts):
    report = verify(minilm_artifacts, TEXTS, progress=False)
    assert report, report.to_dict()["failures"]


def test_compaction_equals_batch_one_on_the_real_model(minilm_artifacts):
    from leap_export.reference import layer_embeddings

    ref = layer_embeddings("minilm-l6", TEXTS)
    theta = split_theta(np.concatenate([convergence_scores(ref, layer, 1) for layer in (3, 4)]))
    enc = EarlyExitEncoder(minilm_artifacts, theta=theta)
    batched = enc.encode_with_exits(TEXTS, batch_size=len(TEXTS))
    assert len(set(batched.exit_layers.tolist())) >= 2
    single = [enc.encode_with_exits([t], batch_size=1) for t in TEXTS]
    assert batched.exit_layers.tolist() == [int(s.exit_layers[0]) for s in single]
    assert np.sum(batched.embeddings * np.stack([s.embeddings[0] for s in single]), axis=1).min() >= 0.99999


def test_int8_verify_on_the_stock_model_fails_as_the_readme_says(minilm_artifacts, tmp_path):
    """docs/RESULTS.md: on the packaged stock MiniLM, ``verify --variant int8`` exits 1 on the built-in probe
    set. The int8 build is sound (every cosine far above a broken graph's), but its worst texts and batch
    dependence fall below int8's 0.98; fp32 of the same build passes.

    The bounds hold on every x86-64 CPU: with 7-bit weights (``reduce_range``) the quantised products are
    exact integer sums with and without VNNI; only float32 rounding differs between CPUs, and where it moves
    an activation across a quantisation step the embeddings differ a little (measured against an emulated
    AVX2-only EPYC-Rome: min cosines equal to 4 digits, 0.970 here), far inside (0.95, 0.98)."""
    import shutil

    from leap_export.verify import TOLERANCES

    art = tmp_path / "art"
    shutil.copytree(minilm_artifacts, art)
    build(art, art, precision="int8", progress=False)
    report = verify(art, sample_sentences(), variant="int8", progress=False)
    failed = [c for c in report.checks if not c.passed]
    assert failed and not report
    assert {c.metric for c in failed} <= {
        "min_cosine",
        "batch1_min_cosine",
        "min_cosine_at_exit_layer",
        "max_abs_diff",
        "exit_agreement",
        "batch1_exit_agreement",
    }, failed
    cosines = [c.value for c in report.checks if "cosine" in c.metric]
    assert 0.95 < min(cosines) < TOLERANCES["int8"]["min_cosine"], cosines
    assert verify(art, sample_sentences(), progress=False)  # the fp32 variant beside it


def test_fp16_verify_on_the_stock_model_passes(minilm_artifacts, tmp_path):
    """The fp16 variant of the packaged MiniLM against PyTorch fp32, with FP16 numerics emulated on the CPU:
    pooled cosine >= 0.999 per segment and end to end, exit layers agreeing on >= 99 % of the texts."""
    import shutil

    art = tmp_path / "art"
    shutil.copytree(minilm_artifacts, art)
    build(art, art, precision="fp16", progress=False)
    report = verify(art, TEXTS, variant="fp16", progress=False)
    assert report, [c.describe() for c in report.failures]
    assert report.backends["onnxruntime-cpu"]["precision"] == "fp16"
    cosines = [c.value for c in report.checks if c.metric == "min_cosine"]
    assert len(cosines) >= 6 and min(cosines) >= 0.999
    agreement = [c.value for c in report.checks if "agreement" in c.metric]
    assert agreement and min(agreement) >= 0.99
