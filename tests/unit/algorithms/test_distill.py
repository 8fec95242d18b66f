"""Distillation and SFT mixing math (rlkit/algorithms/distill.py), KDRL, the mixers, pg_coef: values by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.algorithms.distill import (
    ReliftBuffer,
    hard_prompts,
    hpt_switch,
    kdrl_row_mask,
    paced_weights,
    prompt_fingerprint,
    scheduled_coef,
    sft_nll,
)
from rlkit.algorithms.losses import GRPOLoss, LossInputs
from rlkit.algorithms.mixing import HPT, PACED, ReLIFT
from rlkit.algorithms.regularizers import KDRL

LN2 = math.log(2.0)


def _kd_inputs(rows: int = 1, kd_weights=None, teacher=None):
    # student [ln 0.5, ln 0.25], teacher [ln 0.25, ln 0.25] per row: Δ = [ln 2, 0]
    lp = torch.log(torch.tensor([[0.5, 0.25]] * rows)).requires_grad_()
    t = torch.log(torch.tensor([[0.25, 0.25]] * rows)) if teacher is None else teacher
    mask = torch.ones(rows, 2, dtype=torch.bool)
    return lp, LossInputs(logprobs=lp, mask=mask, advantages=torch.zeros(rows), teacher_logprobs=t,
                          kd_weights=kd_weights)


# ------------------------------------------------------------------------------------------------ KDRL


@pytest.mark.parametrize("kind, loss, grad", [
    # k1 = Δ: token-mean (ln2 + 0)/2; ∇ = 1/2 per token
    ("k1", LN2 / 2, [0.5, 0.5]),
    # k2 = Δ²/2 = [(ln2)²/2, 0]; token-mean (ln2)²/4; ∇ = Δ/2 = [ln2/2, 0]
    ("k2", LN2 ** 2 / 4, [LN2 / 2, 0.0]),
    # k3 = e^{-Δ} + Δ - 1 = [0.5 + ln2 - 1, 0]; token-mean (ln2 - 0.5)/2; ∇ = (1 - e^{-Δ})/2 = [0.25, 0]
    ("k3", (LN2 - 0.5) / 2, [0.25, 0.0]),
])
def test_kdrl_loss_and_gradient_by_hand(kind, loss, grad):
    lp, inputs = _kd_inputs()
    out = KDRL(kind=kind)(inputs)
    assert float(out.loss.detach()) == pytest.approx(loss, rel=1e-6)
    out.loss.backward()
    torch.testing.assert_close(lp.grad, torch.tensor([grad]), rtol=1e-6, atol=1e-7)
    # kd/kl is the k3 token mean whatever the kind: (ln2 - 0.5 + 0)/2; one row, weight 1
    assert float(out.metrics["kd/kl"]) == pytest.approx((LN2 - 0.5) / 2, rel=1e-6)
    assert float(out.metrics["kd/active_frac"]) == 1.0
    assert not out.metrics["kd/kl"].requires_grad


@pytest.mark.parametrize("kind", ["k2", "k3"])
def test_teacher_equal_to_student_gives_no_kl_and_no_gradient(kind):
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.125]])).requires_grad_()
    inputs = LossInputs(logprobs=lp, mask=torch.ones(1, 3, dtype=torch.bool), advantages=torch.zeros(1),
                        teacher_logprobs=lp.detach().clone())
    out = KDRL(kind=kind)(inputs)
    out.loss.backward()
    assert float(out.metrics["kd/kl"]) == 0.0  # e^0 + 0 - 1
    assert torch.equal(lp.grad, torch.zeros(1, 3))  # k2: Δ = 0; k3: 1 - e^0 = 0


def test_kd_row_weights_scale_rows_and_count_active_rows():
    # two identical rows, weights [0, 2]; 4 response tokens in all
    lp, inputs = _kd_inputs(rows=2, kd_weights=torch.tensor([0.0, 2.0]))
    out = KDRL(kind="k2")(inputs)
    # (0 * (ln2)²/2 + 2 * (ln2)²/2) / 4 = (ln2)²/4
    assert float(out.loss.detach()) == pytest.approx(LN2 ** 2 / 4, rel=1e-6)
    out.loss.backward()
    lp_plain, plain = _kd_inputs(rows=2)
    KDRL(kind="k2")(plain).loss.backward()
    # unweighted: ∇ = Δ/4 = [ln2/4, 0] per row; weighted: row 0 exactly 0, row 1 twice that
    torch.testing.assert_close(lp_plain.grad, torch.tensor([[LN2 / 4, 0.0]] * 2))
    assert torch.equal(lp.grad[0], torch.zeros(2))
    torch.testing.assert_close(lp.grad[1], 2 * lp_plain.grad[1])
    assert float(out.metrics["kd/active_frac"]) == 0.5  # 1 of 2 rows has weight > 0


def test_kdrl_errors_name_what_is_wrong():
    _, inputs = _kd_inputs()
    inputs.teacher_logprobs = None
    with pytest.raises(ValueError, match="KDRL needs LossInputs.teacher_logprobs"):
        KDRL()(inputs)
    with pytest.raises(ValueError, match="kind: unknown KL estimator 'k4'"):
        KDRL(kind="k4")
    with pytest.raises(ValueError, match="mask: unknown KD mask 'all'; choose one of none, incorrect, group"):
        KDRL(mask="all")
    with pytest.raises(ValueError, match=r"pass_gate: must be in \[0, 1\], got 1.5"):
        KDRL(pass_gate=1.5)


def test_kdrl_row_mask_modes():
    # group 0: 1 of 4 correct (pass rate 0.25); group 1: 3 of 4 (0.75)
    correct = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0], dtype=torch.bool)
    gids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert torch.equal(kdrl_row_mask(correct, gids, "none"), torch.ones(8))
    assert torch.equal(kdrl_row_mask(correct, gids, "incorrect"), torch.tensor([0., 1, 1, 1, 0, 0, 0, 1]))
    assert torch.equal(kdrl_row_mask(correct, gids, "group", pass_gate=0.5), torch.tensor([1.] * 4 + [0.] * 4))
    # the gate is inclusive: a pass rate of 0.75 <= 0.75 is consulted too
    assert torch.equal(kdrl_row_mask(correct, gids, "group", pass_gate=0.75), torch.ones(8))
    # KDRL.row_weights reads its own settings
    assert torch.equal(KDRL(mask="incorrect").row_weights(correct, gids), (~correct).float())
    with pytest.raises(ValueError, match="unknown KD mask 'bogus'"):
        kdrl_row_mask(correct, gids, "bogus")


# ------------------------------------------------------------------------------------------------ PACED


def test_paced_weights_by_hand():
    p = torch.tensor([0.5, 0.25, 0.0, 1.0])
    # w = p (1 - p): 0.5*0.5 = 0.25, 0.25*0.75 = 0.1875, 0, 0
    torch.testing.assert_close(paced_weights(p, normalise=False), torch.tensor([0.25, 0.1875, 0.0, 0.0]))
    # alpha 2, beta 1 at 0.5: 0.25 * 0.5 = 0.125
    assert float(paced_weights(torch.tensor([0.5]), alpha=2.0, beta=1.0, normalise=False)[0]) == pytest.approx(0.125)
    # normalised: mean of w = 0.4375/4 = 0.109375 -> [0.25/0.109375, 0.1875/0.109375, 0, 0] = [16/7, 12/7, 0, 0]
    w = paced_weights(p)
    torch.testing.assert_close(w, torch.tensor([16 / 7, 12 / 7, 0.0, 0.0]))
    assert float(w.mean()) == pytest.approx(1.0)
    assert torch.equal(paced_weights(torch.tensor([0.0, 1.0, 1.0])), torch.zeros(3))
    with pytest.raises(ValueError, match="PACED alpha and beta must be > 0, got 0.0, 1.0"):
        paced_weights(p, alpha=0.0)


def test_paced_mixer_switches_from_demonstrations_to_teacher():
    mixer = PACED(switch_step=3)
    # counts [2, 0, 1, 4] of 4 -> p [0.5, 0, 0.25, 1] -> normalised w [16/7, 0, 12/7, 0] (as above)
    counts = torch.tensor([2, 0, 1, 4])
    has_demo = [True, True, False, True]
    fwd = mixer.plan(1, counts, 4, has_demo)
    # group 0 (w > 0, demo); group 1 and 3 have w = 0; group 2 has no demonstration
    assert fwd.demo_groups == [0]
    assert fwd.demo_weights == pytest.approx([16 / 7])
    assert fwd.metrics["paced/reverse"] == 0.0
    # the forward stage turns the KL-to-teacher term off: every group's distillation weight is 0
    assert torch.equal(fwd.kd_group_weights, torch.zeros(4))
    rev = mixer.plan(3, counts, 4, has_demo)
    assert rev.demo_groups == [] and rev.metrics["paced/reverse"] == 1.0
    torch.testing.assert_close(rev.kd_group_weights, torch.tensor([16 / 7, 0.0, 12 / 7, 0.0]))
    assert [mixer.demos_in_step(s) for s in (1, 2, 3, 4)] == [True, True, False, False]
    assert not mixer.needs_teacher(2) and mixer.needs_teacher(3)
    with pytest.raises(ValueError, match="switch_step: must be >= 0"):
        PACED(switch_step=-1)


# ------------------------------------------------------------------------------------------------ HPT


def test_hpt_switch_gate():
    counts = torch.tensor([0, 1, 2, 3])
    assert hpt_switch(counts, 0).tolist() == [True, False, False, False]
    assert hpt_switch(counts, 2).tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="HPT gamma must be >= 0, got -1"):
        hpt_switch(counts, -1)
    with pytest.raises(ValueError, match="gamma: must be >= 0, got -1"):
        HPT(gamma=-1)


def test_hpt_plan_keeps_groups_without_demonstration_on_rl():
    # gamma 1: counts [0, 1, 2, 0] switch groups 0, 1, 3; group 3 has no demonstration -> stays RL
    plan = HPT(gamma=1, sft_coef=0.5).plan(1, torch.tensor([0, 1, 2, 0]), 4, [True, True, True, False])
    assert plan.keep_groups == [2, 3] and not plan.zero_pg
    assert plan.demo_groups == [0, 1] and plan.demo_weights == [1.0, 1.0]
    assert plan.sft_coef == 0.5
    assert plan.metrics["hpt/switched_frac"] == 0.5  # 2 of 4 groups
    every = HPT(gamma=0).plan(1, torch.tensor([0, 0]), 4, [True, True])
    assert every.zero_pg and every.keep_groups is None and every.demo_groups == [0, 1]
    assert every.metrics["hpt/switched_frac"] == 1.0


# ------------------------------------------------------------------------------------------------ ReLIFT


def test_hard_prompts_and_fingerprint():
    # group 0: all wrong + demo; group 1: 2 correct; group 2: all wrong, no demo
    assert hard_prompts([0, 2, 0], [True, True, False]) == [True, False, False]
    # sha1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d (FIPS 180 test vector)
    assert prompt_fingerprint("abc") == "a9993e364706"


def test_relift_buffer_fifo_and_checkpoint():
    prompts = [f"problem {i}" for i in range(10)]
    fp = [prompt_fingerprint(p) for p in prompts]
    mixer = ReLIFT(buffer_size=3)
    assert mixer.after_update(1, [(5, fp[5]), (7, fp[7])]) == []  # 2 < 3
    assert mixer.after_update(2, [(2, fp[2]), (9, fp[9])]) == [5, 7, 2]  # the 3 oldest, in order
    assert len(mixer.buffer) == 1
    assert mixer.plan(3, torch.tensor([0]), 4, [True]).metrics == {"relift/buffer": 1.0}
    state = mixer.state_dict()
    again = ReLIFT(buffer_size=3)
    again.load_state_dict(state, prompts)
    assert again.buffer.items == [(9, fp[9])]
    changed = list(prompts)
    changed[9] = "another problem"
    with pytest.raises(ValueError, match=r"refers to problem 9.*\(data config changed\)"):
        ReLIFT(buffer_size=3).load_state_dict(state, changed)
    with pytest.raises(ValueError, match="data config changed"):  # index beyond the problems now loaded
        ReLIFT(buffer_size=3).load_state_dict(state, prompts[:5])
    with pytest.raises(ValueError, match="pop size must be > 0, got 0"):
        ReliftBuffer().pop(0)


# ------------------------------------------------------------------------------------------------ schedules, SFT NLL


def test_scheduled_coef():
    assert scheduled_coef(0.2, 0.0, "constant", 4, 5) == 0.2
    assert scheduled_coef(0.2, None, "linear", 4, 5) == 0.2  # no end value: constant
    # linear: coef + (end - coef) (step - 1)/(max_steps - 1): steps 1, 3, 5 -> fractions 0, 1/2, 1
    assert scheduled_coef(5e-3, 1e-3, "linear", 1, 5) == pytest.approx(5e-3)
    assert scheduled_coef(5e-3, 1e-3, "linear", 3, 5) == pytest.approx(3e-3)
    assert scheduled_coef(5e-3, 1e-3, "linear", 5, 5) == pytest.approx(1e-3)
    assert scheduled_coef(5e-3, 1e-3, "linear", 9, 5) == pytest.approx(1e-3)  # clamped
    with pytest.raises(ValueError, match="unknown schedule 'cosine'; choose constant or linear"):
        scheduled_coef(5e-3, 1e-3, "cosine", 1, 5)


def test_sft_nll_by_hand():
    lp = torch.tensor([[-1.0, -2.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    total, n = sft_nll(lp, mask)
    assert float(total.detach()) == 3.0 and int(n) == 2  # 1 + 2; the masked -9 is not counted
    assert float(sft_nll(lp, mask, torch.tensor([0.5]))[0].detach()) == 1.5
    # two rows, weights [0, 1]: row 0 gets exactly no gradient, row 1 -1 per valid token
    lp2 = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    total2, _ = sft_nll(lp2, torch.tensor([[True, True], [True, False]]), torch.tensor([0.0, 1.0]))
    assert float(total2.detach()) == 3.0
    total2.backward()
    assert torch.equal(lp2.grad, torch.tensor([[0.0, 0.0], [-1.0, 0.0]]))


# ------------------------------------------------------------------------------------------------ pg_coef


def _pg(pg_coef: float):
    lp = torch.zeros(1, 2, requires_grad=True)
    inputs = LossInputs(logprobs=lp, mask=torch.ones(1, 2, dtype=torch.bool), advantages=torch.tensor([1.0]))
    out = GRPOLoss(pg_coef=pg_coef)(inputs)
    out.loss.backward()
    return out, lp.grad


def test_pg_coef_scales_the_policy_term():
    # on-policy ratio 1, A = 1: per token -1; seq-mean-token-mean -> -1; ∇ = -A/|o| = -0.5 per token
    one, g1 = _pg(1.0)
    assert float(one.loss.detach()) == -1.0
    torch.testing.assert_close(g1, torch.tensor([[-0.5, -0.5]]))
    half, g_half = _pg(0.5)
    assert float(half.loss.detach()) == -0.5
    torch.testing.assert_close(g_half, torch.tensor([[-0.25, -0.25]]))
    assert float(half.metrics["policy/pg_loss"]) == -1.0  # logged unweighted
    zero, g0 = _pg(0.0)
    assert float(zero.loss.detach()) == 0.0
    assert torch.equal(g0, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="pg_coef must be >= 0"):
        GRPOLoss(pg_coef=-0.1)
