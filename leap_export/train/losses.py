"""The LEAP objective (paper §3.2, eq. 3-5; Appendix H, eq. 7-9), one small module per term.

Shapes: ``s`` is the student's normalised masked-mean embedding of every layer, ``[Ls + 1, B, Hs]``
(index 0 = embedding output, unused by the loss); ``sp`` the same projected to the teacher's width and
renormalised, ``[Ls + 1, B, Ht]``; ``t`` the teacher's, ``[Lt + 1, B, Ht]``. All embeddings are unit
vectors, so a dot product is a cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leap_export.train.config import LeapConfig


def cos(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of unit vectors, ``[..., H] x [..., H] -> [...]``."""
    return (a * b).sum(-1)


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """pi(l) = round(l * Lt / Ls) for l = 1..Ls, rounding halves up (not Python's banker's rounding)."""
    return [int(layer * teacher_layers / student_layers + 0.5) for layer in range(1, student_layers + 1)]


def exit_layer_weights(num_layers: int, min_layer: int, early_weight: float) -> Tensor:
    """w_l for l = 1..L: 1 from ``min_layer`` on (the layers that may exit), ``early_weight`` before."""
    return torch.tensor([1.0 if layer >= min_layer else early_weight for layer in range(1, num_layers + 1)])


class FinalLoss(nn.Module):
    """L_final = 1 - cos(e_s^Ls, e_t^Lt)."""

    def forward(self, sp: Tensor, t: Tensor) -> Tensor:
        return (1 - cos(sp[-1], t[-1])).mean()


class InterLoss(nn.Module):
    """L_inter = 1/Ls sum_l (1 - cos(e_s^l, e_t^pi(l))), uniform mapping pi."""

    def __init__(self, student_layers: int, teacher_layers: int) -> None:
        super().__init__()
        self.register_buffer("teacher_index", torch.tensor(uniform_layer_map(student_layers, teacher_layers)))

    def forward(self, sp: Tensor, t: Tensor) -> Tensor:
        return (1 - cos(sp[1:], t[self.teacher_index])).mean()


class ExitLoss(nn.Module):
    """Soft-margin exit terms: w_l * sigmoid(k (tau - cos)) against two targets (eq. 4 and 5).

    Returns ``(teacher_term, student_term)``; the student term compares every layer before the last
    with a stop-gradient copy of the student's own final embedding, so it only moves earlier layers.
    """

    def __init__(self, weights: Tensor, tau: float, sharpness: float) -> None:
        super().__init__()
        self.register_buffer("weights", weights.float())  # [Ls], layers 1..Ls
        self.tau = tau
        self.sharpness = sharpness

    def margin(self, similarity: Tensor) -> Tensor:
        return torch.sigmoid(self.sharpness * (self.tau - similarity))

    def forward(self, sp: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weights[:, None]
        teacher = (w * self.margin(cos(sp[1:], t[-1][None]))).mean()  # 1/Ls sum_{l=1..Ls}
        final = s[-1].detach()  # sg(e_s^Ls)
        student = (w[:-1] * self.margin(cos(s[1:-1], final[None]))).mean()  # 1/(Ls-1) sum_{l<Ls}
        return teacher, student


class ContrastLoss(nn.Module):
    """L_contrast = KL(P_s || P_t), P = row-softmax(S / tau_c) over in-batch cosine similarities.

    The order is the paper's: the student's distribution comes first. ``F.kl_div(input, target)``
    computes KL(target || exp(input)), so the *teacher* log-probabilities are the input and the
    student's the target. Self-similarities (the diagonal, always 1) are left out: they would
    dominate every row at tau_c = 0.05 and carry no information.
    """

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def _log_probs(self, e: Tensor) -> Tensor:
        n = e.shape[0]
        sim = e @ e.T
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=e.device)
        return F.log_softmax(sim[off_diagonal].view(n, n - 1) / self.temperature, dim=-1)

    def forward(self, s_final: Tensor, t_final: Tensor) -> Tensor:
        if s_final.shape[0] < 2:
            return s_final.new_zeros(())
        log_ps, log_pt = self._log_probs(s_final), self._log_probs(t_final)
        return F.kl_div(log_pt, log_ps, reduction="batchmean", log_target=True)


class LateLoss(nn.Module):
    """L_late = mean over late layers of (1 - cos(e_s^l, e_s^Ls))^0.5 (eq. 8).

    The square root's gradient is infinite at 0, so 1 - cos is clamped at ``eps`` first.
    """

    def __init__(self, layers: range, eps: float = 1e-6, detach_final: bool = False) -> None:
        super().__init__()
        self.layers = list(layers)
        self.eps = eps
        self.detach_final = detach_final  # sg(e_s^Ls): only the late layers move, not the final one

    def forward(self, s: Tensor) -> Tensor:
        if not self.layers:
            return s.new_zeros(())
        final = s[-1].detach() if self.detach_final else s[-1]
        gap = (1 - cos(s[self.layers], final[None])).clamp(min=self.eps)
        return gap.sqrt().mean()


class RedundLoss(nn.Module):
    """L_redund = -1/(Ls-1) sum_l min(||e^{l+1} - e^l||, margin) (eq. 9): keeps adjacent layers apart."""

    def __init__(self, margin: float, eps: float = 1e-12) -> None:
        super().__init__()
        self.margin = margin
        self.eps = eps

    def forward(self, s: Tensor) -> Tensor:
        if s.shape[0] < 3:  # one layer: no adjacent pair
            return s.new_zeros(())
        step = ((s[2:] - s[1:-1]) ** 2).sum(-1).clamp(min=self.eps).sqrt()  # guarded norm
        return -step.clamp(max=self.margin).mean()


TERMS = (
    "final",
    "inter",
    "exit_teacher",
    "exit_student",
    "exit",
    "contrast",
    "contrast_exit",
    "late",
    "redund",
)


@dataclass
class LossOutput:
    total: Tensor
    terms: dict[str, Tensor]

    def as_floats(self) -> dict[str, float]:
        return {"total": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.terms.items()}}


class LeapLoss(nn.Module):
    """L = L_final + a L_inter + b L_exit + d L_contrast + e L_late + g L_redund (eq. 7)
    [+ z L_contrast at the exit layers, not in the paper, off by default],
    L_exit = L_exit^(t) + beta_student * ramp * L_exit^(s). ``beta_exit = 0`` is the baseline."""

    def __init__(self, config: LeapConfig, student_layers: int, teacher_layers: int) -> None:
        super().__init__()
        self.config = config
        min_layer = config.exit_min_layer(student_layers)
        self.final = FinalLoss()
        self.inter = InterLoss(student_layers, teacher_layers)
        self.exit = ExitLoss(
            exit_layer_weights(student_layers, min_layer, config.exit_early_weight),
            config.tau,
            config.exit_sharpness,
        )
        self.contrast = ContrastLoss(config.contrast_temperature)
        self.exit_layers = list(range(min_layer, student_layers))  # exit-capable layers before the last
        self.late = LateLoss(config.late_layer_range(student_layers), detach_final=config.late_detach_final)
        self.redund = RedundLoss(config.redund_margin)

    def forward(self, s: Tensor, sp: Tensor, t: Tensor, ramp: float) -> LossOutput:
        c = self.config
        exit_teacher, exit_student = self.exit(sp, s, t)
        terms = {
            "final": self.final(sp, t),
            "inter": self.inter(sp, t),
            "exit_teacher": exit_teacher,
            "exit_student": exit_student,
            "exit": exit_teacher + c.beta_student * ramp * exit_student,
            "contrast": self.contrast(s[-1], t[-1]),
            "contrast_exit": (
                torch.stack([self.contrast(s[layer], s[-1].detach()) for layer in self.exit_layers]).mean()
                if self.exit_layers and c.zeta_contrast_exit
                else s.new_zeros(())
            ),
            "late": self.late(s),
            "redund": self.redund(s),
        }
        total = (
            terms["final"]
            + c.alpha_inter * terms["inter"]
            + c.beta_exit * terms["exit"]
            + c.delta_contrast * terms["contrast"]
            + c.zeta_contrast_exit * terms["contrast_exit"]
            + c.epsilon_late * terms["late"]
            + c.gamma_redund * terms["redund"]
        )
        return LossOutput(total, terms)
