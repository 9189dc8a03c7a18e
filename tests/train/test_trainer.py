"""The training loop on tiny random BERTs built here: output folder, learning, resume, kill, DDP, CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from leap_export.errors import LeapError
from leap_export.train.config import LeapConfig
from leap_export.train.losses import ExitLoss, exit_layer_weights
from leap_export.train.trainer import CHECKPOINT, LOSS_LOG, TrainingInterrupted, load_student, train
from trt_runtime.fileio import umask

REPO = Path(__file__).resolve().parents[2]
WORDS = (
    "the a cat dog sat on mat ran fast slow big small red blue house tree car road sky sun moon star water "
    "fire green old new quiet loud city river stone bird fish song rain snow"
).split()


def make_tiny_bert(folder: Path, *, layers: int, hidden: int, seed: int, init_range: float = 0.02) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        initializer_range=init_range,
    )
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "student": make_tiny_bert(root / "student", layers=3, hidden=32, seed=0),
        "teacher": make_tiny_bert(root / "teacher", layers=4, hidden=48, seed=1),
        # At the default init every layer of a tiny BERT pools to nearly the same vector (cos ~0.9999);
        # 0.2 gives layer-to-final cosines of ~0.1-0.4, like a real distilled model (exit-incompatible).
        "spread": make_tiny_bert(root / "spread", layers=3, hidden=32, seed=0, init_range=0.2),
    }


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(96)]


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAP_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def small(**overrides) -> LeapConfig:
    settings = dict(steps=8, batch_size=16, max_length=32, lr=1e-3, checkpoint_every=3, seed=3)
    settings.update(overrides)
    return LeapConfig(**settings)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_output_folder_loads_and_describes_itself(models, sentences, tmp_path):
    from sentence_transformers import SentenceTransformer

    from leap_export.sources import describe_folder

    out = train(
        models["student"],
        sentences,
        tmp_path / "out",
        teacher=models["teacher"],
        config=small(),
        show_progress_bar=False,
    )
    st = SentenceTransformer(str(out), device="cpu")
    emb = st.encode(["the cat sat on the mat", "a bird"], convert_to_numpy=True)
    assert emb.shape == (2, 32)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # Normalize module is in the pipeline
    source = describe_folder(out)
    assert (source.num_layers, source.hidden_size, source.normalize) == (3, 32, True)
    manifest = json.loads((out / "leap_config.json").read_text())
    assert manifest["mode"] == "leap" and manifest["final_step"] == 8
    assert manifest["config"]["beta_exit"] == 0.4
    assert manifest["projection"] == {"file": "leap_projection.safetensors", "in": 32, "out": 48}
    assert load_file(out / "leap_projection.safetensors")["weight"].shape == (48, 32)
    assert manifest["teacher"]["num_layers"] == 4 and manifest["student"]["hidden_size"] == 32
    log = [json.loads(line) for line in (out / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert {"lr", "total", "final", "inter", "exit", "contrast", "late", "redund", "elapsed_s"} <= set(log[0])
    # the trained weights are what SentenceTransformer serves, not the student's originals
    assert not torch.equal(
        weights(out)["encoder.layer.0.attention.self.query.weight"],
        weights(models["student"])["encoder.layer.0.attention.self.query.weight"],
    )


def _exit_loss(model_dir: Path, sentences: list[str], teacher_dir: Path) -> float:
    """Unramped L_exit^(t) + L_exit^(s) in eval mode (no dropout) on fixed sentences."""
    from leap_export.reference import tokenize
    from leap_export.sources import describe_folder
    from leap_export.train.teacher import teacher_targets

    src = describe_folder(model_dir)
    encoder, tok = load_student(src, 32, seed=0)
    encoder.eval()
    t = teacher_targets(describe_folder(teacher_dir), sentences, max_length=32, show_progress_bar=False)
    with torch.no_grad():
        s, sp = encoder(dict(tokenize(tok, sentences, 32)))
        teacher, student = ExitLoss(exit_layer_weights(3, 1, 0.1), 0.98, 10.0)(
            sp, s, t.batch(np.arange(len(sentences)))
        )
    return float(teacher + student)


def test_short_run_lowers_the_exit_loss_and_baseline_does_not_optimise_it(models, sentences, tmp_path):
    student = models["spread"]
    config = dict(steps=40, lr=2e-3, min_layer=1, dropout=0.0)
    before = _exit_loss(student, sentences, student)
    leap = train(student, sentences, tmp_path / "leap", config=small(**config), show_progress_bar=False)
    base = train(
        student, sentences, tmp_path / "base", config=small(**config).as_baseline(), show_progress_bar=False
    )
    after_leap = _exit_loss(leap, sentences, student)
    after_base = _exit_loss(base, sentences, student)
    assert after_leap < 0.8 * before
    assert after_leap < after_base
    assert json.loads((base / "leap_config.json").read_text())["mode"] == "baseline"


def test_resume_after_interruption_reproduces_the_uninterrupted_run(models, sentences, tmp_path):
    kwargs = dict(teacher=models["teacher"], show_progress_bar=False)
    full = train(models["student"], sentences, tmp_path / "full", config=small(), **kwargs)
    with pytest.raises(TrainingInterrupted):
        train(models["student"], sentences, tmp_path / "cut", config=small(), stop_after=5, **kwargs)
    assert torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)["step"] == 3
    assert not (tmp_path / "cut" / "leap_config.json").exists()  # unfinished
    cut = train(models["student"], sentences, tmp_path / "cut", config=small(), resume=True, **kwargs)
    a, b = weights(full), weights(cut)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(
        load_file(full / "leap_projection.safetensors")["weight"],
        load_file(cut / "leap_projection.safetensors")["weight"],
        rtol=0,
        atol=1e-6,
    )
    log_a = [json.loads(x) for x in (full / LOSS_LOG).read_text().splitlines()]
    log_b = [json.loads(x) for x in (cut / LOSS_LOG).read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(1, 9))  # lines 4-5 of the cut run were replaced
    assert [r["total"] for r in log_a] == pytest.approx([r["total"] for r in log_b], abs=1e-6)
    assert json.loads((cut / "leap_config.json").read_text())["final_step"] == 8


def test_existing_checkpoint_needs_resume_and_same_settings(models, sentences, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):
        train(models["student"], sentences, out, config=small(), stop_after=4, show_progress_bar=False)
    with pytest.raises(LeapError, match="--resume"):
        train(models["student"], sentences, out, config=small(), show_progress_bar=False)
    cache = tmp_path / "teacher-cache"
    with pytest.raises(LeapError, match="lr"):
        train(
            models["student"],
            sentences,
            out,
            config=small(lr=5e-4),
            resume=True,
            teacher_cache=cache,
            show_progress_bar=False,
        )
    assert not cache.exists() or not any(cache.rglob("*.npy")), "refused only after the teacher embedded"
    train(models["student"], sentences, out, config=small(), resume=True, show_progress_bar=False)
    with pytest.raises(
        LeapError,
        match=r"holds a finished run; to train it further, start a new run from it "
        r"\(--student .*out --out NEW_FOLDER\)",
    ):
        train(models["student"], sentences, out, config=small(), show_progress_bar=False)


def test_a_folder_with_other_files_is_refused_untouched(models, sentences, tmp_path):
    """Training into a model or artifact folder would replace its config.json, weights and tokenizer."""
    out = tmp_path / "someone-elses"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "manifest.json").write_text("{}")
    for resume in (False, True):
        with pytest.raises(LeapError, match="pick a new or empty --out"):
            train(models["student"], sentences, out, config=small(), resume=resume, show_progress_bar=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json"]
    assert (out / "config.json").read_text() == "{}"
    (out / "config.json").unlink()
    (out / "manifest.json").unlink()
    finished = train(
        models["student"], sentences, out, config=small(), show_progress_bar=False
    )  # empty: fine
    mask = umask()
    assert all(p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~mask for p in finished.rglob("*")
               if p.parent.name != "checkpoint")  # fmt: skip
    (finished / CHECKPOINT).unlink()
    with pytest.raises(LeapError, match="a finished training run"):
        train(models["student"], sentences, out, config=small(), show_progress_bar=False)


ENTRY = """
import json, sys
from leap_export.train.config import LeapConfig
from leap_export.train.trainer import train
student, sentences_file, out, settings, resume = sys.argv[1:6]
sentences = open(sentences_file).read().splitlines()
train(student, sentences, out, config=LeapConfig(**json.loads(settings)), resume=resume == "1",
      show_progress_bar=False)
"""


def _entry(tmp_path: Path, sentences: list[str]) -> tuple[Path, Path]:
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    data = tmp_path / "sentences.txt"
    data.write_text("\n".join(sentences) + "\n")
    return script, data


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, LEAP_EXPORT_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_sigkilled_run_resumes_to_the_same_step_count(models, sentences, tmp_path):
    script, data = _entry(tmp_path, sentences)
    out = tmp_path / "out"
    settings = json.dumps(dict(steps=150, batch_size=16, max_length=32, lr=1e-3, checkpoint_every=2, seed=3))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(models["student"]), str(data), str(out), settings, "0"],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 90
    while not (out / CHECKPOINT).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # right after its first checkpoint: most steps are still to do
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = torch.load(out / CHECKPOINT, weights_only=False)["step"]
    assert 0 < killed_at < 150
    train(
        models["student"],
        sentences,
        out,
        config=LeapConfig(**json.loads(settings)),
        resume=True,
        show_progress_bar=False,
    )
    assert json.loads((out / "leap_config.json").read_text())["final_step"] == 150
    assert [json.loads(x)["step"] for x in (out / LOSS_LOG).read_text().splitlines()] == list(range(1, 151))


def test_two_process_gloo_ddp_run_keeps_ranks_identical(models, sentences, tmp_path):
    script, data = _entry(tmp_path, sentences)
    out = tmp_path / "ddp"
    settings = json.dumps(dict(steps=4, batch_size=16, max_length=32, lr=1e-3, checkpoint_every=2, seed=3))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
        str(models["student"]),
        str(data),
        str(out),
        settings,
        "0",
    ]
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "leap_config.json").read_text())
    assert manifest["world_size"] == 2 and manifest["final_step"] == 4
    digests = manifest["rank_weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert [json.loads(x)["step"] for x in (out / LOSS_LOG).read_text().splitlines()] == [1, 2, 3, 4]
    assert len(torch.load(out / CHECKPOINT, weights_only=False)["rng"]) == 2  # both ranks' RNG saved


def test_cli_help_and_option_errors():
    from click.testing import CliRunner

    from leap_export.commands.train import command

    runner = CliRunner()
    result = runner.invoke(command, ["--help"])
    assert result.exit_code == 0 and "--baseline" in result.output and "--resume" in result.output
    result = runner.invoke(command, ["--out", "x", "--steps", "2", "--epochs", "1"])
    assert isinstance(result.exception, LeapError) and "steps or epochs" in str(result.exception)
    for args, message in [
        (["--lr", "nan"], "lr must be float (finite), got nan"),  # a model of NaNs, trained silently, before
        (["--set", "tau=abc"], "tau must be float (finite), got 'abc'"),  # a TypeError traceback, before
        (["--seed", "-1"], "seed must be >= 0"),  # a numpy traceback, before
        (["--set", "tua=0.9"], "unknown setting 'tua'; did you mean tau?"),  # "expected KEY=VALUE", before
        (["--set", "tau"], "expected KEY=VALUE"),
    ]:
        result = runner.invoke(command, ["--out", "x", *args])
        assert isinstance(result.exception, LeapError) and message in str(result.exception), result.output
    result = runner.invoke(command, ["--out", "x", "--lr", "0.1", "--set", "lr=0.2"])
    assert result.exit_code == 2 and "--lr given twice" in result.output
    assert not Path("x").exists()


def test_divergence_and_a_mistyped_resume_stop_with_a_clear_error(models, sentences, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(LeapError, match="training diverged: the loss is nan at step"):
        train(
            models["student"],
            sentences,
            out,
            config=small(lr=1e30, checkpoint_every=100),
            show_progress_bar=False,
        )
    assert not (out / "model.safetensors").exists()  # nothing exported
    with pytest.raises(LeapError, match="holds no training run"):
        train(
            models["student"],
            sentences,
            tmp_path / "typo",
            config=small(),
            resume=True,
            show_progress_bar=False,
        )
    with pytest.raises(LeapError, match="exceeds the student's maximum sequence length 64"):
        train(
            models["student"],
            sentences,
            tmp_path / "long",
            config=small(max_length=100),
            show_progress_bar=False,
        )


def test_teacher_cache_matches_reference_and_gpu_wrapper_keeps_results(models, sentences, tmp_path):
    from leap_export.reference import layer_embeddings, load_reference
    from leap_export.sources import describe_folder
    from leap_export.train.teacher import _OnDevice, teacher_targets

    src = describe_folder(models["teacher"])
    cached = teacher_targets(src, sentences, max_length=32, folder=tmp_path / "c", show_progress_bar=False)
    ref = layer_embeddings(src, sentences, max_length=32)
    ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(cached.embeddings, ref, atol=2e-3)  # float16 storage, corpus order kept
    idx = np.array([5, 0, 7])
    np.testing.assert_allclose(cached.batch(idx).numpy(), ref[:, idx], atol=2e-3)
    model, tok = load_reference(src)
    wrapped = layer_embeddings(
        src, sentences[:8], max_length=32, model=_OnDevice(model, "cpu"), tokenizer=tok
    )
    np.testing.assert_allclose(wrapped, layer_embeddings(src, sentences[:8], max_length=32), atol=1e-5)


@pytest.mark.parametrize(("steps", "n", "batch"), [(2, 96, 16), (7, 100, 16), (13, 50, 8), (1, 33, 32)])
def test_drawn_indices_are_exactly_what_the_batches_draw(steps, n, batch):
    from leap_export.train.trainer import batch_indices, drawn_indices

    want = np.unique(np.concatenate([batch_indices(s, n, batch, 5) for s in range(steps)]))
    np.testing.assert_array_equal(drawn_indices(steps, n, batch, 5), want)


@pytest.mark.parametrize(("steps", "n", "batch", "group"), [(3, 96, 16, 4), (13, 100, 8, 3), (25, 50, 4, 16)])
def test_length_grouped_batches_are_the_same_epochs_in_like_length_batches(steps, n, batch, group):
    from leap_export.train.trainer import batch_indices, drawn_indices

    lengths = np.random.default_rng(0).integers(20, 1500, size=n)
    per_epoch = n // batch
    for epoch in range(2):  # an epoch draws the same texts as without grouping, each once
        grouped = [
            batch_indices(s, n, batch, 5, lengths, group)
            for s in range(epoch * per_epoch, (epoch + 1) * per_epoch)
        ]
        plain = [batch_indices(s, n, batch, 5) for s in range(epoch * per_epoch, (epoch + 1) * per_epoch)]
        assert all(len(b) == batch for b in grouped)
        flat = np.concatenate(grouped)
        assert len(np.unique(flat)) == len(flat)
        np.testing.assert_array_equal(np.sort(flat), np.sort(np.concatenate(plain)))
        spread = lambda bs: np.mean([np.ptp(lengths[b]) for b in bs])  # noqa: E731
        assert spread(grouped) < spread(plain)
    again = [batch_indices(s, n, batch, 5, lengths, group) for s in range(steps)]
    assert all(np.array_equal(a, batch_indices(s, n, batch, 5, lengths, group)) for s, a in enumerate(again))
    want = np.unique(np.concatenate(again))
    np.testing.assert_array_equal(drawn_indices(steps, n, batch, 5, lengths, group), want)


def test_a_short_run_embeds_only_the_sentences_it_draws(models, sentences, tmp_path, monkeypatch):
    # 2 steps x 16 of 96 sentences: the teacher embeds those 32, not the corpus, and trains as with all 96.
    from leap_export.train import trainer

    kwargs = dict(teacher=models["teacher"], config=small(steps=2), show_progress_bar=False)
    short = train(models["student"], sentences, tmp_path / "short", **kwargs)
    caches = sorted((tmp_path / "cache" / "teacher").glob("*.npy"))
    assert [np.load(p, mmap_mode="r").shape for p in caches] == [(5, 32, 48)]
    monkeypatch.setattr(trainer, "drawn_indices", lambda total, n, batch, seed, *rest: np.arange(n))
    whole = train(models["student"], sentences, tmp_path / "whole", **kwargs)
    assert len(list((tmp_path / "cache" / "teacher").glob("*.npy"))) == 2  # the whole corpus this time
    a, b = weights(short), weights(whole)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_resume_refuses_another_teacher_student_or_corpus(models, sentences, tmp_path):
    """The checkpoint holds weights trained on one teacher and corpus: continuing it on others would finish
    a run that no uninterrupted run gives, and the manifest would name only the second ones."""
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):
        train(models["student"], sentences, out, config=small(), stop_after=4, show_progress_bar=False)
    others = [
        (dict(student=models["student"], sentences=sentences, teacher=models["spread"]), "teacher"),
        (dict(student=models["spread"], sentences=sentences), "student"),
        (dict(student=models["student"], sentences=sentences[::-1]), "training sentences"),
        (dict(student=models["student"], sentences=sentences[:90]), "training sentences"),
    ]
    for kwargs, what in others:
        student, corpus = kwargs.pop("student"), kwargs.pop("sentences")
        with pytest.raises(LeapError, match=f"cannot resume: .*{what}"):
            train(student, corpus, out, config=small(), resume=True, show_progress_bar=False, **kwargs)
    # another setting (a recipe changed since the run began): named, with the way out
    with pytest.raises(LeapError, match=r"settings differ.*min_layer: checkpoint None vs now 2.*new --out"):
        train(models["student"], sentences, out, config=small(min_layer=2), resume=True,
              show_progress_bar=False)  # fmt: skip
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 3  # untouched
    done = train(models["student"], sentences, out, config=small(), resume=True, show_progress_bar=False)
    assert json.loads((done / "leap_config.json").read_text())["final_step"] == 8


def test_a_damaged_or_foreign_checkpoint_is_a_clear_error(models, sentences, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):
        train(models["student"], sentences, out, config=small(), stop_after=4, show_progress_bar=False)
    path = out / CHECKPOINT
    good = path.read_bytes()
    state = torch.load(path, weights_only=False)
    damaged = {
        "truncated": good[: len(good) // 2],
        "not a checkpoint": b"hello",
        "missing keys": None,
        "other weights": None,
    }
    for what, data in damaged.items():
        if what == "missing keys":
            torch.save({"step": 3, "config": state["config"]}, path)
        elif what == "other weights":  # e.g. written by an older version without the inputs record
            other = {k: v for k, v in state.items() if k != "inputs"}
            other["model"] = {k: v for k, v in state["model"].items() if "layer.2." not in k}
            torch.save(other, path)
        else:
            path.write_bytes(data)
        with pytest.raises(LeapError, match=f"checkpoint {path}"):
            train(models["student"], sentences, out, config=small(), resume=True, show_progress_bar=False)
    path.write_bytes(good)
    assert (
        json.loads(
            (
                train(models["student"], sentences, out, config=small(), resume=True, show_progress_bar=False)
                / "leap_config.json"
            ).read_text()
        )["final_step"]
        == 8
    )


def test_resume_drops_a_torn_last_log_line(models, sentences, tmp_path):
    """A process killed (or a disk filled) while appending to the loss log leaves half a JSON line."""
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):
        train(models["student"], sentences, out, config=small(), stop_after=4, show_progress_bar=False)
    with (out / LOSS_LOG).open("a") as f:
        f.write('{"step": 5, "lr": 0.0')
    train(models["student"], sentences, out, config=small(), resume=True, show_progress_bar=False)
    assert [json.loads(x)["step"] for x in (out / LOSS_LOG).read_text().splitlines()] == list(range(1, 9))


def test_min_layer_must_leave_an_exit_layer(models, sentences, tmp_path):
    # the 3-layer student: exits can happen after layers 1-2; min_layer 3 (or 9) trains no exit layer and
    # wrote exit_policy min_layer 3 into the manifest
    for min_layer in (3, 9):
        with pytest.raises(LeapError, match="min_layer 3|min_layer 9"):
            train(
                models["student"],
                sentences,
                tmp_path / f"m{min_layer}",
                config=small(min_layer=min_layer),
                show_progress_bar=False,
            )
        assert not (tmp_path / f"m{min_layer}").exists()


def test_max_length_beyond_the_teachers_limit_is_refused(models, sentences, tmp_path):
    # the teacher embeds at --max-length too: past its position table that was a RuntimeError traceback
    # ("size of tensor a (92) must match ... (64)"), past its sentence-transformers limit silently longer inputs
    import shutil

    teacher = tmp_path / "short-teacher"
    shutil.copytree(models["teacher"], teacher)
    (teacher / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    with pytest.raises(LeapError, match="exceeds the teacher's maximum sequence length 16"):
        train(
            models["student"],
            sentences,
            tmp_path / "out",
            teacher=teacher,
            config=small(max_length=32),
            show_progress_bar=False,
        )
    assert not (tmp_path / "out").exists()


def test_a_damaged_teacher_cache_is_a_clear_error(models, sentences, tmp_path):
    from leap_export.sources import describe_folder
    from leap_export.train.teacher import teacher_targets

    src = describe_folder(models["teacher"])
    cached = teacher_targets(src, sentences, max_length=32, folder=tmp_path / "c", show_progress_bar=False)
    data = cached.path.read_bytes()
    for damaged in (data[: len(data) // 2], b"not an npy file"):
        cached.path.write_bytes(damaged)
        with pytest.raises(LeapError, match=f"teacher cache {cached.path} .*delete it"):
            teacher_targets(src, sentences, max_length=32, folder=tmp_path / "c", show_progress_bar=False)


def test_resume_on_another_process_count_says_the_run_will_differ(models, sentences, tmp_path, capsys):
    # each process computes L_contrast over its own batch_size / world sentences and draws its own dropout
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):
        train(models["student"], sentences, out, config=small(), stop_after=4, show_progress_bar=False)
    state = torch.load(out / CHECKPOINT, weights_only=False)
    state["rng"] = state["rng"] * 2  # as written by a 2-process torchrun
    torch.save(state, out / CHECKPOINT)
    capsys.readouterr()
    train(models["student"], sentences, out, config=small(), resume=True, show_progress_bar=False)
    assert "written by 2 processes, resumed with 1" in capsys.readouterr().err


def test_a_failed_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    # e.g. the disk fills during torch.save: the old checkpoint stays, and no half-written temp file is left
    # beside it (for a 12-layer model with its optimiser state, over a gigabyte)
    from leap_export.train import trainer

    path = tmp_path / "checkpoint" / "last.pt"
    trainer.atomic_torch_save({"step": 1}, path)

    def full_disk(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        trainer.atomic_torch_save({"step": 2}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}


def test_each_step_applies_the_ramp_the_lr_schedule_and_gradient_clipping(
    models, sentences, tmp_path, monkeypatch
):
    """The loss log shows L_exit = L_exit^(t) + beta_student * ramp(progress) * L_exit^(s) with the step's own
    ramp, the learning rate follows warmup + cosine, and every step's gradient is clipped to grad_clip."""
    import math

    real_clip = torch.nn.utils.clip_grad_norm_
    clipped = []

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        before = real_clip(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        clipped.append((max_norm, float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    config = small(grad_clip=0.05, warmup_ratio=0.25)  # 8 steps: warmup 2
    out = train(
        models["student"],
        sentences,
        tmp_path / "out",
        teacher=models["teacher"],
        config=config,
        show_progress_bar=False,
    )
    log = [json.loads(line) for line in (out / LOSS_LOG).read_text().splitlines()]
    ramps = [config.student_ramp((r["step"] - 1) / 8) for r in log]
    assert any(0 < x < 1 for x in ramps) and ramps[0] == 0 and ramps[-1] == 1  # the ramp really varies
    for r, ramp in zip(log, ramps, strict=True):
        assert r["exit_student"] > 1e-3
        assert r["exit"] == pytest.approx(
            r["exit_teacher"] + 0.7 * ramp * r["exit_student"], rel=1e-5, abs=1e-7
        )
    # the logged lr is the one after the step's scheduler.step(): lambda(done) of linear warmup then cosine
    want = [(d / 2 if d < 2 else 0.5 * (1 + math.cos(math.pi * (d - 2) / 6))) * 1e-3 for d in range(1, 9)]
    assert [r["lr"] for r in log] == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert len(clipped) == 8 and all(m == 0.05 for m, _, _ in clipped)
    assert all(before > 0.05 for _, before, _ in clipped)  # the clip really acts ...
    assert all(after == pytest.approx(0.05, rel=1e-3) for _, _, after in clipped)  # ... and to grad_clip


def test_student_pools_over_real_tokens_only(models):
    """The student is trained on the masked mean the runtime serves: padding a sentence in a batch with a
    longer one leaves its per-layer embeddings unchanged."""
    from leap_export.reference import tokenize
    from leap_export.sources import describe_folder

    encoder, tok = load_student(describe_folder(models["student"]), 48, seed=0, dropout=0.0)
    encoder.eval()
    short, long = "a cat", "the quick brown fox jumps over the lazy dog again and again"
    with torch.no_grad():
        alone, _ = encoder(dict(tokenize(tok, [short], 32)))
        batch = dict(tokenize(tok, [short, long], 32))
        assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # the short one is padded
        padded, _ = encoder(batch)
    torch.testing.assert_close(padded[:, 0], alone[:, 0], rtol=0, atol=1e-5)


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default():
    from leap_export.train.trainer import _check_resumable

    config = LeapConfig(steps=8)
    saved = config.to_dict()
    del saved["group_by_length"]  # written before length-grouped batches existed: it drew random batches
    _check_resumable(saved, config)
    with pytest.raises(LeapError, match="group_by_length: checkpoint 0 vs now 16"):
        _check_resumable(saved, LeapConfig(steps=8, group_by_length=16))
