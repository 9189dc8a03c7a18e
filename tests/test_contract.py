"""The manifest is a contract: a consumer written from docs/MANIFEST.md alone reproduces EarlyExitEncoder.

``DocConsumer`` below uses json, hashlib, numpy, tokenizers and onnxruntime (one ``InferenceSession``
per segment; here with the runtime's session options, which ONNX Runtime requires next to the encoder's
shared thread pool in one process) and nothing else from trt_runtime or leap_export; its comments number the
steps of docs/MANIFEST.md, "Consuming the artifacts", that it follows. If it stops agreeing with the
runtime, either the runtime left the contract or the document no longer describes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from leap_export.export import build
from trt_runtime import EarlyExitEncoder, ort_session_options


class DocConsumer:
    def __init__(self, root, *, variant=None, theta=None, min_layer=None, exits=True, session_options=None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.root = Path(root)
        m = self.m = json.loads((self.root / "manifest.json").read_text())
        # step 1: format "leap-export", schema version 2, the variant
        if m["format"] != "leap-export" or m["schema_version"] != 2:
            raise ValueError(f"unsupported manifest: {m['format']} v{m['schema_version']}")
        v = m["variants"][variant or m["default_variant"]]
        # step 2: sha256 of the files the variant runs on (paths relative to the folder); a session per segment
        for entry in [*v["segments"], v["full"], m["tokenizer"]]:
            if hashlib.sha256((self.root / entry["file"]).read_bytes()).hexdigest() != entry["sha256"]:
                raise ValueError(f"{entry['file']}: sha256 mismatch")
        self.sessions = [
            ort.InferenceSession(
                str(self.root / f["file"]), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
            for f in v["segments"]
        ]
        # step 3: the tokenizer file's own padding / truncation replaced by the manifest's
        tok = m["tokenizer"]
        self.tokenizer = Tokenizer.from_file(str(self.root / tok["file"]))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=tok["max_length"])
        # step 6: may a sample exit after segment i? (decided once, not per batch)
        policy = m["exit_policy"]
        self.theta = np.float32(policy["theta"] if theta is None else theta)
        k, lmin, last = (
            policy["patience"],
            policy["min_layer"] if min_layer is None else min_layer,
            m["num_layers"],
        )
        self.can_exit = []
        for seg in m["segments"]:
            b = seg["layers"][1]
            may = policy["enabled"] and exits and b >= lmin and b > k and b < last
            if may and seg["ref_layer"] != b - k:
                raise ValueError(
                    f"min_layer {lmin} allows an exit after layer {b}, whose score is not the rule's"
                )
            self.can_exit.append(may)

    def encode(self, texts, batch_size=32):
        """Embeddings (step 8: L2-normalised) and exit layers, in input order; batches cut in input order."""
        out = np.zeros((len(texts), self.m["hidden_size"]), np.float32)
        layers = np.zeros(len(texts), np.int64)
        for s in range(0, len(texts), batch_size):
            out[s : s + batch_size], layers[s : s + batch_size] = self._batch(texts[s : s + batch_size])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12), layers

    def _batch(self, texts):
        # step 4: token ids with special tokens, right-padded with pad_id to the batch's longest row; int32
        ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.m["tokenizer"]["pad_id"], np.int32)
        mask = np.zeros((len(ids), width), np.int32)
        for r, x in enumerate(ids):
            input_ids[r, : len(x)], mask[r, : len(x)] = x, 1
        pooled_out = np.zeros((len(ids), self.m["hidden_size"]), np.float32)
        exit_layer = np.zeros(len(ids), np.int64)
        rows = np.arange(len(ids))  # original row of each active row
        feed = {"input_ids": input_ids, "attention_mask": mask}
        refs, carried = {}, {}  # (segment, output) -> [rows, hidden]; mask_bias / pool_weights
        needed = {
            (s["ref_from"], s["ref_output"] or "pooled")
            for s in self.m["segments"]
            if s["ref_from"] is not None
        }
        for i, (seg, sess) in enumerate(zip(self.m["segments"], self.sessions, strict=True)):  # step 5
            if seg["ref_from"] is not None:
                feed["ref_pooled"] = refs[(seg["ref_from"], seg["ref_output"] or "pooled")]
            names = [o["name"] for o in seg["outputs"]]
            res = dict(zip(names, sess.run(names, feed), strict=True))
            b = seg["layers"][1]
            if i == len(self.sessions) - 1:  # step 7: every remaining row ends here
                pooled_out[rows], exit_layer[rows] = res["pooled"], b
                break
            if i == 0:
                carried = {name: res[name] for name in self.m["io"]["carried"]}
            refs.update({key: res[key[1]] for key in needed if key[0] == i})
            hidden = res["hidden_out"]
            exited = res["score"] >= self.theta if self.can_exit[i] else np.zeros(len(rows), bool)
            if exited.all():
                pooled_out[rows], exit_layer[rows] = res["pooled"], b
                break
            if exited.any():  # step 6, compaction: the survivors' rows, trimmed to their longest row
                pooled_out[rows[exited]], exit_layer[rows[exited]] = res["pooled"][exited], b
                keep = ~exited
                rows, mask = rows[keep], mask[keep]
                width = int(mask.sum(axis=1).max())
                mask = mask[:, :width]
                hidden = hidden[keep][:, :width]
                carried = {name: t[keep][..., :width] for name, t in carried.items()}
                refs = {key: t[keep] for key, t in refs.items()}
            feed = {
                "hidden_in": np.ascontiguousarray(hidden),
                **{name: np.ascontiguousarray(t) for name, t in carried.items()},
            }
        return pooled_out, exit_layer


TEXTS = [
    "The cat sat quietly on the warm windowsill.",
    "",
    "   ",
    "ok",
    "How do I reset my password?",
    "Le chat dort sur le canapé, près de la fenêtre.",
    "日本語の文章です。東京は大きな都市です。",
    "emoji 😀🎉 and symbols ∑∫√∞",
    "Stock markets fell sharply after the central bank raised rates again this week.",
    "A very long sentence " + "that keeps going and going " * 20,  # > 64 tokens (tiny models) and > 128
    "x " * 600,  # > 256 tokens (MiniLM)
    "Photosynthesis converts light energy into chemical energy.",
    "Why does ice float on water?",
    "Please update the firmware before connecting the device.",
]
TEXTS = TEXTS + TEXTS[:5]  # duplicates


def _thetas(consumer: DocConsumer, texts) -> list[float]:
    """Thetas that split the samples: midpoints between central scores at the first exit check, well clear of any."""
    first = consumer.can_exit.index(True)
    probe = DocConsumer(consumer.root, exits=False, session_options=consumer_options())
    scores = []
    for text in texts:  # batch 1: each sample's own score after the first exit check
        ids = np.asarray([probe.tokenizer.encode(text).ids], np.int32)
        res = _run_to(probe, ids, first)
        scores.append(float(res["score"][0]))
    s = np.unique(np.float32(scores))
    picks = []
    for q in (0.25, 0.5, 0.75):
        i = min(int(q * (len(s) - 1)), len(s) - 2)
        if s[i + 1] - s[i] > 1e-5:
            picks.append(float((s[i] + s[i + 1]) / 2))
    assert picks, "no theta splits these samples"
    return picks


def _run_to(consumer: DocConsumer, ids: np.ndarray, last: int) -> dict:
    """Outputs of segment ``last`` for one unpadded row, every earlier segment's outputs carried on."""
    feed, outs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}, []
    for seg, sess in zip(consumer.m["segments"][: last + 1], consumer.sessions, strict=False):
        if seg["ref_from"] is not None:
            feed["ref_pooled"] = outs[seg["ref_from"]][seg["ref_output"] or "pooled"]
        names = [o["name"] for o in seg["outputs"]]
        outs.append(dict(zip(names, sess.run(names, feed), strict=True)))
        feed = {
            "hidden_in": outs[-1].get("hidden_out"),
            **{n: outs[0][n] for n in consumer.m["io"]["carried"]},
        }
    return outs[-1]


def consumer_options():
    # in the same process as EarlyExitEncoder, ONNX Runtime refuses sessions with default options once the
    # encoder's shared thread pool exists (docs/runtime.md)
    return ort_session_options()


def _agree(root, texts, *, variant=None, thetas, batch_sizes=(1, 5, 32), **kw):
    """The consumer and EarlyExitEncoder on the same batches: identical exit layers, cosine >= 0.99999."""
    seen = set()
    for theta in thetas:
        enc = EarlyExitEncoder(root, variant=variant, theta=theta, **kw)
        mine = DocConsumer(root, variant=variant, theta=theta, session_options=consumer_options(), **kw)
        for bs in batch_sizes:
            emb, layers = mine.encode(texts, batch_size=bs)
            # the runtime sorts each call's texts by length before batching: one call per batch gives it the
            # same batches (int8 embeddings depend on the batch)
            got = [enc.encode_with_exits(texts[s : s + bs], batch_size=bs) for s in range(0, len(texts), bs)]
            assert layers.tolist() == np.concatenate([g.exit_layers for g in got]).tolist(), (theta, bs)
            cos = np.sum(emb * np.concatenate([g.embeddings for g in got]), axis=1)
            assert cos.min() >= 0.99999, (theta, bs, float(cos.min()))
            seen |= set(layers.tolist())
    return seen


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_a_consumer_written_from_the_docs_reproduces_the_runtime(arch, tiny_artifacts):
    root = tiny_artifacts[arch]  # default plan: layers 1-2 | 3 | 4, k 1, min_layer 2
    thetas = _thetas(DocConsumer(root, session_options=consumer_options()), TEXTS)
    seen = _agree(root, TEXTS, thetas=thetas)
    assert len(seen) >= 2, "the thetas must split the samples between exit points"
    _agree(root, TEXTS, thetas=thetas[:1], min_layer=3)
    _agree(root, TEXTS, thetas=thetas[:1], exits=False)


@pytest.fixture(scope="module")
def six_layer_bert(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel

    from tests.conftest import TINY, _minilm_path, write_st_folder

    torch.manual_seed(3)
    # initializer_range 0.08: layers that move the pooled vector enough (scores ~0.89-0.96) for thetas
    # well clear of every score; at the default 0.02 they all lie within 1e-4 of each other
    config = BertConfig(
        vocab_size=30522,
        max_position_embeddings=128,
        initializer_range=0.08,
        **{**TINY, "num_hidden_layers": 6},
    )
    six = BertModel(config, add_pooling_layer=False)
    return write_st_folder(six.eval(), tmp_path_factory.mktemp("six") / "model", _minilm_path())


@pytest.mark.parametrize(
    "plan",
    [
        # k 2, default plan: segment 2 (layers 5) takes segment 0's pooled across segment 1's compaction;
        # segment 1 takes pooled_l2 from inside segment 0
        {"patience": 2, "min_layer": 3},
        # k 2, boundaries 2,4,5: no exit after layer 2 (b <= k) though min_layer is 2; segment 2 takes pooled_l3
        # from inside the middle segment 1
        {"patience": 2, "min_layer": 2, "boundaries": [2, 4, 5]},
    ],
)
def test_reference_vectors_and_int8_through_the_documented_contract(plan, six_layer_bert, tmp_path):
    root = build(six_layer_bert, tmp_path / "art", progress=False, exits="on", **plan)
    build(six_layer_bert, root, precision="int8", progress=False)
    thetas = _thetas(DocConsumer(root, session_options=consumer_options()), TEXTS)
    assert len(_agree(root, TEXTS, thetas=thetas)) >= 2
    _agree(root, TEXTS, thetas=thetas, variant="int8", batch_sizes=(1, 7))


def test_theta_is_compared_in_float32(tiny_artifacts):
    """A theta a hair above a score (below float32 resolution) lets that sample exit, on both sides."""
    root = tiny_artifacts["bert"]
    probe = DocConsumer(root, exits=False, session_options=consumer_options())
    ids = np.asarray([probe.tokenizer.encode(TEXTS[0]).ids], np.int32)
    score = float(_run_to(probe, ids, 0)["score"][0])  # after layer 2 = min_layer
    theta = score + 1e-12
    assert theta > score and float(np.float32(theta)) == score
    mine = DocConsumer(root, theta=theta, session_options=consumer_options()).encode(TEXTS[:1], batch_size=1)[
        1
    ]
    theirs = EarlyExitEncoder(root, theta=theta).encode_with_exits(TEXTS[:1]).exit_layers
    assert mine.tolist() == theirs.tolist() == [2]


def test_the_tokenizer_file_as_built_carries_the_contract(tiny_artifacts, tiny_bert):
    """The source's tokenizer.json pads and truncates to 128; the built one says what the manifest says (no
    padding, truncation at max_length), so a consumer loading it as shipped tokenizes as the runtime does."""
    root = tiny_artifacts["bert"]
    m = json.loads((root / "manifest.json").read_text())
    from tokenizers import Tokenizer

    source = Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))
    assert source.truncation["max_length"] != m["tokenizer"]["max_length"] and source.padding is not None
    raw = Tokenizer.from_file(str(root / m["tokenizer"]["file"]))
    assert raw.truncation["max_length"] == m["tokenizer"]["max_length"] == m["max_seq_length"]
    assert raw.padding is None
    ours = DocConsumer(root, session_options=consumer_options()).tokenizer
    for text in TEXTS:
        assert raw.encode(text).ids == ours.encode(text).ids
    assert len(ours.encode(TEXTS[9]).ids) == m["tokenizer"]["max_length"]
    assert ours.encode("").ids[0] != m["tokenizer"]["pad_id"]  # special tokens are added: never an empty row


@pytest.mark.slow
def test_the_contract_on_the_packaged_minilm(tmp_path):
    root = build("minilm-l6", tmp_path / "art", progress=False, exits="on")
    build("minilm-l6", root, precision="int8", progress=False)
    from leap_export.textio import sample_sentences

    texts = TEXTS + sample_sentences()
    # the stock model rarely exits at 0.95: lower thetas give exits at 3, 4 and 5 too
    seen = _agree(root, texts, thetas=[0.8, 0.9, 0.95], batch_sizes=(1, 7, 32))
    assert len(seen) >= 2
    _agree(root, texts, thetas=[0.8, 0.9], variant="int8", batch_sizes=(1, 7, 32))
