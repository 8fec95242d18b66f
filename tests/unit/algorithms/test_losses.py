"""Policy losses against hand-computed values (arithmetic in the comments), gradients, registry."""

import math

import pytest
import torch

from rlkit.algorithms import losses as L
from rlkit.algorithms.losses import (
    AGG_MODES,
    CISPOLoss,
    DAPOLoss,
    DrGRPOLoss,
    GRPOLoss,
    GSPOLoss,
    LossInputs,
    PolicyLoss,
    ReinforceLoss,
    aggregate,
    available_losses,
    build_loss,
    get_loss_class,
)

F64 = torch.float64
B = torch.bool


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def m(x):
    return torch.tensor(x, dtype=B)


# --------------------------------------------------------------------------- aggregate

PT = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 0, 0]]
AGG_EXPECTED = {
    "token_mean": 7 / 3,  # (1 + 2 + 4) / 3 tokens
    "seq_mean_token_mean": 2.75,  # ((1+2)/2 + 4/1) / 2 rows = (1.5 + 4) / 2
    "seq_mean_token_sum": 3.5,  # ((1+2) + 4) / 2 rows
    "seq_mean_token_sum_norm": 7 / 6,  # ((1+2)/3 + 4/3) / 2 rows, norm_len = T = 3
}


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_hand_values_and_padding_invariance(mode):
    x = t(PT).requires_grad_()
    out = aggregate(x, m(MASK), mode)
    torch.testing.assert_close(out, t(AGG_EXPECTED[mode]))
    out.backward()
    assert torch.equal(x.grad[~m(MASK)], torch.zeros(3, dtype=F64))  # padding gets no grad
    junk = t(PT)
    junk[~m(MASK)] = torch.tensor([float("inf"), float("nan"), -1e9], dtype=F64)
    torch.testing.assert_close(aggregate(junk, m(MASK), mode), t(AGG_EXPECTED[mode]))


def test_aggregate_norm_len():
    # ((1+2)/10 + 4/10) / 2 = 0.35
    out = aggregate(t(PT), m(MASK), "seq_mean_token_sum_norm", norm_len=10)
    torch.testing.assert_close(out, t(0.35))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_empty_mask_is_zero_with_grad(mode):
    x = t(PT).requires_grad_()
    out = aggregate(x, torch.zeros(2, 3, dtype=B), mode)
    assert out == 0 and out.requires_grad
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_aggregate_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="seq_mean_token_sum_norm"):
        aggregate(t(PT), m(MASK), "sum")


@pytest.mark.parametrize("mode", ["seq_mean_token_sum_norm", "seq_mean_token_sum"])
def test_row_contribution_independent_of_other_rows_lengths(mode):
    x1 = t(PT).requires_grad_()
    aggregate(x1, m([[1, 1, 0], [1, 0, 0]]), mode).backward()
    x2 = t(PT).requires_grad_()
    aggregate(x2, m([[1, 1, 0], [1, 1, 1]]), mode).backward()  # row 1 got longer
    torch.testing.assert_close(x1.grad[0], x2.grad[0])  # row 0 grad: 1/(3*2) or 1/2 per token


def test_token_mean_row_weight_depends_on_other_rows():
    # contrast: token_mean re-weights row 0 when row 1 gets longer (1/3 -> 1/5 per token)
    x1 = t(PT).requires_grad_()
    aggregate(x1, m([[1, 1, 0], [1, 0, 0]]), "token_mean").backward()
    x2 = t(PT).requires_grad_()
    aggregate(x2, m([[1, 1, 0], [1, 1, 1]]), "token_mean").backward()
    torch.testing.assert_close(x1.grad[0], t([1 / 3, 1 / 3, 0.0]))
    torch.testing.assert_close(x2.grad[0], t([1 / 5, 1 / 5, 0.0]))


# --------------------------------------------------------------------------- ppo_clip

# token: ratio, advantage -> per-token loss, d loss / d logprob
#  0: 1.5, +1 -> max(-1.5, -1.2) = -1.2 clipped high (grad 0)
#  1: 1.5, -1 -> max( 1.5,  1.2) =  1.5 unclipped (grad -A*ratio = 1.5)
#  2: 0.5, +1 -> max(-0.5, -0.8) = -0.5 unclipped (grad -0.5)
#  3: 0.5, -1 -> max( 0.5,  0.8) =  0.8 clipped low (grad 0)
#  4: 1.1, +2 -> -2.2 inside the trust region (grad -2.2)
#  5: 4.0, -1 -> 4.0 (grad 4); with dual_clip=3: min(4, 3) = 3 (grad 0)
#  6: padding (mask False), junk values
RATIOS = [1.5, 1.5, 0.5, 0.5, 1.1, 4.0, 1.0]
ADVS = [1.0, -1.0, 1.0, -1.0, 2.0, -1.0, 5.0]
PMASK = [[1, 1, 1, 1, 1, 1, 0]]


def _ppo_inputs():
    lp = torch.full((1, 7), -0.7, dtype=F64, requires_grad=True)
    old = lp.detach() - torch.log(t([RATIOS]))
    old[0, 6] = float("-inf")  # junk under the mask
    return lp, old, t([ADVS]), m(PMASK)


def test_ppo_clip_both_sides_both_signs():
    lp, old, adv, mask = _ppo_inputs()
    loss, met = L.ppo_clip(lp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(loss, t([[-1.2, 1.5, -0.5, 0.8, -2.2, 4.0, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, t([[0.0, 1.5, -0.5, 0.0, -2.2, 4.0, 0.0]]))
    torch.testing.assert_close(met["policy/clip_frac_high"], torch.tensor(1 / 6))  # token 0
    torch.testing.assert_close(met["policy/clip_frac_low"], torch.tensor(1 / 6))  # token 3
    torch.testing.assert_close(met["policy/ratio_min"], t(0.5))
    torch.testing.assert_close(met["policy/ratio_max"], t(4.0))
    torch.testing.assert_close(met["policy/ratio_mean"], t(9.1 / 6))  # 1.5+1.5+.5+.5+1.1+4
    kl = sum(r - 1 - math.log(r) for r in RATIOS[:6]) / 6  # k3 of (old || new)
    torch.testing.assert_close(met["policy/approx_kl"], t(kl))


def test_ppo_clip_dual_clip():
    lp, old, adv, mask = _ppo_inputs()
    loss, met = L.ppo_clip(lp, old, adv, mask, dual_clip=3.0)
    # only token 5 (A<0, ratio 4 > c=3) changes: loss 3, grad 0
    torch.testing.assert_close(loss, t([[-1.2, 1.5, -0.5, 0.8, -2.2, 3.0, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, t([[0.0, 1.5, -0.5, 0.0, -2.2, 0.0, 0.0]]))
    torch.testing.assert_close(met["policy/dual_clip_frac"], torch.tensor(1 / 6))
    with pytest.raises(ValueError, match="dual_clip"):
        L.ppo_clip(lp, old, adv, mask, dual_clip=0.5)


def test_ppo_clip_higher_dapo():
    lp, old, adv, mask = _ppo_inputs()
    loss, _ = L.ppo_clip(lp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    # token 0: max(-1.5, -1.28) = -1.28; token 1: max(1.5, 1.28) = 1.5; others as before
    torch.testing.assert_close(loss[0, :2], t([-1.28, 1.5]))


def test_ppo_clip_sequence_advantages_broadcast():
    lp = torch.zeros(2, 2, dtype=F64)
    old = lp - torch.log(t([[1.1, 1.1], [0.9, 0.9]]))
    loss, _ = L.ppo_clip(lp, old, t([2.0, -1.0]), m([[1, 1], [1, 0]]))
    # row 0: -2*1.1 = -2.2 each; row 1: -(-1)*0.9 = 0.9, padding 0
    torch.testing.assert_close(loss, t([[-2.2, -2.2], [0.9, 0.0]]))
    with pytest.raises(ValueError, match="advantages"):
        L.ppo_clip(lp, old, t([1.0, 2.0, 3.0]), m([[1, 1], [1, 0]]))


def test_ppo_clip_on_policy_gradient_equals_reinforce():
    gen = torch.Generator().manual_seed(0)
    lp0 = torch.randn(5, 6, generator=gen, dtype=F64) - 1
    mask = torch.rand(5, 6, generator=gen) < 0.7
    for adv in (
        torch.randn(5, generator=gen, dtype=F64),
        torch.randn(5, 6, generator=gen, dtype=F64),
    ):
        for mode in AGG_MODES:
            a = lp0.clone().requires_grad_()
            ppo, _ = L.ppo_clip(a, a.detach(), adv, mask)
            aggregate(ppo, mask, mode).backward()
            b = lp0.clone().requires_grad_()
            rf, _ = L.reinforce(b, adv, mask)
            aggregate(rf, mask, mode).backward()
            torch.testing.assert_close(a.grad, b.grad)


# --------------------------------------------------------------------------- gspo


def test_gspo_sequence_ratio_and_clipping():
    lp = torch.full((2, 3), -1.0, dtype=F64, requires_grad=True)
    # row 0 log ratios [0.1, 0.3, junk-under-mask] -> mean 0.2, s = e^0.2 = 1.221403
    # row 1 log ratios [-0.1, -0.1, -0.1] -> s = e^-0.1 = 0.904837
    log_r = t([[0.1, 0.3, 50.0], [-0.1, -0.1, -0.1]])
    old = lp.detach() - log_r
    mask = m([[1, 1, 0], [1, 1, 1]])
    s0, s1 = math.exp(0.2), math.exp(-0.1)
    # wide clip: nothing clipped. A=[+1,-1]: row0 -s0 per token, row1 +s1 per token
    loss, met = L.gspo(lp, old, t([1.0, -1.0]), mask, clip_low=0.5, clip_high=0.5)
    torch.testing.assert_close(loss, t([[-s0, -s0, 0.0], [s1, s1, s1]]))
    loss.sum().backward()  # d/dlp_t = -A * s_i (GSPO-token: value s_i, grad s_i * dlogpi)
    torch.testing.assert_close(lp.grad, t([[-s0, -s0, 0.0], [s1, s1, s1]]))
    torch.testing.assert_close(met["policy/ratio_max"], t(s0))
    torch.testing.assert_close(met["policy/ratio_min"], t(s1))
    # default clip 3e-4/4e-4: row0 A>0 and s0 > 1.0004 -> -(1.0004) clipped, grad 0;
    # row1 A<0 and s1 < 0.9997 -> +0.9997 clipped, grad 0
    lp.grad = None
    loss, met = L.gspo(lp, old, t([1.0, -1.0]), mask)
    torch.testing.assert_close(loss, t([[-1.0004, -1.0004, 0.0], [0.9997, 0.9997, 0.9997]]))
    loss.sum().backward()
    assert torch.equal(lp.grad, torch.zeros_like(lp))
    torch.testing.assert_close(met["policy/clip_frac_high"], torch.tensor(2 / 5))  # row0 tokens
    torch.testing.assert_close(met["policy/clip_frac_low"], torch.tensor(3 / 5))  # row1 tokens
    # other side: A<0 with s>1 and A>0 with s<1 are not clipped
    lp.grad = None
    loss, _ = L.gspo(lp, old, t([-1.0, 1.0]), mask)
    torch.testing.assert_close(loss, t([[s0, s0, 0.0], [-s1, -s1, -s1]]))


# --------------------------------------------------------------------------- cispo / reinforce


def test_cispo_detached_clipped_weight():
    lp = torch.full((1, 4), -1.0, dtype=F64, requires_grad=True)
    ratios = t([[1.5, 0.5, 1.1, 1.0]])
    old = lp.detach() - torch.log(ratios)
    adv = t([[1.0, -1.0, 2.0, 3.0]])
    mask = m([[1, 1, 1, 0]])
    loss, met = L.cispo(lp, old, adv, mask)  # clip_low 1.0 (no lower bound), clip_high 0.28
    # weights sg(clip(r, 0, 1.28)) = [1.28, 0.5, 1.1]; loss = -A*w*lp with lp = -1
    # -> [1.28, -0.5, 2.2, 0 (pad)]; grad = -A*w = [-1.28, 0.5, -2.2, 0]
    torch.testing.assert_close(loss, t([[1.28, -0.5, 2.2, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, t([[-1.28, 0.5, -2.2, 0.0]]))
    torch.testing.assert_close(met["policy/clip_frac_high"], torch.tensor(1 / 3))
    torch.testing.assert_close(met["policy/clip_frac_low"], torch.tensor(0.0))
    # with a lower bound 1 - 0.2: token 1 weight 0.8 -> loss -0.8
    loss, met = L.cispo(lp, old, adv, mask, clip_low=0.2)
    torch.testing.assert_close(loss[0, 1], t(-0.8))
    torch.testing.assert_close(met["policy/clip_frac_low"], torch.tensor(1 / 3))


def test_reinforce_hand_values():
    lp = t([[-1.0, -2.0, 7.0]]).requires_grad_()
    loss, met = L.reinforce(lp, t([2.0]), m([[1, 1, 0]]))
    # -A*lp = [2, 4, 0 (pad)], grad -A = [-2, -2, 0]
    torch.testing.assert_close(loss, t([[2.0, 4.0, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, t([[-2.0, -2.0, 0.0]]))
    assert met == {}


# --------------------------------------------------------------------------- KL / TIS


def test_kl_estimators_hand_values_and_clamps():
    lp = torch.zeros(1, 5, dtype=F64)
    ref = -t([[1.0, -1.0, 0.0, 30.0, -30.0]])  # delta = lp - ref = [1, -1, 0, 30, -30]
    e = math.e
    # delta clamped to +-20
    torch.testing.assert_close(L.kl_penalty(lp, ref, "k1"), t([[1.0, -1.0, 0.0, 20.0, -20.0]]))
    torch.testing.assert_close(L.kl_penalty(lp, ref, "k2"), t([[0.5, 0.5, 0.0, 200.0, 200.0]]))
    # k3 = e^-d + d - 1: d=1 -> 1/e = 0.367879; d=-1 -> e - 2 = 0.718282; d=+-20 -> clamp 10
    torch.testing.assert_close(L.kl_penalty(lp, ref, "k3"), t([[1 / e, e - 2, 0.0, 10.0, 10.0]]))
    torch.testing.assert_close(L.kl_penalty(lp, ref, "abs"), t([[1.0, 1.0, 0.0, 20.0, 20.0]]))
    with pytest.raises(ValueError, match="k3"):
        L.kl_penalty(lp, ref, "k4")


def test_tis_weights_truncate_and_mask():
    engine = torch.zeros(1, 5, dtype=F64)
    old = torch.log(t([[3.0, 0.25, 1.0, 1.5, 100.0]]))  # ratio old/engine
    mask = m([[1, 1, 1, 1, 0]])
    w, met = L.tis_weights(old, engine, mask, cap=2.0)
    # truncate: min(w, 2) = [2, 0.25, 1, 1.5, 0 (pad)]; mean 4.75/4; clipped 1/4
    torch.testing.assert_close(w, t([[2.0, 0.25, 1.0, 1.5, 0.0]]))
    torch.testing.assert_close(met["policy/tis_weight_mean"], t(4.75 / 4))
    torch.testing.assert_close(met["policy/tis_clip_frac"], t(0.25))
    w, met = L.tis_weights(old, engine, mask, cap=2.0, mode="mask")
    # mask: keep 1/2 <= w <= 2 -> [0, 0, 1, 1, 0]; mean 2/4; rejected 2/4
    torch.testing.assert_close(w, t([[0.0, 0.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(met["policy/tis_clip_frac"], t(0.5))
    assert not w.requires_grad
    with pytest.raises(ValueError, match="truncate"):
        L.tis_weights(old, engine, mask, mode="clip")


# --------------------------------------------------------------------------- PolicyLoss


def test_policy_loss_composition_hand_value():
    lp = t([[-1.0, -2.0, 0.0]]).requires_grad_()
    mask = m([[1, 1, 0]])
    inputs = LossInputs(
        logprobs=lp,
        mask=mask,
        advantages=t([1.0]),
        engine_logprobs=lp.detach() - t([[math.log(3.0), 0.0, 0.0]]),  # w = [3 -> 2 (cap), 1]
        ref_logprobs=lp.detach() - t([[1.0, 0.0, 0.0]]),  # delta = [1, 0]
        entropy=t([[0.5, 1.5, 99.0]]),
    )
    loss_fn = GRPOLoss(agg_mode="token_mean", kl_coef=0.1, entropy_coef=0.01, tis_cap=2.0)
    out = loss_fn(inputs)
    # on-policy (old = lp.detach()): ratio 1, pg = -A = [-1, -1]; x TIS [2, 1] -> [-2, -1]
    # token_mean pg = -1.5; k3 = [1/e, 0] -> mean 0.183940 * 0.1; entropy mean 1.0 * 0.01
    expected = -1.5 + 0.1 * (1 / math.e) / 2 - 0.01 * 1.0
    torch.testing.assert_close(out.loss, t(expected))
    torch.testing.assert_close(out.metrics["policy/pg_loss"], t(-1.5))
    torch.testing.assert_close(out.metrics["policy/kl_ref"], t((1 / math.e) / 2))
    # the entropy is logged once per batch by the trainer (`policy/entropy`), not per loss call
    assert "policy/entropy" not in out.metrics
    torch.testing.assert_close(out.metrics["policy/tis_weight_mean"], t(1.5))
    assert all(not v.requires_grad and v.dim() == 0 for v in out.metrics.values())
    # token_weights multiply the policy term: [1, 0] -> pg = (-2 + 0)/2 = -1
    inputs.token_weights = t([[1.0, 0.0, 5.0]])
    torch.testing.assert_close(loss_fn(inputs).metrics["policy/pg_loss"], t(-1.0))


def test_policy_loss_requires_ref_and_entropy_when_coefs_set():
    inputs = LossInputs(logprobs=torch.zeros(1, 2), mask=m([[1, 1]]), advantages=torch.ones(1))
    with pytest.raises(ValueError, match="ref_logprobs"):
        GRPOLoss(kl_coef=0.04)(inputs)
    with pytest.raises(ValueError, match="entropy"):
        GRPOLoss(entropy_coef=0.01)(inputs)
    # tis_cap set but no engine logprobs -> TIS silently off
    assert "policy/tis_weight_mean" not in GRPOLoss(tis_cap=2.0)(inputs).metrics


def test_loss_inputs_validation():
    with pytest.raises(TypeError, match="bool"):
        LossInputs(logprobs=torch.zeros(1, 2), mask=torch.ones(1, 2), advantages=torch.ones(1))
    with pytest.raises(ValueError, match="old_logprobs"):
        LossInputs(torch.zeros(1, 2), m([[1, 1]]), torch.ones(1), old_logprobs=torch.zeros(1, 3))


def test_policy_loss_constructor_validation():
    with pytest.raises(ValueError, match="token_mean"):
        PolicyLoss(agg_mode="mean")
    with pytest.raises(ValueError, match="k3"):
        PolicyLoss(kl_kind="kl")
    with pytest.raises(ValueError, match="tis_cap"):
        PolicyLoss(tis_cap=0.5)
    with pytest.raises(NotImplementedError):
        PolicyLoss()(LossInputs(torch.zeros(1, 1), m([[1]]), torch.ones(1)))


def test_defaults_follow_the_papers():
    g, d, dr, gs, c = GRPOLoss(), DAPOLoss(), DrGRPOLoss(), GSPOLoss(), CISPOLoss()
    assert (g.clip_low, g.clip_high, g.dual_clip, g.agg_mode) == (
        0.2,
        0.2,
        None,
        "seq_mean_token_mean",
    )
    assert (d.clip_low, d.clip_high, d.agg_mode) == (0.2, 0.28, "token_mean")
    assert (dr.clip_low, dr.clip_high, dr.agg_mode) == (0.2, 0.2, "seq_mean_token_sum_norm")
    assert (gs.clip_low, gs.clip_high, gs.agg_mode) == (3e-4, 4e-4, "seq_mean_token_mean")
    assert (c.clip_low, c.clip_high, c.agg_mode) == (1.0, 0.28, "token_mean")
    assert ReinforceLoss().agg_mode == "token_mean"
    for loss in (g, d, dr, gs, c):
        assert loss.kl_coef == 0.0 and loss.entropy_coef == 0.0 and loss.tis_cap is None


# --------------------------------------------------------------------------- gradients


def _rand_case(seed, n=3, t_=5):
    gen = torch.Generator().manual_seed(seed)
    lp = torch.rand(n, t_, generator=gen, dtype=F64) * -2 - 0.1
    mask = torch.ones(n, t_, dtype=B)
    mask[0, 3:] = False
    mask[2, 4:] = False
    adv = t([1.0, -0.5, 2.0][:n])
    return lp, mask, adv, gen


ALL_LOSSES = [GRPOLoss, DAPOLoss, DrGRPOLoss, GSPOLoss, CISPOLoss, ReinforceLoss]


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_positive_advantage_gradient_raises_logprob(cls):
    lp0, mask, adv, _ = _rand_case(1)
    lp = lp0.clone().requires_grad_()
    cls()(LossInputs(lp, mask, adv)).loss.backward()  # on-policy, old = lp.detach()
    g = lp.grad
    assert (g[0][mask[0]] < 0).all() and (g[2][mask[2]] < 0).all()  # A > 0: dL/dlogp < 0
    assert (g[1][mask[1]] > 0).all()  # A < 0: pushes the logprob down
    assert torch.equal(g[~mask], torch.zeros_like(g[~mask]))


@pytest.mark.parametrize("cls", [GRPOLoss, DAPOLoss, DrGRPOLoss, GSPOLoss, CISPOLoss])
def test_on_policy_gradient_equals_reinforce_same_aggregation(cls):
    lp0, mask, adv, _ = _rand_case(2)
    a = lp0.clone().requires_grad_()
    loss = cls()
    loss(LossInputs(a, mask, adv)).loss.backward()
    b = lp0.clone().requires_grad_()
    ReinforceLoss(agg_mode=loss.agg_mode)(LossInputs(b, mask, adv)).loss.backward()
    # ratio (GSPO: s_i) is 1 on-policy, so every token gets -A times its aggregation weight
    torch.testing.assert_close(a.grad, b.grad)


def _gradcheck(loss_fn, lp, mask, adv, old, **extra):
    ent0 = extra.pop("entropy", None)

    def f(lp_, ent_):
        inputs = LossInputs(lp_, mask, adv, old_logprobs=old, entropy=ent_, **extra)
        return loss_fn(inputs).loss

    ent = ent0.clone().requires_grad_() if ent0 is not None else None
    args = (lp.clone().requires_grad_(), ent)
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("cls", [GRPOLoss, DAPOLoss, DrGRPOLoss, ReinforceLoss])
def test_gradcheck_ppo_family_away_from_clip(cls, mode):
    lp, mask, adv, gen = _rand_case(3)
    # log ratios in (-0.1, 0.1): ratios in (0.905, 1.105), strictly inside [0.8, 1.2]
    old = lp - (torch.rand(lp.shape, generator=gen, dtype=F64) - 0.5) * 0.2
    ref = lp - (torch.rand(lp.shape, generator=gen, dtype=F64) - 0.5)
    ent = torch.rand(lp.shape, generator=gen, dtype=F64)
    eng = old - (torch.rand(lp.shape, generator=gen, dtype=F64) - 0.5) * 2  # TIS, some > cap
    loss_fn = cls(agg_mode=mode, kl_coef=0.1, entropy_coef=0.01, tis_cap=1.5)
    _gradcheck(loss_fn, lp, mask, adv, old, entropy=ent, ref_logprobs=ref, engine_logprobs=eng)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "abs"])
def test_gradcheck_kl_kinds(kind):
    lp, mask, adv, gen = _rand_case(4)
    ref = lp - (
        torch.rand(lp.shape, generator=gen, dtype=F64) + 0.1
    )  # delta in (0.1, 1.1), abs smooth
    _gradcheck(GRPOLoss(kl_coef=0.5, kl_kind=kind), lp, mask, adv, lp.clone(), ref_logprobs=ref)


def test_gradcheck_gspo():
    lp, mask, adv, gen = _rand_case(5)
    old = lp - (torch.rand(lp.shape, generator=gen, dtype=F64) - 0.5) * 0.2
    _gradcheck(GSPOLoss(clip_low=0.5, clip_high=0.5), lp, mask, adv, old)  # unclipped
    _gradcheck(GSPOLoss(), lp, mask, adv, old + 0.01)  # every sequence clipped: grad 0


def test_gradcheck_cispo_where_weight_is_constant():
    # CISPO's weight is stop-gradient, so its surrogate is a true function of logprobs only
    # where the weight is locally constant: all ratios above 1 + 0.28 (clipped to 1.28).
    lp, mask, adv, gen = _rand_case(6)
    old = lp - 0.5 - torch.rand(lp.shape, generator=gen, dtype=F64) * 0.2  # ratio in (1.65, 2.0)
    _gradcheck(CISPOLoss(), lp, mask, adv, old)


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_padding_values_change_nothing_in_policy_loss(cls):
    lp0, mask, adv, gen = _rand_case(7)
    old0 = lp0 - 0.05
    results = []
    for junk in (0.0, float("inf"), float("nan")):
        lp, old = lp0.clone(), old0.clone()
        lp[~mask], old[~mask] = junk, -junk
        lp.requires_grad_()
        eng = old.clone()
        ref = lp.detach() - 0.3
        ent = torch.where(mask, torch.ones_like(lp), junk)
        out = cls(kl_coef=0.1, entropy_coef=0.01, tis_cap=2.0)(
            LossInputs(
                lp, mask, adv, old_logprobs=old, engine_logprobs=eng, ref_logprobs=ref, entropy=ent
            )
        )
        out.loss.backward()
        results.append((out.loss.detach(), lp.grad[mask], out.metrics))
    for loss, grad, met in results[1:]:
        torch.testing.assert_close(loss, results[0][0])
        torch.testing.assert_close(grad, results[0][1])
        for k, v in met.items():
            torch.testing.assert_close(v, results[0][2][k], msg=k)


# --------------------------------------------------------------------------- registry


def test_registry_names_and_paths():
    assert available_losses() == sorted(["grpo", "dapo", "dr_grpo", "gspo", "cispo", "reinforce", "hapo"])
    assert get_loss_class("dapo") is DAPOLoss
    assert get_loss_class("rlkit.algorithms.losses:GSPOLoss") is GSPOLoss
    assert isinstance(build_loss("grpo", clip_high=0.3, kl_coef=0.01), GRPOLoss)


def test_registry_errors_are_clear():
    with pytest.raises(KeyError, match="Registered: cispo, dapo"):
        get_loss_class("ppo")
    with pytest.raises(ValueError, match="cannot import module 'no_such_pkg.mod'"):
        get_loss_class("no_such_pkg.mod:MyLoss")
    with pytest.raises(ValueError, match="has no attribute 'Nope'"):
        get_loss_class("rlkit.algorithms.losses:Nope")
    with pytest.raises(TypeError, match="not a subclass of rlkit.algorithms.losses.PolicyLoss"):
        get_loss_class("rlkit.algorithms.losses:aggregate")
    with pytest.raises(ValueError, match="pkg.module:ClassName"):
        get_loss_class(":GRPOLoss")
    with pytest.raises(
        TypeError,
        match=r"params.clip_ratio: unknown parameter of loss 'dapo' \(DAPOLoss\); "
        r"did you mean 'clip_low'\? Accepted: agg_mode, clip_high",
    ):
        build_loss("dapo", clip_ratio=0.2)


def test_register_loss_rejects_non_policy_loss_and_duplicates():
    with pytest.raises(TypeError):
        L.register_loss("x")(object)

    class Other(PolicyLoss):
        pass

    with pytest.raises(ValueError, match="already registered"):
        L.register_loss("grpo")(Other)
