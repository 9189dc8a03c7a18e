"""Each LEAP loss term against a value computed by hand on tiny tensors, and where gradients go."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from leap_export.errors import LeapError
from leap_export.train.config import LeapConfig
from leap_export.train.losses import (
    ContrastLoss,
    ExitLoss,
    FinalLoss,
    InterLoss,
    LateLoss,
    LeapLoss,
    RedundLoss,
    exit_layer_weights,
    uniform_layer_map,
)


def unit(*angles: float) -> torch.Tensor:
    """2-d unit vectors at the given angles (radians): cosines between them are cos(a - b)."""
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_uniform_layer_map_rounds_half_up():
    assert uniform_layer_map(6, 12) == [2, 4, 6, 8, 10, 12]
    assert uniform_layer_map(4, 4) == [1, 2, 3, 4]
    assert uniform_layer_map(4, 6) == [2, 3, 5, 6]  # 1.5 -> 2 and 4.5 -> 5 (banker's rounding gives 2, 4)


def test_final_loss_is_one_minus_cosine_of_last_layers():
    sp = torch.stack([unit(0.0, 0.0), unit(0.3, 1.0)])  # [L + 1 = 2, B = 2, 2]
    t = torch.stack([unit(1.0, 1.0), unit(0.0, 0.2)])
    expected = ((1 - math.cos(0.3)) + (1 - math.cos(0.8))) / 2
    assert FinalLoss()(sp, t).item() == pytest.approx(expected, abs=1e-6)


def test_inter_loss_uses_the_uniform_map():
    # student 2 layers, teacher 4: pi(1) = 2, pi(2) = 4
    sp = torch.stack([unit(9.0), unit(0.1), unit(0.2)])
    t = torch.stack([unit(9.0), unit(5.0), unit(0.4), unit(5.0), unit(0.7)])
    expected = ((1 - math.cos(0.3)) + (1 - math.cos(0.5))) / 2
    assert InterLoss(2, 4)(sp, t).item() == pytest.approx(expected, abs=1e-6)


def test_exit_loss_soft_margin_both_targets():
    # 3 student layers, one sample; weights: layer 1 early (0.1), layers 2-3 exit-eligible (1.0)
    w = exit_layer_weights(3, min_layer=2, early_weight=0.1)
    assert w.tolist() == pytest.approx([0.1, 1.0, 1.0])
    s = torch.stack([unit(9.0), unit(0.5), unit(0.2), unit(0.0)])
    t = torch.stack([unit(9.0), unit(9.0), unit(9.0), unit(0.1)])
    teacher, student = ExitLoss(w, tau=0.98, sharpness=10.0)(s, s, t)
    m = lambda c: sigmoid(10 * (0.98 - c))  # noqa: E731
    exp_teacher = (0.1 * m(math.cos(0.4)) + m(math.cos(0.1)) + m(math.cos(0.1))) / 3
    exp_student = (0.1 * m(math.cos(0.5)) + m(math.cos(0.2))) / 2
    assert teacher.item() == pytest.approx(exp_teacher, abs=1e-6)
    assert student.item() == pytest.approx(exp_student, abs=1e-6)


def test_exit_student_target_is_stop_gradient():
    w = exit_layer_weights(3, min_layer=2, early_weight=0.1)
    s = F.normalize(torch.randn(4, 5, 8), dim=-1).requires_grad_(True)
    t = F.normalize(torch.randn(4, 5, 8), dim=-1)
    _, student = ExitLoss(w, tau=0.98, sharpness=10.0)(s, s, t)
    (grad,) = torch.autograd.grad(student, s)
    assert grad[-1].abs().max().item() == 0.0  # nothing flows into the final layer through sg()
    assert grad[1:-1].abs().max().item() > 0.0  # the earlier layers are pulled towards it
    # without the stop-gradient the final layer would receive gradient: the test can fail
    m = torch.sigmoid(10 * (0.98 - (s[1:-1] * s[-1][None]).sum(-1))).mean()
    (grad_no_sg,) = torch.autograd.grad(m, s)
    assert grad_no_sg[-1].abs().max().item() > 0.0


def test_contrast_loss_is_kl_student_to_teacher_without_diagonal():
    s = unit(0.0, 0.5, 1.5)
    t = unit(0.0, 0.2, 2.0)
    tc = 0.5
    loss = ContrastLoss(tc)(s, t).item()

    def rows(angles):
        out = []
        for i, a in enumerate(angles):
            logits = [math.cos(a - b) / tc for j, b in enumerate(angles) if j != i]
            z = sum(math.exp(x) for x in logits)
            out.append([math.exp(x) / z for x in logits])
        return out

    ps, pt = rows([0.0, 0.5, 1.5]), rows([0.0, 0.2, 2.0])
    kl_st = (
        sum(p * math.log(p / q) for rs, rt in zip(ps, pt, strict=True) for p, q in zip(rs, rt, strict=True))
        / 3
    )
    kl_ts = (
        sum(q * math.log(q / p) for rs, rt in zip(ps, pt, strict=True) for p, q in zip(rs, rt, strict=True))
        / 3
    )
    assert loss == pytest.approx(kl_st, abs=1e-6)
    assert abs(kl_st - kl_ts) > 1e-4  # the two orders differ here, so the order is really checked
    assert ContrastLoss(tc)(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_late_loss_sqrt_and_zero_gap_gradient_is_finite():
    s = torch.stack([unit(9.0), unit(0.3), unit(0.1), unit(0.0)])  # 3 layers
    loss = LateLoss(range(1, 3))(s)
    expected = (math.sqrt(1 - math.cos(0.3)) + math.sqrt(1 - math.cos(0.1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    same = torch.stack([unit(0.0)] * 3).requires_grad_(True)  # every layer equals the final one
    (grad,) = torch.autograd.grad(LateLoss(range(1, 2))(same), same)
    assert torch.isfinite(grad).all()


def test_redund_loss_caps_adjacent_distances_at_margin():
    s = torch.stack([unit(9.0), unit(0.0), unit(0.05), unit(1.0)])  # steps of 0.05 rad and 0.95 rad
    d1 = math.sqrt(2 - 2 * math.cos(0.05))  # ~0.05 < margin
    loss = RedundLoss(margin=0.1)(s)
    assert loss.item() == pytest.approx(-(d1 + 0.1) / 2, abs=1e-6)
    collapsed = torch.stack([unit(0.0)] * 3).requires_grad_(True)
    (grad,) = torch.autograd.grad(RedundLoss(0.1)(collapsed), collapsed)
    assert torch.isfinite(grad).all()


def test_leap_loss_combines_terms_with_table14_weights_and_ramp():
    torch.manual_seed(0)
    s = F.normalize(torch.randn(4, 6, 8), dim=-1)
    t = F.normalize(torch.randn(4, 6, 8), dim=-1)
    c = LeapConfig()
    out = LeapLoss(c, 3, 3)(s, s, t, ramp=0.5)
    terms = out.terms
    assert terms["exit"].item() == pytest.approx(
        terms["exit_teacher"].item() + 0.7 * 0.5 * terms["exit_student"].item(), abs=1e-6
    )
    expected = (
        terms["final"]
        + 0.3 * terms["inter"]
        + 0.4 * terms["exit"]
        + 0.3 * terms["contrast"]
        + 0.2 * terms["late"]
        + 0.05 * terms["redund"]
    )
    assert out.total.item() == pytest.approx(expected.item(), abs=1e-6)
    baseline = LeapLoss(LeapConfig(beta_exit=0.0), 3, 3)(s, s, t, ramp=0.5)
    assert baseline.total.item() == pytest.approx(expected.item() - 0.4 * terms["exit"].item(), abs=1e-6)


def test_exit_layer_contrast_is_the_mean_contrast_over_exit_layers():
    """Off by default (the paper's objective); when on: L_contrast of each layer min_layer..L-1 vs the
    student's own final embedding (stop-gradient), averaged, and weighted by zeta_contrast_exit."""
    torch.manual_seed(1)
    s = F.normalize(torch.randn(7, 5, 8), dim=-1)  # embeddings + 6 layers
    t = F.normalize(torch.randn(7, 5, 8), dim=-1)
    assert LeapLoss(LeapConfig(), 6, 6)(s, s, t, ramp=1.0).terms["contrast_exit"].item() == 0.0
    on = LeapLoss(LeapConfig(zeta_contrast_exit=2.0, min_layer=3), 6, 6)(s, s, t, ramp=1.0)
    c = ContrastLoss(0.05)
    want = sum(c(s[layer], s[-1]).item() for layer in (3, 4, 5)) / 3
    assert on.terms["contrast_exit"].item() == pytest.approx(want, rel=1e-6)
    off = LeapLoss(LeapConfig(min_layer=3), 6, 6)(s, s, t, ramp=1.0)
    assert on.total.item() == pytest.approx(off.total.item() + 2.0 * want, rel=1e-6)
    assert LeapConfig(zeta_contrast_exit=2.0).as_baseline().zeta_contrast_exit == 0
    # the target is stop-gradient: the term moves the exit layers, not the final one
    s_grad = s.clone().requires_grad_(True)
    LeapLoss(
        LeapConfig(
            zeta_contrast_exit=1.0,
            min_layer=3,
            alpha_inter=0,
            beta_exit=0,
            delta_contrast=0,
            epsilon_late=0,
            gamma_redund=0,
        ),
        6,
        6,
    )(s_grad, s_grad, t, ramp=1.0).terms["contrast_exit"].backward()
    assert s_grad.grad[3:6].abs().sum() > 0 and s_grad.grad[6].abs().sum() == 0


def test_config_defaults_and_layer_choices():
    c = LeapConfig()
    assert (c.alpha_inter, c.beta_exit, c.beta_student, c.gamma_redund, c.delta_contrast, c.epsilon_late) == (
        0.3,
        0.4,
        0.7,
        0.05,
        0.3,
        0.2,
    )
    assert (c.tau, c.lr, c.warmup_ratio, c.schedule) == (0.98, 5e-5, 0.1, "cosine")
    assert list(c.late_layer_range(12)) == [9, 10, 11]
    assert list(c.late_layer_range(6)) == [3, 4, 5]
    assert c.exit_min_layer(12) == 6 and c.exit_min_layer(6) == 3
    assert [c.student_ramp(p) for p in (0.0, 0.1, 0.35, 0.6, 1.0)] == pytest.approx([0, 0, 0.5, 1, 1])
    assert LeapConfig(beta_exit=0, epsilon_late=0).mode == "baseline" and c.mode == "leap"
    assert LeapConfig(beta_exit=0).mode == "leap"  # L_late still pulls the late layers toward the final one
    with pytest.raises(LeapError, match="steps or epochs"):
        LeapConfig(steps=3, epochs=1.0)


def test_baseline_drops_every_exit_term():
    c = LeapConfig(beta_exit=4.0, epsilon_late=2.0, alpha_inter=0.1)
    base = c.as_baseline()
    assert base.beta_exit == 0 and base.epsilon_late == 0 and base.mode == "baseline"
    assert base.alpha_inter == 0.1 and base.delta_contrast == c.delta_contrast  # everything else identical


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (dict(min_layer=0), "min_layer must be >= 1"),  # layer 0 is the embedding output, not a layer
        (dict(min_layer=-1), "min_layer must be >= 1"),
        (dict(late_layers=-2), "late_layers must be >= 0"),
        (dict(exit_sharpness=-10.0), "exit_sharpness must be > 0"),  # would push layers away from the final
        (dict(exit_sharpness=0.0), "exit_sharpness must be > 0"),  # a constant: no gradient at all
        (dict(grad_clip=0.0), "grad_clip must be > 0"),  # clipping to 0 zeroes every gradient
        (dict(warmup_ratio=-0.5), "warmup_ratio must be in [0, 1]"),
        (dict(warmup_ratio=2.0), "warmup_ratio must be in [0, 1]"),
        (dict(weight_decay=-1.0), "weight_decay must be >= 0"),
        (dict(redund_margin=-0.1), "redund_margin must be >= 0"),
        (dict(exit_early_weight=-1.0), "exit_early_weight must be >= 0"),
    ],
)
def test_config_refuses_numbers_that_train_nonsense(setting, message):
    with pytest.raises(LeapError, match=re.escape(message)):
        LeapConfig(**setting)


def test_exit_student_term_uses_the_unprojected_student_embeddings():
    """With a width projection (student narrower than teacher), L_exit^(t) compares the projected layers with
    the teacher, but L_exit^(s) the student's own unprojected layers with its unprojected final layer: those are
    the vectors the exported runtime exits on (the projection is not part of the exported model)."""
    w = exit_layer_weights(3, min_layer=2, early_weight=0.1)
    s = torch.stack([unit(9.0), unit(0.5), unit(0.2), unit(0.0)])  # width 2
    # projected to width 3 by a map that does not keep angles: cosines among sp differ from those among s
    sp = F.normalize(torch.cat([s, torch.tensor([0.0, 2.0, -1.0, 0.5]).view(4, 1, 1)], dim=-1), dim=-1)
    t = F.normalize(
        torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]], [[1.0, 0.2, 0.1]]]), dim=-1
    )
    teacher, student = ExitLoss(w, tau=0.98, sharpness=10.0)(sp, s, t)
    m = lambda c: sigmoid(10 * (0.98 - c))  # noqa: E731
    exp_student = (0.1 * m(math.cos(0.5)) + m(math.cos(0.2))) / 2
    cos_t = (sp[1:, 0] * t[-1, 0]).sum(-1).tolist()
    exp_teacher = (0.1 * m(cos_t[0]) + m(cos_t[1]) + m(cos_t[2])) / 3
    assert student.item() == pytest.approx(exp_student, abs=1e-6)
    assert teacher.item() == pytest.approx(exp_teacher, abs=1e-6)
    cos_sp = (
        (sp[1:3, 0] * sp[3, 0]).sum(-1).tolist()
    )  # what the projected vectors would give: really different
    assert abs((0.1 * m(cos_sp[0]) + m(cos_sp[1])) / 2 - exp_student) > 1e-3


def test_leap_loss_weights_each_term_by_its_own_setting():
    """Table 14 gives alpha and delta the same 0.3 (and the default test cannot tell them apart): with every
    weight distinct, each term must be scaled by its own setting."""
    torch.manual_seed(2)
    s = F.normalize(torch.randn(4, 6, 8), dim=-1)
    t = F.normalize(torch.randn(4, 6, 8), dim=-1)
    c = LeapConfig(
        alpha_inter=0.11,
        beta_exit=0.23,
        beta_student=0.37,
        gamma_redund=0.41,
        delta_contrast=0.53,
        epsilon_late=0.67,
        zeta_contrast_exit=0.79,
        min_layer=1,
    )
    out = LeapLoss(c, 3, 3)(s, s, t, ramp=0.5)
    x = {k: v.item() for k, v in out.terms.items()}
    assert all(
        abs(x[k]) > 1e-3 for k in ("inter", "contrast", "contrast_exit", "late", "redund", "exit_student")
    )
    expected = (
        x["final"]
        + 0.11 * x["inter"]
        + 0.23 * (x["exit_teacher"] + 0.37 * 0.5 * x["exit_student"])
        + 0.53 * x["contrast"]
        + 0.79 * x["contrast_exit"]
        + 0.67 * x["late"]
        + 0.41 * x["redund"]
    )
    assert out.total.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("detach", [False, True])
def test_late_loss_moves_the_final_layer_unless_late_detach_final(detach):
    """Eq. 8 has no stop-gradient (default): L_late pulls the final layer too. ``late_detach_final`` stops
    it there, through LeapLoss as well as LateLoss."""
    torch.manual_seed(3)
    s = F.normalize(torch.randn(4, 5, 8), dim=-1).requires_grad_(True)
    sp = s.detach().clone()  # L_final and L_inter act on sp: s gets gradient only from the other terms
    t = F.normalize(torch.randn(4, 5, 8), dim=-1)
    only_late = LeapConfig(
        alpha_inter=0,
        beta_exit=0,
        delta_contrast=0,
        gamma_redund=0,
        epsilon_late=1.0,
        late_layers=2,
        late_detach_final=detach,
    )
    LeapLoss(only_late, 3, 3)(s, sp, t, ramp=1.0).total.backward()
    assert s.grad[1:3].abs().sum() > 0  # the late layers move
    assert (s.grad[3].abs().sum().item() > 0) is not detach


def test_exit_weights_and_late_layers_follow_the_students_depth():
    """A 6-layer student of a 12-layer teacher: l_min = 3 and L_late on 3..5 (the student's layers, not the
    teacher's 6 and 9..11)."""
    loss = LeapLoss(LeapConfig(), 6, 12)
    assert loss.exit.weights.tolist() == pytest.approx([0.1, 0.1, 1.0, 1.0, 1.0, 1.0])
    assert loss.late.layers == [3, 4, 5]
    assert loss.exit_layers == [3, 4, 5]
