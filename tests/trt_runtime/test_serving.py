"""ServedEncoder, the Triton model's logic, in process: one batch per policy, rows back per request, checks."""

import numpy as np
import pytest

from trt_runtime import EarlyExitEncoder, RuntimeInputError
from trt_runtime.serving import CountingSink, Overrides, ServedEncoder, decode_texts


@pytest.mark.parametrize(
    "params,message",
    [
        ({"theta": 2.0}, "theta must be a number in (0, 1]"),
        ({"theta": 0}, "theta must be a number in (0, 1]"),
        ({"theta": "nan"}, "theta must be a number in (0, 1]"),
        ({"theta": "high"}, "theta must be a number"),
        ({"theta": True}, "theta must be a number"),
        ({"min_layer": 0}, "min_layer must be an integer >= 1"),
        ({"min_layer": 2.5}, "min_layer must be an integer"),
        ({"full_depth": "yes"}, "full_depth must be true or false"),
        ({"full_depth": True, "theta": 0.9}, "drop them, or drop full_depth"),
        ({"thetta": 0.9}, "unknown request parameter 'thetta'"),
    ],
)
def test_bad_parameters_are_refused_with_one_line(params, message):
    with pytest.raises(RuntimeInputError) as e:
        Overrides.parse(params)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parameters_as_clients_send_them():
    assert Overrides.parse({"theta": "0.9", "min_layer": "3", "full_depth": "false"}) == Overrides(
        0.9, 3, False
    )
    assert Overrides.parse({"theta": 1, "min_layer": 2}) == Overrides(1.0, 2, False)
    assert Overrides.parse({"full_depth": True}).policy_change() == {"enabled": False}
    assert Overrides.parse(None).policy_change() is None


def test_invalid_utf8_is_named():
    with pytest.raises(RuntimeInputError, match=r"text #1 is not valid UTF-8 \(byte 0xff at offset 2\)"):
        decode_texts([b"ok", b"ab\xffcd"])
    assert decode_texts([b"caf\xc3\xa9", "x"]) == ["café", "x"]


def test_each_request_gets_the_local_encoders_rows_under_its_own_policy(tiny_artifacts, sentences):
    art = tiny_artifacts["bert"]
    encoder = EarlyExitEncoder(art)
    sink = CountingSink()
    served = ServedEncoder(encoder, sink=sink, shadow_rate=1.0, seed=0)
    requests = [
        ([s.encode() for s in sentences[:5]], {}),
        ([s.encode() for s in sentences[5:]], {"theta": 0.99999}),
        ([b"\xff"], {}),
        ([sentences[0].encode()], {"theta": 3}),
        ([s.encode() for s in sentences[::-1]], {"full_depth": True}),
        ([], {}),
        ([sentences[1].encode()], {"min_layer": 99}),
    ]
    answers = served.serve(requests)
    refs = {
        0: EarlyExitEncoder(art).encode_with_exits(sentences[:5]),
        1: EarlyExitEncoder(art, theta=0.99999).encode_with_exits(sentences[5:]),
        4: EarlyExitEncoder(art, exits=False).encode_with_exits(sentences[::-1]),
    }
    for i, ref in refs.items():
        got = answers[i]
        assert got.error is None
        assert np.sum(got.embeddings * ref.embeddings, axis=1).min() >= 0.99999
        assert got.exit_layers.tolist() == ref.exit_layers.tolist()
    assert (answers[4].exit_layers == 4).all() and (answers[0].exit_layers < 4).any()
    assert "not valid UTF-8" in answers[2].error
    assert "theta must be a number in (0, 1]" in answers[3].error
    assert answers[5].error is None and answers[5].embeddings.shape == (0, 32)
    assert "min_layer 99 exceeds the model's 4 layers" in answers[6].error
    # the served policy is back after every override
    assert encoder.policy == EarlyExitEncoder(art).policy
    served_texts = len(sentences) * 2
    assert sum(sink.exit_counts.values()) == served_texts
    assert len(sink.shadow_cosines) == served_texts  # shadow_rate 1: every served text
    assert min(sink.shadow_cosines) > 0.9 and max(sink.shadow_cosines) <= 1.0 + 1e-6
    assert len(sink.score_values[2]) == served_texts  # every text ran the first segment


def test_shadow_rate_is_checked(tiny_artifacts):
    encoder = EarlyExitEncoder(tiny_artifacts["bert"])
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(RuntimeInputError, match="shadow_rate must be a number in"):
            ServedEncoder(encoder, shadow_rate=bad)


def test_long_texts_are_tokenised_in_bounded_time_to_the_same_ids(tiny_artifacts):
    from trt_runtime.serving import token_ids

    batcher = EarlyExitEncoder(tiny_artifacts["bert"]).tokenizer
    texts = [
        "word " * 100_000,  # cut at a space: the prefix fills max_length
        " " * 50_000
        + "late words",  # whitespace runs: the prefix holds no tokens, the whole text is tokenised
        "x" * 50_000,  # one giant word: no whitespace to cut at
        "a " * 5 + "\t" * 40_000 + "tail",
        "short",
        "Photosynthesis converts light energy into chemical energy. " * 2_000,
    ]
    got, want = token_ids(batcher, texts), batcher.encode(texts)
    assert [g.tolist() for g in got] == [w.tolist() for w in want]
    assert len(got[0]) == batcher.max_length


def test_the_bls_backend_runs_only_inside_a_triton_model(tiny_artifacts):
    """A backend class outside the registry is accepted by the seam, and says where it can run."""
    from trt_runtime.backends import CHOICES
    from trt_runtime.backends.triton_bls import TritonBls

    assert "triton-bls" not in CHOICES  # auto never takes it
    with pytest.raises(RuntimeInputError, match="runs only inside a Triton Python-backend model"):
        EarlyExitEncoder(tiny_artifacts["bert"], backend=TritonBls, check_files=False)
