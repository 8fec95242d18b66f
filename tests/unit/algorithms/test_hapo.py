"""HAPO (arXiv 2509.16591): the `hapo` token objective, `HAPOLoss` and the `hapo_tlga`
advantage, against hand-computed values (arithmetic in the comments) and DAPO."""

import math

import pytest
import torch

from rlkit.algorithms.advantages import grpo, hapo_tlga
from rlkit.algorithms.hapo import HAPOLoss, hapo
from rlkit.algorithms.losses import DAPOLoss, LossInputs
from rlkit.algorithms.token_weights import entropy_score

F64 = torch.float64


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def m(x):
    return torch.tensor(x, dtype=torch.bool)


def lengths_mask(lengths, width):
    return torch.arange(width)[None] < t(lengths, torch.long)[:, None]


def ratio_inputs(ratios):
    """Logprobs (with grad) and old logprobs whose ratio is `ratios`."""
    lp = torch.full((1, len(ratios)), -1.0, dtype=F64, requires_grad=True)
    old = lp.detach() - torch.log(t([ratios]))
    return lp, old


# --------------------------------------------------------------------------- adaptive clip ranges

H5 = [-1.0, -0.5, 0.0, 0.5, 1.0]
# eps_l = 0.2 (1 - ĥ) where ĥ <= 0, else 0.2:    [0.4, 0.3, 0.2, 0.2, 0.2]   mean 1.3/5 = 0.26
# eps_h = 0.28 (1 + ĥ) where ĥ > 0, else 0.28:  [0.28, 0.28, 0.28, 0.42, 0.56] mean 1.82/5 = 0.364


def test_hapo_clip_range_metrics():
    # a sixth, padded token with ĥ = 1 must not count
    lp = torch.zeros(1, 6, dtype=F64)
    _, met = hapo(lp, lp, t([1.0]), m([[1] * 5 + [0]]), t([H5 + [1.0]]), clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(met["hapo/clip_low_mean"], t(0.26))
    torch.testing.assert_close(met["hapo/clip_high_mean"], t(0.364))


def test_hapo_clip_ranges_act_per_token():
    # adv_beta 0: only the clip ranges differ. A = [1, 1, -1, -1], ĥ = [0.5, 0, -1, 0].
    # ratio 1.35, A > 0: ĥ=0.5 upper 1.42 -> unclipped -1.35; ĥ=0 upper 1.28 -> clipped -1.28
    # ratio 0.75, A < 0: ĥ=-1 lower 0.6 -> unclipped 0.75;  ĥ=0 lower 0.8 -> clipped 0.8
    lp, old = ratio_inputs([1.35, 1.35, 0.75, 0.75])
    adv = t([[1.0, 1.0, -1.0, -1.0]])
    loss, met = hapo(lp, old, adv, m([[1, 1, 1, 1]]), t([[0.5, 0.0, -1.0, 0.0]]), adv_beta=0.0)
    torch.testing.assert_close(loss, t([[-1.35, -1.28, 0.75, 0.8]]))
    loss.sum().backward()
    # d(-A ρ)/d log π = -A ρ where unclipped, 0 where clipped
    torch.testing.assert_close(lp.grad, t([[-1.35, 0.0, 0.75, 0.0]]))
    assert met["policy/clip_frac_high"].item() == pytest.approx(0.25)
    assert met["policy/clip_frac_low"].item() == pytest.approx(0.25)
    assert met["hapo/redistributed_frac"] == 0  # adv_beta = 0 rescales nothing


# --------------------------------------------------------------------------- advantage redistribution


def test_hapo_on_policy_rescales_low_entropy_tokens():
    # ratio 1 is inside every neutral zone: ĥ <= 0 takes A (1 + 0.5 ĥ), ĥ > 0 keeps A = 2
    # A' = [2*0.5, 2*0.75, 2, 2, 2] = [1, 1.5, 2, 2, 2]; loss = -A' * 1
    lp = torch.full((1, 5), -0.7, dtype=F64)
    loss, met = hapo(lp, lp, t([2.0]), m([[1] * 5]), t([H5]), adv_beta=0.5)
    torch.testing.assert_close(loss, t([[-1.0, -1.5, -2.0, -2.0, -2.0]]))
    assert met["hapo/redistributed_frac"].item() == pytest.approx(2 / 5)  # ĥ = -1, -0.5 (ĥ = 0 is unchanged)


def test_hapo_outside_neutral_zone_rescales_high_entropy_tokens_ratio_above():
    # ratio 1.5 > 1 + eps_h/2 (at most 1.28) for every token: ĥ > 0 takes A (1 + 0.5 ĥ), ĥ <= 0 keeps A = 1
    # A' = [1, 1, 1, 1.25, 1.5]; upper bounds 1 + eps_h = [1.28, 1.28, 1.28, 1.42, 1.56]
    # loss = -A' min(1.5, upper) = [-1.28, -1.28, -1.28, -1.25*1.42, -1.5*1.5] = [.., -1.775, -2.25]
    lp, old = ratio_inputs([1.5] * 5)
    loss, met = hapo(lp, old, t([1.0]), m([[1] * 5]), t([H5]), adv_beta=0.5)
    torch.testing.assert_close(loss, t([[-1.28, -1.28, -1.28, -1.775, -2.25]]))
    assert met["hapo/redistributed_frac"].item() == pytest.approx(2 / 5)


def test_hapo_outside_neutral_zone_rescales_high_entropy_tokens_ratio_below():
    # ratio 0.5 < 1 - eps_l/2 (at least 0.8); A = -1: ĥ > 0 takes A' = -(1 + 0.5 ĥ) = -1.25, -1.5
    # lower bounds 1 - eps_l = [0.6, 0.7, 0.8, 0.8, 0.8]; for A < 0 loss = |A'| max(0.5, lower)
    # = [0.6, 0.7, 0.8, 1.25*0.8, 1.5*0.8] = [0.6, 0.7, 0.8, 1.0, 1.2]  (dual clip 10|A'| not reached)
    lp, old = ratio_inputs([0.5] * 5)
    loss, _ = hapo(lp, old, t([-1.0]), m([[1] * 5]), t([H5]), adv_beta=0.5)
    torch.testing.assert_close(loss, t([[0.6, 0.7, 0.8, 1.0, 1.2]]))


def test_hapo_dual_clip_caps_negative_advantages():
    # ratio 20, A = -1, ĥ = 0 (no rescaling outside the zone): PPO loss 20, capped at 10 |A| = 10
    lp, old = ratio_inputs([20.0])
    loss, met = hapo(lp, old, t([-1.0]), m([[1]]), t([[0.0]]))
    torch.testing.assert_close(loss, t([[10.0]]))
    assert met["policy/dual_clip_frac"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        hapo(lp, old, t([-1.0]), m([[1]]), t([[0.0]]), dual_clip=1.0)


# --------------------------------------------------------------------------- HAPOLoss


def random_inputs(seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(4, 7, generator=g, dtype=F64) * 3).requires_grad_()
    old = lp.detach() + 0.4 * torch.randn(4, 7, generator=g, dtype=F64)  # ratios ~ e^{±0.4}: some clip
    mask = lengths_mask([7, 3, 5, 1], 7)
    adv = torch.randn(4, generator=g, dtype=F64)
    score = torch.rand(4, 7, generator=g, dtype=F64) * 2 - 1
    return LossInputs(logprobs=lp, mask=mask, advantages=adv, old_logprobs=old, entropy_score=score, **kw)


@pytest.mark.parametrize("dual_clip", [10.0, None])
def test_hapo_loss_without_alpha_beta_equals_dapo(dual_clip):
    inputs = random_inputs()
    h_out = HAPOLoss(clip_alpha=0.0, adv_beta=0.0, dual_clip=dual_clip, entropy_stats="batch")(inputs)
    (gh,) = torch.autograd.grad(h_out.loss, inputs.logprobs)
    d_out = DAPOLoss(dual_clip=dual_clip)(inputs)
    (gd,) = torch.autograd.grad(d_out.loss, inputs.logprobs)
    assert d_out.metrics["policy/clip_frac_high"] + d_out.metrics["policy/clip_frac_low"] > 0  # clipping occurs
    torch.testing.assert_close(h_out.loss, d_out.loss, rtol=0, atol=1e-7)
    torch.testing.assert_close(gh, gd, rtol=0, atol=1e-7)
    for k in ("policy/clip_frac_high", "policy/clip_frac_low", "policy/ratio_mean", "policy/pg_loss"):
        torch.testing.assert_close(h_out.metrics[k], d_out.metrics[k], rtol=0, atol=1e-7)


def test_hapo_loss_with_alpha_beta_differs_from_dapo():
    inputs = random_inputs()
    assert abs(HAPOLoss()(inputs).loss - DAPOLoss(dual_clip=10.0)(inputs).loss) > 1e-4


def test_hapo_loss_batch_mode_needs_entropy_score():
    inputs = random_inputs()
    inputs.entropy_score = None
    with pytest.raises(ValueError, match="LossInputs.entropy_score"):
        HAPOLoss()(inputs)


def test_hapo_loss_micro_batch_scores_its_own_entropy():
    g = torch.Generator().manual_seed(1)
    ent = torch.rand(4, 7, generator=g, dtype=F64) * 2 + 0.01
    inputs = random_inputs(entropy=ent)
    inputs.entropy_score = None
    loss = HAPOLoss(entropy_stats="micro_batch")(inputs).loss
    per_tok, _ = hapo(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask,
                      entropy_score(ent, inputs.mask))
    expected = per_tok.sum() / inputs.mask.sum()  # token_mean
    torch.testing.assert_close(loss, expected)
    # released_sign is passed on to the score
    loss_r = HAPOLoss(entropy_stats="micro_batch", released_sign=True)(inputs).loss
    per_r, _ = hapo(inputs.logprobs, inputs.old_logprobs, inputs.advantages, inputs.mask,
                    entropy_score(ent, inputs.mask, released_sign=True))
    torch.testing.assert_close(loss_r, per_r.sum() / inputs.mask.sum())
    inputs.entropy = None
    with pytest.raises(ValueError, match="LossInputs.entropy"):
        HAPOLoss(entropy_stats="micro_batch")(inputs)


@pytest.mark.parametrize("kw, match", [
    ({"entropy_pivot": 1.5}, "entropy_pivot"),
    ({"entropy_pivot": 0.0}, "entropy_pivot"),
    ({"entropy_stats": "rows"}, "entropy_stats"),
    ({"dual_clip": 1.0}, "dual_clip"),
    ({"clip_alpha": -0.1}, "clip_alpha and adv_beta"),
])
def test_hapo_loss_rejects_bad_params(kw, match):
    with pytest.raises(ValueError, match=match):
        HAPOLoss(**kw)


def test_hapo_loss_declares_entropy_score_need():
    assert HAPOLoss(entropy_stats="batch").needs_entropy_score is True
    assert HAPOLoss(entropy_stats="micro_batch").needs_entropy_score is False
    assert HAPOLoss().agg_mode == "token_mean" and HAPOLoss().accumulate == "tokens"


# --------------------------------------------------------------------------- hapo_tlga

# Rewards [1, 0, 0, 0], lengths [2, 4, 4, 6] (16 tokens):
#   mu = 2*1 / 16 = 1/8;  var = (2 (7/8)^2 + 14 (1/8)^2) / 16 = (98/64 + 14/64) / 16 = 7/64
#   sigma = sqrt7 / 8;  A = [(7/8) / (sqrt7/8), -(1/8) / (sqrt7/8)] = [sqrt7, -1/sqrt7]
S7 = math.sqrt(7.0)


def test_hapo_tlga_hand_values():
    adv = hapo_tlga(t([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long), mask=lengths_mask([2, 4, 4, 6], 6))
    sigma = S7 / 8
    expected = t([7 / 8, -1 / 8, -1 / 8, -1 / 8]) / (sigma + 1e-6)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(adv, t([S7, -1 / S7, -1 / S7, -1 / S7]), rtol=1e-5, atol=0)


def test_hapo_tlga_falls_back_to_grpo_per_group():
    # Group 1: rewards [1, 0 x 7], correct length 1, wrong length 50 (351 tokens):
    #   mu = 1/351, var = (1 (350/351)^2 + 350 (1/351)^2) / 351 = 350/351^2 -> A_correct = sqrt(350) >= 5
    # -> GRPO: mean 1/8, unbiased std sqrt((49/64 + 7/64) / 7) = sqrt(1/8): A = [7/sqrt8, -1/sqrt8 x 7]
    # Group 0 (the hand case above) keeps TLGA.
    r = t([1.0, 0, 0, 0] + [1.0] + [0.0] * 7)
    gid = torch.tensor([0] * 4 + [1] * 8)
    mask = lengths_mask([2, 4, 4, 6, 1] + [50] * 7, 50)
    adv = hapo_tlga(r, gid, mask=mask)
    torch.testing.assert_close(adv[4:], grpo(r[4:], gid[4:]))
    torch.testing.assert_close(adv[4:], t([7 / math.sqrt(8)] + [-1 / math.sqrt(8)] * 7), rtol=1e-5, atol=0)
    torch.testing.assert_close(adv[:4], t([S7, -1 / S7, -1 / S7, -1 / S7]), rtol=1e-5, atol=0)
    # a larger threshold keeps TLGA for group 1 too: A_correct = (350/351) / (sqrt350/351 + 1e-6)
    adv_hi = hapo_tlga(r, gid, mask=mask, fallback=100.0)
    torch.testing.assert_close(adv_hi[4], t((350 / 351) / (math.sqrt(350) / 351 + 1e-6)))


def test_hapo_tlga_zero_length_group_falls_back_to_grpo():
    # lengths all 0: no token statistics -> GRPO: mean 1/2, unbiased std sqrt(1/2) -> ±1/sqrt2
    adv = hapo_tlga(t([1.0, 0.0]), torch.zeros(2, dtype=torch.long), mask=torch.zeros(2, 3, dtype=torch.bool))
    torch.testing.assert_close(adv, t([1.0, -1.0]) * 0.5 / (math.sqrt(0.5) + 1e-6))


def test_hapo_tlga_constant_and_singleton_groups_are_zero():
    r = t([0.7, 0.7, 0.7, 1.0, 0.3])
    gid = torch.tensor([0, 0, 0, 1, 2])  # constant group, then two singletons
    adv = hapo_tlga(r, gid, mask=lengths_mask([1, 5, 3, 4, 2], 5))
    assert torch.equal(adv, torch.zeros(5, dtype=F64))


def test_hapo_tlga_argument_errors():
    r, gid = t([1.0, 0.0]), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="'hapo_tlga' needs mask"):
        hapo_tlga(r, gid)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="fallback must be > 0"):
            hapo_tlga(r, gid, mask=torch.ones(2, 3, dtype=torch.bool), fallback=bad)
