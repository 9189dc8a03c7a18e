"""The LEAP training loop: one function, :func:`train`, usable from Python, the CLI and ``torchrun``.

Reproducibility contract: the batch at step ``s`` is a pure function of ``(seed, s)`` (a seeded
permutation per epoch) and the dropout RNG is reseeded from ``(seed, s, rank)`` before every step,
so a run resumed from a checkpoint reaches the same weights as an uninterrupted one.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the student runs in DistributedDataParallel
(nccl on CUDA, gloo on CPU); every rank takes its slice of the same global batch; only rank 0 writes
logs, checkpoints and the output folder.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from leap_export.errors import LeapError
from leap_export.reference import from_pretrained, masked_mean, tokenize
from leap_export.sources import ModelSource, resolve_model
from leap_export.train.config import LeapConfig
from leap_export.train.losses import TERMS, LeapLoss
from leap_export.train.teacher import sentences_sha256, teacher_targets
from trt_runtime.fileio import ordinary_modes

CHECKPOINT = "checkpoint/last.pt"
LOSS_LOG = "loss_log.jsonl"
PROJECTION = "leap_projection.safetensors"
# Copied from the student folder so the output loads with SentenceTransformer(DIR).
ST_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "sentencepiece.bpe.model",
)
ST_DIRS = ("1_Pooling", "2_Normalize")


class TrainingInterrupted(RuntimeError):
    """Raised by ``stop_after``: stands in for a killed process in tests."""


# --- the student ------------------------------------------------------------------------------------


class StudentEncoder(nn.Module):
    """Transformer -> per-layer masked mean -> normalise; plus the learned width projection.

    forward: ids/mask [B, T] -> (s [L + 1, B, Hs], sp [L + 1, B, Ht]); ``sp`` is ``s`` when widths match.
    """

    def __init__(self, transformer: nn.Module, teacher_width: int) -> None:
        super().__init__()
        self.transformer = transformer
        width = transformer.config.hidden_size
        self.projection = nn.Linear(width, teacher_width, bias=False) if width != teacher_width else None

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        hidden = self.transformer(**batch, output_hidden_states=True).hidden_states
        s = F.normalize(torch.stack([masked_mean(h, batch["attention_mask"]) for h in hidden]), dim=-1)
        sp = s if self.projection is None else F.normalize(self.projection(s), dim=-1)
        return s, sp


def load_student(
    source: ModelSource, teacher_width: int, seed: int, dropout: float | None = None
) -> tuple[StudentEncoder, Any]:
    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = (
        {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    )
    transformer = from_pretrained(AutoModel, source.path, "weights", **overrides)
    for name, param in transformer.named_parameters():
        if name.startswith("pooler."):  # not part of a sentence embedding; DDP needs every param used
            param.requires_grad_(False)
    torch.manual_seed(seed)  # the projection's initialisation
    return StudentEncoder(transformer, teacher_width), from_pretrained(
        AutoTokenizer, source.path, "tokenizer"
    )


# --- data order -------------------------------------------------------------------------------------


def batch_indices(
    step: int,
    num_sentences: int,
    batch_size: int,
    seed: int,
    lengths: np.ndarray | None = None,
    group: int = 0,
) -> np.ndarray:
    """The global batch of ``step``: a slice of epoch ``step // steps_per_epoch``'s permutation.

    With ``group`` > 0 and the texts' ``lengths``, each run of ``group`` batches of that permutation is a
    pool: sorted by length, cut into ``group`` batches of like-length texts, and those batches put in a
    seeded random order. An epoch still draws every text at most once."""
    per_epoch = num_sentences // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_sentences)
    if group <= 0 or lengths is None:
        return order[position * batch_size : (position + 1) * batch_size]
    pool, slot = divmod(position, group)
    first = pool * group
    batches = min(group, per_epoch - first)
    members = order[first * batch_size : (first + batches) * batch_size]
    members = members[np.argsort(lengths[members], kind="stable")]
    pick = np.random.default_rng([seed, epoch, pool, 1]).permutation(batches)[slot]
    return members[pick * batch_size : (pick + 1) * batch_size]


def drawn_indices(
    total_steps: int,
    num_sentences: int,
    batch_size: int,
    seed: int,
    lengths: np.ndarray | None = None,
    group: int = 0,
) -> np.ndarray:
    """Sorted corpus indices that ``total_steps`` steps of :func:`batch_indices` draw (the teacher needs only
    these: a 5-step run on a 400k-sentence corpus embeds 5 batches, not the corpus)."""
    per_epoch = num_sentences // batch_size
    seen = np.zeros(num_sentences, dtype=bool)
    if group > 0 and lengths is not None:  # a partial epoch's batches are not a prefix of its permutation
        for step in range(total_steps):
            seen[batch_indices(step, num_sentences, batch_size, seed, lengths, group)] = True
        return np.flatnonzero(seen)
    for epoch in range(-(-total_steps // per_epoch)):
        steps = min(per_epoch, total_steps - epoch * per_epoch)
        seen[np.random.default_rng([seed, epoch]).permutation(num_sentences)[: steps * batch_size]] = True
        if seen.all():
            break
    return np.flatnonzero(seen)


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + rank) % (2**63)


# --- distributed ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        from datetime import timedelta

        # Other ranks wait at a barrier while rank 0 caches the teacher: allow hours, not the 30 min default.
        dist.init_process_group(backend=backend, timeout=timedelta(hours=12))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def parameters_sha256(module: nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --- atomic files -----------------------------------------------------------------------------------


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a write that failed (disk full) leaves no partial file


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- checkpoints ------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Settings that may change between a run and its resumption (they do not change the trajectory).
RESUMABLE_CHANGES = {"checkpoint_every"}


def _check_resumable(saved: dict[str, Any], config: LeapConfig) -> None:
    current = config.to_dict()
    # a setting added after the checkpoint was written: that run had its default behaviour
    saved = {**LeapConfig().to_dict(), **saved}
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}"
        for k in current
        if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]
    ]
    if diffs:
        raise LeapError(
            "cannot resume: the settings differ from the checkpoint's (" + "; ".join(diffs) + "); pass the "
            "interrupted run's settings, or pick a new --out to train with these"
        )


def _run_inputs(student: ModelSource, teacher: ModelSource, sentences: Sequence[str]) -> dict[str, Any]:
    """What the trajectory depends on besides the settings: the student's starting weights, the teacher
    and the training sentences (their order included: batches are drawn by position)."""
    return {
        "student_sha256": student.weights_sha256,
        "teacher_sha256": teacher.weights_sha256,
        "corpus_sha256": sentences_sha256(sentences),
        "sentences": len(sentences),
    }


def _check_same_inputs(saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    if saved is None:  # a checkpoint written before the inputs were recorded
        return
    names = {
        "student_sha256": "the student's weights (--student)",
        "teacher_sha256": "the teacher's weights (--teacher)",
        "corpus_sha256": "the training sentences (--corpus / --sentences / --max-sentences)",
        "sentences": "the number of training sentences",
    }
    diffs = [
        f"{names[k]}: checkpoint {str(saved.get(k))[:12]} vs now {str(v)[:12]}"
        for k, v in current.items()
        if k in saved and saved[k] != v
    ]
    if diffs:
        raise LeapError(
            "cannot resume: the checkpoint was trained on other inputs (" + "; ".join(diffs) + "); pass the "
            "interrupted run's --student, --teacher and training sentences, or pick a new --out"
        )


# --- the loop ---------------------------------------------------------------------------------------


def train(
    student: str | os.PathLike,
    sentences: Sequence[str],
    out: str | os.PathLike,
    *,
    teacher: str | os.PathLike | None = None,
    config: LeapConfig | None = None,
    resume: bool = False,
    corpus_origin: str | None = None,
    teacher_cache: str | os.PathLike | None = None,
    stop_after: int | None = None,
    show_progress_bar: bool = True,
) -> Path:
    """Distil ``teacher`` (default: the student's own checkpoint) into ``student`` with the LEAP loss
    (``config.beta_exit = 0``: the baseline) and write a sentence-transformers folder to ``out``.

    ``stop_after`` raises :class:`TrainingInterrupted` once that many steps are done (tests use it
    as a kill). Returns ``out``.
    """
    config = config or LeapConfig()
    out = Path(out)
    sentences = list(sentences)
    d = setup_distributed()
    try:
        return _train(
            student,
            sentences,
            out,
            teacher,
            config,
            resume,
            corpus_origin,
            teacher_cache,
            stop_after,
            show_progress_bar,
            d,
        )
    finally:
        if d.world > 1 and dist.is_initialized():
            # Free the DDP wrapper and its reducer (reference cycles) while the interpreter is whole: gloo
            # work objects still alive at interpreter shutdown can abort the process (SIGABRT, "terminate
            # called without an active exception"; seen once in 30+ two-process test runs, in CI).
            gc.collect()
            dist.destroy_process_group()


def _train(
    student_spec,
    sentences,
    out,
    teacher_spec,
    config,
    resume,
    corpus_origin,
    teacher_cache,
    stop_after,
    show_progress_bar,
    d: Dist,
) -> Path:
    if config.batch_size % d.world:
        raise LeapError(f"batch size {config.batch_size} does not split over {d.world} processes")
    if len(sentences) < config.batch_size:
        raise LeapError(f"{len(sentences)} training sentences are fewer than one batch ({config.batch_size})")
    student_src = resolve_model(student_spec)
    teacher_src = resolve_model(teacher_spec if teacher_spec is not None else student_spec)
    checkpoint_path = out / CHECKPOINT
    if checkpoint_path.is_file() and not resume:
        if (out / "model.safetensors").is_file():  # exported: the run reached its last step
            raise LeapError(
                f"{out} holds a finished run; to train it further, start a new run from it "
                f"(--student {out} --out NEW_FOLDER), or pick a new --out"
            )
        raise LeapError(
            f"{out} already holds a training checkpoint: pass --resume to continue it, or pick a new --out"
        )
    _check_output_folder(out, checkpoint_path)
    if resume and not checkpoint_path.is_file() and not (out / LOSS_LOG).is_file():
        raise LeapError(
            f"--resume: {out} holds no training run (no checkpoint, no {LOSS_LOG}); check the path, or "
            "drop --resume to start a new run there"
        )
    min_layer = config.exit_min_layer(student_src.num_layers)
    if student_src.num_layers < 2:
        raise LeapError(f"the student has {student_src.num_layers} layer: early exit needs at least 2")
    if not 1 <= min_layer <= student_src.num_layers - 1:
        raise LeapError(
            f"min_layer {min_layer}: the {student_src.num_layers}-layer student can exit after layers 1.."
            f"{student_src.num_layers - 1} only; set min_layer in that range"
        )
    for role, src in (("student", student_src), ("teacher", teacher_src)):
        if config.max_length > src.max_seq_length:
            raise LeapError(
                f"--max-length {config.max_length} exceeds the {role}'s maximum sequence length "
                f"{src.max_seq_length}; pass at most that"
            )
    inputs = _run_inputs(student_src, teacher_src, sentences)
    state = None
    if resume and checkpoint_path.is_file():  # before the teacher: a refusal costs no embedding
        state = _load_checkpoint(checkpoint_path)
        _check_resumable(state["config"], config)
        _check_same_inputs(state.get("inputs"), inputs)
    out.mkdir(exist_ok=True)  # its parent was checked (an output's folder must exist)
    if d.main and d.device.type == "cpu" and config.batch_size >= 64 and config.max_length >= 128:
        print(
            "hint: training on CPU; --batch-size 32 --max-length 64 is several times faster per step "
            "(scripts/train_minilm.sh is a tested CPU recipe)",
            file=sys.stderr,
        )

    # Teacher targets, for the sentences the run draws: rank 0 computes the cache, the others wait and read it.
    total = config.total_steps(len(sentences))
    lengths = np.array([len(s) for s in sentences]) if config.group_by_length else None
    drawn = drawn_indices(
        total, len(sentences), config.batch_size, config.seed, lengths, config.group_by_length
    )
    corpus_rows = None if len(drawn) == len(sentences) else drawn
    taught = sentences if corpus_rows is None else [sentences[i] for i in drawn]
    if corpus_rows is not None and d.main:
        print(
            f"note: {total} steps x {config.batch_size} draw {len(drawn):,} of the corpus's {len(sentences):,} "
            "sentences; the teacher embeds only those",
            file=sys.stderr,
        )
    cache_folder = Path(teacher_cache) if teacher_cache is not None else None
    targets = None
    if d.main:
        targets = teacher_targets(
            teacher_src,
            taught,
            max_length=config.max_length,
            folder=cache_folder,
            show_progress_bar=show_progress_bar,
            device=str(d.device),
        )
    d.barrier()
    if targets is None:
        targets = teacher_targets(
            teacher_src, taught, max_length=config.max_length, folder=cache_folder, compute=False
        )
    targets = dataclasses.replace(targets, corpus_rows=corpus_rows)

    encoder, tokenizer = load_student(student_src, teacher_src.hidden_size, config.seed, config.dropout)
    encoder.to(d.device).train()
    loss_fn = LeapLoss(config, student_src.num_layers, teacher_src.num_layers).to(d.device)
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config, total)

    start, elapsed_before = 0, 0.0
    if state is not None:
        try:
            encoder.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise LeapError(
                f"the checkpoint {checkpoint_path} does not fit this student ({' '.join(str(e).split())[:300]}); "
                "pass the interrupted run's --student and --teacher, or pick a new --out"
            ) from e
        rng = state["rng"]
        if len(rng) == d.world:
            _set_rng_state(rng[d.rank])
        elif d.main:
            print(
                f"note: the checkpoint was written by {len(rng)} processes, resumed with {d.world}: each process "
                f"computes L_contrast over its own share of the batch ({config.batch_size // len(rng)} sentences "
                f"then, {config.batch_size // d.world} now), so the result will differ from an uninterrupted run",
                file=sys.stderr,
            )
        start, elapsed_before = int(state["step"]), float(state["elapsed_s"])
    elif resume and d.main:  # the run stopped before its first checkpoint
        print(
            f"note: the run in {out} stopped before its first checkpoint; starting from step 0",
            file=sys.stderr,
        )
    if start and d.main:
        print(f"resuming {out} at step {start} of {total}", file=sys.stderr)
    if d.main:
        _truncate_log(out / LOSS_LOG, start)

    model: nn.Module = encoder
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            encoder, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )

    bar = None
    if d.main and show_progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=config.mode, unit="step", dynamic_ncols=True)
    shard = config.batch_size // d.world
    t0 = time.perf_counter()
    step = start
    try:
        for step in range(start, total):
            torch.manual_seed(step_seed(config.seed, step, d.rank))
            global_idx = batch_indices(
                step, len(sentences), config.batch_size, config.seed, lengths, config.group_by_length
            )
            idx = global_idx[d.rank * shard : (d.rank + 1) * shard]
            batch = {
                k: v.to(d.device)
                for k, v in tokenize(tokenizer, [sentences[i] for i in idx], config.max_length).items()
            }
            t = targets.batch(idx).to(d.device)
            s, sp = model(batch)
            result = loss_fn(s, sp, t, ramp=config.student_ramp(step / total))
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            values = _mean_over_ranks(result.as_floats(), d)
            done = step + 1
            if not math.isfinite(values["total"]):  # the same on every rank: all stop together
                raise LeapError(
                    f"training diverged: the loss is {values['total']} at step {done} (learning rate "
                    f"{scheduler.get_last_lr()[0]:.3g}). Lower --lr; nothing was exported, and the last good "
                    f"checkpoint, if any, is still in {out}"
                )
            elapsed = elapsed_before + time.perf_counter() - t0
            if d.main:
                record = {
                    "step": done,
                    "lr": scheduler.get_last_lr()[0],
                    **values,
                    "elapsed_s": round(elapsed, 3),
                }
                with (out / LOSS_LOG).open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{values[k]:.3f}" for k in ("total", "final", "exit", "contrast")})
            if done % config.checkpoint_every == 0 or done == total:
                _save_checkpoint(
                    checkpoint_path, encoder, optimizer, scheduler, config, inputs, done, elapsed, d
                )
            if stop_after is not None and done >= stop_after and done < total:
                raise TrainingInterrupted(f"stopped after step {done} (stop_after)")
    finally:
        if bar is not None:
            bar.close()

    digests = _gather(parameters_sha256(encoder), d)
    if len(set(digests)) != 1:
        raise LeapError(f"DDP ranks ended with different weights: {digests}")
    if d.main:
        _export(
            out,
            encoder,
            student_src,
            teacher_src,
            config,
            total,
            targets.key,
            inputs,
            corpus_origin,
            d,
            digests,
            elapsed_before + time.perf_counter() - t0,
        )
    d.barrier()
    return out


def _scheduler(optimizer, config: LeapConfig, total: int):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = math.ceil(config.warmup_ratio * total)
    if config.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    make = get_cosine_schedule_with_warmup if config.schedule == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup, total)


def _gather(obj: Any, d: Dist) -> list[Any]:
    if d.world == 1:
        return [obj]
    gathered: list[Any] = [None] * d.world
    dist.all_gather_object(gathered, obj)
    return gathered


def _mean_over_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    if d.world == 1:
        return values
    keys = ["total", *TERMS]
    tensor = torch.tensor([values[k] for k in keys], device=d.device)
    dist.all_reduce(tensor)
    return {k: float(v) / d.world for k, v in zip(keys, tensor.tolist(), strict=True)}


def _save_checkpoint(path, encoder, optimizer, scheduler, config, inputs, step, elapsed, d: Dist) -> None:
    rng = _gather(_rng_state(), d)  # every rank's dropout RNG, so all can resume exactly
    if d.main:
        atomic_torch_save(
            {
                "step": step,
                "elapsed_s": elapsed,
                "config": config.to_dict(),
                "inputs": inputs,  # student, teacher and corpus hashes: resume checks them
                "model": encoder.state_dict(),  # transformer + projection
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng,
            },
            path,
        )
    d.barrier()


CHECKPOINT_KEYS = ("step", "elapsed_s", "config", "model", "optimizer", "scheduler", "rng")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, or a LeapError saying what to do when it cannot be used."""
    advice = f"delete {path} to restart the run from step 0 (or pick a new --out)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (
        Exception
    ) as e:  # torch.load/unpickling raise many types: RuntimeError, EOFError, UnpicklingError, ...
        raise LeapError(
            f"cannot read the checkpoint {path}: it is damaged or not a training checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); {advice}"
        ) from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing or not isinstance(state.get("config"), dict):
        raise LeapError(
            f"the checkpoint {path} is not a complete training checkpoint (missing "
            f"{', '.join(missing) or 'config'}); {advice}"
        )
    return state


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after the checkpoint we resume from (a killed run may have logged past it)."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if (n := _log_step(line)) is not None and n <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _log_step(line: str) -> int | None:
    """The step of a loss-log line; None for a line that is not a whole record (a write cut off by a kill)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


# --- the output folder ------------------------------------------------------------------------------


def _export(
    out: Path,
    encoder: StudentEncoder,
    student: ModelSource,
    teacher: ModelSource,
    config: LeapConfig,
    step: int,
    cache_key: str,
    inputs: dict[str, Any],
    corpus_origin: str | None,
    d: Dist,
    digests: list[str],
    elapsed: float,
) -> None:
    from safetensors.torch import save_file

    staging = out / f".export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    encoder.transformer.save_pretrained(staging, safe_serialization=True)
    _copy_sentence_transformers_files(student, staging)
    if encoder.projection is not None:
        save_file({"weight": encoder.projection.weight.detach().cpu().contiguous()}, staging / PROJECTION)
    min_layer = config.exit_min_layer(student.num_layers)
    manifest = {
        "mode": config.mode,
        "final_step": step,
        "total_steps": step,
        "elapsed_s": round(elapsed, 1),
        "config": config.to_dict(),
        "student": _describe(student),
        "teacher": _describe(teacher),
        "projection": None
        if encoder.projection is None
        else {"file": PROJECTION, "in": student.hidden_size, "out": teacher.hidden_size},
        "corpus": {
            "origin": corpus_origin,
            "sentences": inputs["sentences"],
            "sha256": inputs["corpus_sha256"],  # hashed once, at the start (resume checks it)
        },
        "teacher_cache_key": cache_key,
        "exit_policy": {"theta": 0.95, "patience": 1, "min_layer": min_layer},
        "world_size": d.world,
        "rank_weights_sha256": digests,
        "versions": {"torch": torch.__version__, "transformers": _version("transformers")},
    }
    (staging / "leap_config.json").write_text(json.dumps(manifest, indent=2) + "\n")
    ordinary_modes(staging)  # save_pretrained writes model.safetensors 0600
    for item in sorted(staging.iterdir()):  # leap_config.json last: its presence marks a finished folder
        if item.name != "leap_config.json":
            _replace(item, out / item.name)
    _replace(staging / "leap_config.json", out / "leap_config.json")
    staging.rmdir()


def _check_output_folder(out: Path, checkpoint_path: Path) -> None:
    """``out`` must be new, empty, or a run of ours in progress: the finished model replaces files by name."""
    if out.exists() and not out.is_dir():
        raise LeapError(f"--out {out} is a file, not a folder")
    if checkpoint_path.is_file() or not out.is_dir():
        return
    ours = {LOSS_LOG, Path(CHECKPOINT).parts[0]}  # what a run leaves before its first checkpoint lands
    foreign = sorted(
        p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(".export-")
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        what = "a finished training run" if "leap_config.json" in foreign else "files of its own"
        raise LeapError(
            f"--out {out} already holds {what} ({shown}) and no checkpoint to resume; training writes a model "
            "folder there and would replace files of the same name: pick a new or empty --out"
        )


def _replace(src: Path, dst: Path) -> None:
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def _copy_sentence_transformers_files(student: ModelSource, dst: Path) -> None:
    for name in ST_FILES:
        if (student.path / name).is_file():
            shutil.copy2(student.path / name, dst / name)
    for name in ST_DIRS:
        if (student.path / name).is_dir():
            shutil.copytree(student.path / name, dst / name)
    if not (dst / "modules.json").is_file():  # a plain HF folder: declare Transformer -> mean -> Normalize
        _write_default_modules(dst, student)


def _write_default_modules(dst: Path, student: ModelSource) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (dst / "modules.json").write_text(json.dumps(modules, indent=2))
    (dst / "1_Pooling").mkdir(exist_ok=True)
    (dst / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {"word_embedding_dimension": student.hidden_size, "pooling_mode_mean_tokens": True}, indent=2
        )
    )
    (dst / "2_Normalize").mkdir(exist_ok=True)
    if not (dst / "sentence_bert_config.json").is_file():
        (dst / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": student.max_seq_length, "do_lower_case": False})
        )


def _describe(src: ModelSource) -> dict[str, Any]:
    return {
        "spec": src.spec,
        "path": str(src.path),
        "weights_sha256": src.weights_sha256,
        "architecture": src.architecture,
        "num_layers": src.num_layers,
        "hidden_size": src.hidden_size,
    }


def _version(package: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- entry point for the CLI ------------------------------------------------------------------------


def load_sentences(
    corpus: str | os.PathLike | None,
    sentences_file: str | os.PathLike | None,
    max_sentences: int | None = None,
) -> tuple[list[str], str]:
    """Training sentences from a corpus folder's train split or a user file (txt/jsonl/csv),
    the first ``max_sentences`` of them; returns ``(sentences, origin)``."""
    if (corpus is None) == (sentences_file is None):
        raise LeapError(
            "give exactly one of --corpus DIR (a corpus folder with train.txt) or --sentences FILE"
        )
    from leap_export.data import corpus as corpus_io

    if corpus is not None:
        sentences, origin = corpus_io.load_split(Path(corpus), "train"), f"corpus:{corpus}:train"
    else:
        sentences, origin = corpus_io.read_user_file(Path(sentences_file)), f"file:{sentences_file}"
    if max_sentences is not None:
        if max_sentences < 1:
            raise LeapError("--max-sentences must be >= 1")
        sentences = sentences[:max_sentences]
    if not sentences:
        raise LeapError(f"no training sentences in {origin.split(':', 1)[1]}")
    return list(sentences), origin


def run_training(
    student: str,
    out: str | os.PathLike,
    *,
    teacher: str | None = None,
    corpus: str | os.PathLike | None = None,
    sentences_file: str | os.PathLike | None = None,
    max_sentences: int | None = None,
    config: LeapConfig | None = None,
    resume: bool = False,
    show_progress_bar: bool = True,
) -> Path:
    """What ``leap-export train`` does: load the sentences, then :func:`train`."""
    sentences, origin = load_sentences(corpus, sentences_file, max_sentences)
    return train(
        student,
        sentences,
        out,
        teacher=teacher,
        config=config,
        resume=resume,
        corpus_origin=origin,
        show_progress_bar=show_progress_bar,
    )
