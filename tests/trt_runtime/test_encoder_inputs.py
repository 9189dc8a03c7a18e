"""Bad and edge-case input to the runtime encoder, against the PyTorch reference."""

import numpy as np
import pytest

from leap_export.reference import layer_embeddings
from trt_runtime import EarlyExitEncoder, RuntimeInputError


@pytest.fixture(scope="module")
def encoder(tiny_artifacts):
    return EarlyExitEncoder(tiny_artifacts["bert"], exits=False)


def _ref(path, texts):
    final = layer_embeddings(path, texts)[-1]
    return final / np.linalg.norm(final, axis=1, keepdims=True)


def test_empty_list_gives_empty_result(encoder):
    out = encoder.encode([])
    assert out.shape == (0, 32) and out.dtype == np.float32
    assert encoder.encode_with_exits([]).exit_layers.shape == (0,)


def test_empty_and_whitespace_strings_match_the_reference(encoder, tiny_bert):
    texts = ["", " ", "\t\n", "word"]
    got = encoder.encode(texts)
    assert np.sum(got * _ref(tiny_bert, texts), axis=1).min() >= 0.99999


def test_long_text_is_truncated_exactly_as_the_reference(encoder, tiny_bert):
    texts = ["alpha beta gamma " * 200, "short one"]  # far beyond max_seq_length 64
    assert encoder.tokenizer.encode(texts)[0].shape == (64,)
    assert np.sum(encoder.encode(texts) * _ref(tiny_bert, texts), axis=1).min() >= 0.99999


@pytest.mark.parametrize("bad", [[1, "a"], ["a", None], [b"bytes"], 42])
def test_non_string_items_are_a_clear_error(encoder, bad):
    with pytest.raises(RuntimeInputError, match="str"):
        encoder.encode(bad)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"text": "hello world"}, "got a dict; pass a list of strings"),  # would embed its keys
        ({"b", "a"}, "got a set; pass a list of strings"),  # no order a caller could map back
        (frozenset({"a"}), "got a frozenset"),
        (b"abc", "got a bytes; decode it to str first"),  # a Sequence of ints
        (bytearray(b"abc"), "got a bytearray; decode it"),
    ],
)
def test_containers_that_are_not_lists_of_texts_are_refused(encoder, bad, message):
    with pytest.raises(RuntimeInputError, match=message):
        encoder.encode(bad)


def test_sequences_and_iterables_of_str_are_accepted(encoder):
    texts = ["one sentence", "another one"]
    want = encoder.encode(texts)
    for given in (tuple(texts), iter(texts), (t for t in texts), np.array(texts)):
        assert np.array_equal(encoder.encode(given), want)
    assert encoder.encode(np.str_("one sentence")).shape == (32,)  # a str subclass: one text, 1-D like ST


def test_convert_to_numpy_false_is_refused_not_ignored(encoder):
    with pytest.raises(RuntimeInputError, match="convert_to_numpy=False is not supported"):
        encoder.encode(["a"], convert_to_numpy=False)
    with pytest.raises(TypeError, match="convert_to_tensor"):
        encoder.encode(["a"], convert_to_tensor=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"theta": 0.0}, "theta"),
        ({"theta": 1.5}, "theta"),
        ({"min_layer": 0}, "min_layer"),
        ({"min_layer": 99}, "exceeds the model's 4 layers"),
        ({"threads": 0}, "threads"),
        ({"threads": -2}, "threads"),
        ({"threads": 1.5}, "threads"),
    ],
)
def test_bad_policy_overrides(tiny_artifacts, kwargs, message):
    with pytest.raises(RuntimeInputError, match=message):
        EarlyExitEncoder(tiny_artifacts["bert"], **kwargs)


def test_patience_other_than_exported_needs_rebuild(tiny_artifacts):
    with pytest.raises(RuntimeInputError, match="rebuild"):
        EarlyExitEncoder(tiny_artifacts["bert"], patience=2)
    with pytest.raises(RuntimeInputError, match=">= 1"):
        EarlyExitEncoder(tiny_artifacts["bert"], patience=0)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_bad_batch_size(encoder, batch_size):
    with pytest.raises(RuntimeInputError, match="batch_size"):
        encoder.encode(["a"], batch_size=batch_size)


def test_numpy_integers_and_floats_are_accepted(tiny_artifacts, encoder):
    assert encoder.encode(["a", "b", "c"], batch_size=np.int64(2)).shape == (3, 32)
    enc = EarlyExitEncoder(tiny_artifacts["bert"], theta=np.float32(0.9), min_layer=np.int64(3))
    assert type(enc.policy.theta) is float and enc.policy.min_layer == 3
    assert EarlyExitEncoder(tiny_artifacts["bert"], threads=np.int64(1)).runners[0].threads == 1
    with pytest.raises(RuntimeInputError, match=r"theta must be a number in \(0, 1\], got np.float32\(1.5\)"):
        EarlyExitEncoder(tiny_artifacts["bert"], theta=np.float32(1.5))


def test_policy_may_be_a_dict_and_anything_else_is_named(tiny_artifacts):
    enc = EarlyExitEncoder(tiny_artifacts["bert"], policy={"theta": 0.9, "min_layer": 3})
    assert (enc.policy.theta, enc.policy.min_layer) == (0.9, 3)
    with pytest.raises(RuntimeInputError, match="policy must be a trt_runtime.ExitPolicy or a dict"):
        EarlyExitEncoder(tiny_artifacts["bert"], policy=0.9)


def test_a_float64_theta_next_to_a_score_decides_as_the_float32_graphs_do(tiny_artifacts, sentences):
    """A theta computed with numpy (np.float64) a hair above a float32 score: the loop's count and its exit
    mask must agree, so a sentence exits at the same layer alone and batched, and the stats count it once."""
    probe = EarlyExitEncoder(tiny_artifacts["bert"], min_layer=2)
    trace = []
    probe.run_ids(probe.tokenizer.encode(sentences), on_segment=trace.append)
    layer, _, _, score = trace[0]
    theta = np.float64(np.sort(score)[len(score) // 2]) + 1e-11  # float32(theta) is that score again
    assert np.float32(theta) == np.sort(score)[len(score) // 2] and theta > np.sort(score)[len(score) // 2]
    enc = EarlyExitEncoder(tiny_artifacts["bert"], min_layer=2, theta=theta)
    batched = enc.encode_with_exits(sentences, batch_size=len(sentences))
    assert enc.stats.samples == len(sentences)
    assert (batched.exit_layers == layer).any() and (
        batched.exit_layers > layer
    ).any()  # the theta splits them
    alone = np.concatenate([enc.encode_with_exits([t]).exit_layers for t in sentences])
    assert np.array_equal(batched.exit_layers, alone)


def test_theta_one_is_allowed_and_means_exact_convergence_only(tiny_artifacts, sentences):
    result = EarlyExitEncoder(tiny_artifacts["bert"], theta=1.0).encode_with_exits(sentences)
    assert (result.exit_layers == 4).all()


@pytest.mark.parametrize("min_layer, acts_as", [(1, "acts as min_layer 2"), (4, "acts as full depth")])
def test_a_min_layer_without_its_own_check_warns_what_it_acts_as(tiny_artifacts, caplog, min_layer, acts_as):
    # checks after layers 2 and 3 (segments 1-2, 3, 4)
    with caplog.at_level("WARNING", logger="trt_runtime"):
        EarlyExitEncoder(tiny_artifacts["bert"], min_layer=min_layer)
    assert (
        f"min_layer {min_layer}: these artifacts check for exits only after layer 2, 3, so it {acts_as}"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="trt_runtime"):
        EarlyExitEncoder(tiny_artifacts["bert"], min_layer=3)  # has its check
        EarlyExitEncoder(tiny_artifacts["bert"], min_layer=1, exits=False)  # no exits: nothing to act on
    assert caplog.text == ""


def test_a_policy_dict_overrides_only_the_fields_it_names(tiny_bert, tmp_path, sentences):
    """policy={"theta": ...} keeps the build's patience and min_layer (ExitPolicy's defaults k=1, min_layer 1
    were taken before: refused on a k=2 build, and exits after a check the build planned none at)."""
    from leap_export.export import build

    k2 = build(tiny_bert, tmp_path / "k2", min_layer=3, patience=2, progress=False)
    enc = EarlyExitEncoder(k2, policy={"theta": 0.9})
    assert (enc.policy.theta, enc.policy.patience, enc.policy.min_layer) == (0.9, 2, 3)
    idle = build(
        tiny_bert, tmp_path / "idle", boundaries=[2, 3], min_layer=3, progress=False
    )  # no exit after 2
    enc = EarlyExitEncoder(idle, policy={"theta": 0.01})
    assert enc.policy.min_layer == 3
    assert set(enc.encode_with_exits(sentences).exit_layers.tolist()) == {3}
    with pytest.raises(RuntimeInputError, match="unknown exit-policy keys 'thetа'"):
        EarlyExitEncoder(idle, policy={"thetа": 0.9})


def test_assigning_a_policy_changes_what_later_calls_do(tiny_artifacts, sentences):
    """The loop reads theta and the exit checks derived from the policy: assigning ``encoder.policy`` must
    update them (it changed the attribute only: a later call still exited at the old theta)."""
    from trt_runtime import ExitPolicy

    enc = EarlyExitEncoder(tiny_artifacts["bert"], theta=0.01)
    assert set(enc.encode_with_exits(sentences).exit_layers.tolist()) == {2}
    enc.policy = ExitPolicy(theta=1.0, min_layer=2)
    assert set(enc.encode_with_exits(sentences).exit_layers.tolist()) == {4}
    enc.policy = {"enabled": False}
    assert enc.policy.theta == 0.95 and not enc.policy.enabled  # a dict: fields over the manifest's policy
    with pytest.raises(RuntimeInputError, match="rebuild"):
        enc.policy = ExitPolicy(patience=2, min_layer=3)


def test_a_lone_surrogate_is_named_not_a_type_error(encoder):
    # tokenizers said "TextEncodeInput must be Union[...]" for a str, naming no sentence
    with pytest.raises(RuntimeInputError, match=r"sentence #1 .* lone surrogate U\+D800 at character 4"):
        encoder.encode(["fine", "bad \ud800 text"])
