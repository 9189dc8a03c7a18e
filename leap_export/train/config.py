"""Every LEAP training hyperparameter in one dataclass (defaults: the paper's Table 14 / Appendix B.2)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from leap_export.errors import LeapError


@dataclass
class LeapConfig:
    # --- loss weights (Table 14) ---------------------------------------------------------------
    alpha_inter: float = 0.3
    beta_exit: float = 0.4  # 0.0 with epsilon_late 0: the paper's baseline (as_baseline)
    beta_student: float = 0.7  # weight of the student-self exit target inside L_exit
    gamma_redund: float = 0.05
    delta_contrast: float = 0.3
    epsilon_late: float = 0.2
    # Not in the paper (0 = the paper's objective): L_contrast also at every exit-capable layer
    # (min_layer..L-1), each against a stop-gradient copy of the student's own final embedding (the target
    # L_exit^(s) uses). L_exit aligns each sample with its own final embedding; this aligns the in-batch
    # neighbourhoods, which is what NN@10 between exited and full-depth embeddings measures.
    zeta_contrast_exit: float = 0.0
    # --- loss shapes ----------------------------------------------------------------------------
    tau: float = 0.98  # training exit threshold (inference uses theta = 0.95)
    exit_sharpness: float = 10.0  # sigmoid(sharpness * (tau - cos))
    # 0.05 is the usual in-batch contrastive temperature (SimCSE; sentence-transformers' MNRL scale 20):
    # cosines of sentence embeddings spread over roughly [0, 0.9], so /0.05 gives a peaked but not
    # one-hot neighbour distribution; much larger flattens it into noise, much smaller into argmax.
    contrast_temperature: float = 0.05
    # Adjacent normalised embeddings with cos c are sqrt(2 - 2c) apart; tau = 0.98 means <= 0.2.
    # A margin of 0.1 (cos ~0.995) stops exact collapse of neighbouring layers without pushing
    # them apart beyond what the exit terms ask for.
    redund_margin: float = 0.1
    # Exit-loss layer weights: layers >= min_layer get 1.0, earlier ones exit_early_weight
    # (paper: concentrated on layers 6-11 of 12). None: num_layers // 2 (the paper's l_min).
    min_layer: int | None = None
    exit_early_weight: float = 0.1
    # L_late layers: the last `late_layers` layers before the final one (paper: 9-11 of 12).
    # None: max(3, L // 4) -> 9..11 for 12 layers, 3..5 for 6 layers.
    late_layers: int | None = None
    # Stop the gradient of L_late at the student's final embedding, as L_exit^(s) does. The paper's eq. 8
    # has no stop-gradient (default False); with a large epsilon_late it drags the final layer toward
    # the intermediate ones and away from the teacher, which short CPU runs cannot afford.
    late_detach_final: bool = False
    # Student-self exit weight ramps linearly 0 -> 1 between these fractions of training.
    ramp_start: float = 0.1
    ramp_end: float = 0.6
    # --- optimisation (Table 14) ----------------------------------------------------------------
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    grad_clip: float = 1.0
    # Student dropout: None keeps the checkpoint's (0.1 for BERT/MPNet). 0 suits short self-distillation
    # runs: the distillation terms then start at exactly 0 and their gradients are not dropout noise.
    dropout: float | None = None
    batch_size: int = 64  # global: split evenly over DDP ranks
    max_length: int = 128
    # Length-grouped batches: each run of `group_by_length` consecutive batches of an epoch is drawn as one
    # random pool, sorted by text length and cut into batches (then shuffled), so a batch pads to texts of
    # like length. 0 (default): plain random batches. Worth it once a corpus mixes sentences and passages:
    # a random batch of 32 then almost always holds a passage and pads every sentence to its length.
    group_by_length: int = 0
    steps: int | None = None  # exactly one of steps / epochs; neither: 1 epoch
    epochs: float | None = None
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        wrong = [
            f"{f.name} must be {f.type}{' (finite)' if 'float' in f.type else ''}, got {getattr(self, f.name)!r}"
            for f in fields(self)
            if not _has_type(getattr(self, f.name), f.type)
        ]
        if wrong:  # e.g. --set tau=abc: say so, before a comparison of str with float fails inside
            raise LeapError("invalid training configuration: " + "; ".join(wrong))
        problems = []
        for name in (
            "alpha_inter",
            "beta_exit",
            "beta_student",
            "gamma_redund",
            "delta_contrast",
            "zeta_contrast_exit",
            "epsilon_late",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if not 0 < self.tau <= 1:
            problems.append("tau must be in (0, 1]")
        if (
            self.exit_sharpness <= 0
        ):  # negative flips the soft margin: it would push layers away from the final
            problems.append("exit_sharpness must be > 0")
        if self.exit_early_weight < 0:
            problems.append("exit_early_weight must be >= 0")
        if self.redund_margin < 0:
            problems.append("redund_margin must be >= 0")
        if self.min_layer is not None and self.min_layer < 1:  # layer 0 is the embedding output
            problems.append("min_layer must be >= 1 (the first transformer layer an exit may follow)")
        if self.late_layers is not None and self.late_layers < 0:
            problems.append("late_layers must be >= 0")
        if self.weight_decay < 0:
            problems.append("weight_decay must be >= 0")
        if not 0 <= self.warmup_ratio <= 1:
            problems.append("warmup_ratio must be in [0, 1]")
        if self.grad_clip <= 0:  # clipping to norm 0 zeroes every gradient: the run would not learn
            problems.append("grad_clip must be > 0")
        if self.contrast_temperature <= 0:
            problems.append("contrast_temperature must be > 0")
        if not 0 <= self.ramp_start <= self.ramp_end <= 1:
            problems.append("need 0 <= ramp_start <= ramp_end <= 1")
        if self.lr <= 0:
            problems.append("lr must be > 0")
        if self.batch_size < 2:
            problems.append("batch_size must be >= 2 (the contrastive term compares sentences in a batch)")
        if self.max_length < 2:
            problems.append("max_length must be >= 2")
        if self.group_by_length < 0:
            problems.append("group_by_length must be >= 0 (0: random batches)")
        if self.steps is not None and self.epochs is not None:
            problems.append("give steps or epochs, not both")
        if self.steps is not None and self.steps < 1:
            problems.append("steps must be >= 1")
        if self.epochs is not None and self.epochs <= 0:
            problems.append("epochs must be > 0")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if self.seed < 0:
            problems.append("seed must be >= 0")
        if self.checkpoint_every < 1:
            problems.append("checkpoint_every must be >= 1")
        if self.schedule not in ("cosine", "linear", "constant"):
            problems.append("schedule must be cosine, linear or constant")
        if problems:
            raise LeapError("invalid training configuration: " + "; ".join(problems))

    @property
    def mode(self) -> str:
        # "baseline" only without every term that pulls intermediate layers toward the final one: with
        # beta_exit 0 alone, L_late (and the exit-layer contrast) still train the exit machinery
        exit_terms = (self.beta_exit, self.epsilon_late, self.zeta_contrast_exit)
        return "baseline" if not any(exit_terms) else "leap"

    def as_baseline(self) -> LeapConfig:
        """The controlled baseline: the identical pipeline without the terms that pull intermediate layers
        toward the final one, L_exit and L_late (both exit machinery, Appendix H; and the exit-layer contrast
        term), as in the paper's
        ablation (Table 11: L_final + L_inter + L_contrast)."""
        return replace(self, beta_exit=0.0, epsilon_late=0.0, zeta_contrast_exit=0.0)

    def total_steps(self, num_sentences: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil((self.epochs or 1.0) * num_sentences / self.batch_size))

    def exit_min_layer(self, num_layers: int) -> int:
        return self.min_layer if self.min_layer is not None else max(1, num_layers // 2)

    def late_layer_range(self, num_layers: int) -> range:
        count = self.late_layers if self.late_layers is not None else max(3, num_layers // 4)
        return range(max(1, num_layers - count), num_layers)

    def student_ramp(self, progress: float) -> float:
        """Weight of the student-self exit target at ``progress`` in [0, 1] of training."""
        if self.ramp_end <= self.ramp_start:
            return float(progress >= self.ramp_start)
        return min(1.0, max(0.0, (progress - self.ramp_start) / (self.ramp_end - self.ramp_start)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LeapConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LeapError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _has_type(value: Any, annotation: str) -> bool:
    """``value`` fits a field annotated ``float``, ``int | None``, ``bool`` or ``str``; floats must be finite
    (an lr of nan or inf trains a model of NaNs)."""
    allowed = {part.strip() for part in annotation.split("|")}
    if value is None:
        return "None" in allowed
    if isinstance(value, bool):
        return "bool" in allowed
    if isinstance(value, int):
        return "int" in allowed or "float" in allowed
    if isinstance(value, float):
        return "float" in allowed and math.isfinite(value)
    return isinstance(value, str) and "str" in allowed


def parse_settings(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["alpha_inter=0.1", "min_layer=3"]`` -> typed LeapConfig overrides (JSON values; ``none`` -> None)."""
    known = {f.name for f in fields(LeapConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise LeapError(f"--set {item!r}: expected KEY=VALUE, e.g. beta_exit=2.0")
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise LeapError(
                f"--set {item!r}: unknown setting {key!r}; {hint}settings: {', '.join(sorted(known))}"
            )
        try:
            out[key] = None if raw.strip().lower() in ("none", "null") else json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
