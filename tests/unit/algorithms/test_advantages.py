"""Advantage estimators against hand-computed values (arithmetic in the comments)."""

import itertools
import math

import pytest
import torch

from rlkit.algorithms import advantages as A
from rlkit.algorithms.advantages import (
    UnknownNameError,
    available_advantages,
    get_advantage,
    register_advantage,
)

F64 = torch.float64


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


def group_sums(x, gid):
    _, inv = torch.unique(gid, return_inverse=True)
    return torch.zeros(int(inv.max()) + 1, dtype=x.dtype).index_add_(0, inv, x)


# --------------------------------------------------------------------------- registry


def test_registry_lists_all_estimators_sorted():
    names = available_advantages()
    assert names == sorted(names)
    for n in [
        "grpo",
        "dr_grpo",
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "pass_at_k",
        "opo",
    ]:
        assert n in names
        assert get_advantage(n).needs_group is (n != "reinforce_pp")


def test_unknown_estimator_error_lists_names():
    with pytest.raises(KeyError) as ki:
        get_advantage("gae")
    with pytest.raises(ValueError):
        get_advantage("gae")
    msg = str(ki.value)
    assert isinstance(ki.value, UnknownNameError)
    assert "'gae'" in msg and ", ".join(available_advantages()) in msg


def test_register_duplicate_name_rejected():
    def other(rewards, group_ids, *, mask=None):
        return rewards

    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(other)
    fn = register_advantage("_test_tmp", needs_group=False)(other)
    assert fn.needs_group is False and get_advantage("_test_tmp") is other
    A.ADVANTAGES.unregister("_test_tmp")


# --------------------------------------------------------------------------- grpo


def test_grpo_hand_values_arbitrary_group_ids():
    r = t([1.0, 0.0, 2.0, 1.0, 4.0, 5.0])
    g = ids([7, 7, 3, 7, 3, -2])  # non-contiguous, negative, interleaved
    adv = get_advantage("grpo")(r, g)
    # group 7 = rows 0,1,3: r=[1,0,1], mean 2/3, centred [1/3,-2/3,1/3],
    #   unbiased var = (1/9+4/9+1/9)/2 = 1/3, std = 0.577350 -> [0.577349, -1.154698, 0.577349]
    # group 3 = rows 2,4: r=[2,4], mean 3, centred [-1,1], var = 2/1, std = 1.414214 -> -/+0.707106
    # group -2 = row 5: singleton -> 0
    s7, s3 = math.sqrt(1 / 3) + 1e-6, math.sqrt(2) + 1e-6
    expected = t([(1 / 3) / s7, (-2 / 3) / s7, -1 / s3, (1 / 3) / s7, 1 / s3, 0.0])
    torch.testing.assert_close(adv, expected)
    assert adv[5] == 0.0


def test_grpo_binary_group():
    adv = A.grpo(t([1.0, 0.0, 0.0, 1.0]), ids([0, 0, 0, 0]))
    # mean 0.5, unbiased var = 4*0.25/3 = 1/3 -> A = +-0.5/0.577351 = +-0.866024
    torch.testing.assert_close(adv, t([1, -1, -1, 1]) * 0.5 / (math.sqrt(1 / 3) + 1e-6))


def test_grpo_scale_batch_and_none():
    r, g = t([0.0, 2.0, 4.0, 4.0]), ids([0, 0, 1, 1])
    # group centred: [-1, 1, 0, 0] (group 1 constant -> exactly 0)
    # batch: mean 2.5, dev [-2.5,-0.5,1.5,1.5], sq sum 6.25+0.25+2.25+2.25 = 11, /3 -> std 1.914854
    std_b = math.sqrt(11 / 3) + 1e-6
    torch.testing.assert_close(A.grpo(r, g, scale="batch"), t([-1 / std_b, 1 / std_b, 0, 0]))
    torch.testing.assert_close(A.grpo(r, g, scale="none"), t([-1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(A.dr_grpo(r, g), t([-1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        A.grpo(r, g, scale="std")


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "opo", "pass_at_k"])
def test_all_equal_rewards_and_singletons_give_exact_zero(name):
    r = t([0.1, 0.1, 0.1, 0.7, 1.0, 1.0])  # 0.1*3 has float error in the mean; still exact 0
    g = ids([0, 0, 0, 5, 9, 9])  # group 5 is a singleton
    mask = torch.ones(6, 3, dtype=torch.bool)
    adv = get_advantage(name)(r, g, mask=mask)
    assert not torch.isnan(adv).any()
    assert torch.equal(adv, torch.zeros_like(adv))


def test_integer_rewards_are_promoted():
    adv = A.grpo(torch.tensor([1, 0]), ids([0, 0]))
    assert adv.is_floating_point()
    # mean 0.5, unbiased std = sqrt(0.5) = 0.707107 -> +-0.707106
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]) / (math.sqrt(0.5) + 1e-6))


def test_grpo_zero_mean_within_each_group_random():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        gid = torch.randint(-5, 6, (40,), generator=gen)
        r = torch.randn(40, generator=gen, dtype=F64)
        for scale in ["group", "batch", "none"]:
            adv = A.grpo(r, gid, scale=scale)
            torch.testing.assert_close(group_sums(adv, gid), torch.zeros_like(group_sums(adv, gid)))


# --------------------------------------------------------------------------- rloo


def test_rloo_hand_values():
    adv = A.rloo(t([1.0, 0.0, 0.0, 1.0, 3.0]), ids([2, 2, 2, 2, 8]))
    # row 0: 1 - mean(0,0,1) = 1 - 1/3 = 2/3; row 1: 0 - mean(1,0,1) = -2/3; singleton -> 0
    torch.testing.assert_close(adv, t([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0]))


def test_rloo_equals_scaled_centering_and_leave_one_out_random():
    gen = torch.Generator().manual_seed(1)
    gid = torch.randint(0, 6, (50,), generator=gen)
    r = torch.rand(50, generator=gen, dtype=F64)
    adv = A.rloo(r, gid)
    for i in range(50):
        same = gid == gid[i]
        G = int(same.sum())
        if G == 1:
            assert adv[i] == 0
            continue
        others = r[same].sum() - r[i]
        torch.testing.assert_close(adv[i], r[i] - others / (G - 1))  # leave-one-out
        torch.testing.assert_close(adv[i], G / (G - 1) * (r[i] - r[same].mean()))


# --------------------------------------------------------------------------- opo


def test_opo_length_weighted_baseline():
    r = t([1.0, 0.0, 1.0, 5.0])
    g = ids([0, 0, 0, 1])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # lengths [2,1,3]; b = (2*1 + 1*0 + 3*1)/6 = 5/6 -> A = [1/6, -5/6, 1/6]; singleton -> 0
    torch.testing.assert_close(A.opo(r, g, mask=mask), t([1 / 6, -5 / 6, 1 / 6, 0.0]))
    with pytest.raises(ValueError, match="mask"):
        A.opo(r, g)


def test_opo_all_empty_lengths_fall_back_to_mean():
    mask = torch.zeros(2, 3, dtype=torch.bool)
    # sum of lengths 0 -> plain mean 0.5 -> [0.5, -0.5]
    torch.testing.assert_close(A.opo(t([1.0, 0.0]), ids([0, 0]), mask=mask), t([0.5, -0.5]))


# --------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_values():
    r = t([1.0, 0.0, 0.0, 0.0])
    adv = A.pass_at_k(r, ids([0, 0, 0, 0]), k=2)
    # n=4, c=1, k=2: R = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5, sigma = sqrt(0.25) = 0.5
    # A+ = (1 - 0.5)/0.5 = 1;  A- = (1 - 0.5 - C(2,1)/C(3,1))/0.5 = (0.5 - 2/3)/0.5 = -1/3
    s = 0.5 + 1e-6
    torch.testing.assert_close(adv, t([0.5 / s, -(1 / 6) / s, -(1 / 6) / s, -(1 / 6) / s]))


def test_pass_at_k_k1_is_grpo_with_biased_std():
    r = t([1.0, 0.0, 1.0, 1.0])
    # k=1: R = c/n = 0.75, sigma = sqrt(0.75*0.25) = 0.433013 = biased std
    # A+ = 0.25/0.433013 = 0.577350, A- = (0.25 - 1)/0.433013 = -1.732051
    adv = A.pass_at_k(r, ids([0, 0, 0, 0]), k=1)
    s = math.sqrt(0.75 * 0.25) + 1e-6
    torch.testing.assert_close(adv, t([0.25 / s, -0.75 / s, 0.25 / s, 0.25 / s]))


def test_pass_at_k_threshold_and_k_larger_than_group():
    # rewards 0.9 / 0.2 binarised at 0.5; group of 2 with k=4 -> k clamped to 2:
    # R = 1 - C(1,2)/C(2,2) = 1 (every 2-subset contains the correct one) -> sigma 0 -> A = 0
    adv = A.pass_at_k(t([0.9, 0.2]), ids([0, 0]), k=4)
    assert torch.equal(adv, torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="k must be"):
        A.pass_at_k(t([1.0]), ids([0]), k=0)


def _brute_force_pass_at_k(correct, k):
    """Paper's definition: mean over k-subsets of the (normalised) max reward."""
    n = len(correct)
    subsets = list(itertools.combinations(range(n), k))
    rew = [float(any(correct[j] for j in s)) for s in subsets]
    R = sum(rew) / len(rew)
    sigma = math.sqrt(sum((x - R) ** 2 for x in rew) / len(rew))  # biased std over subsets
    out = []
    for i in range(n):
        mine = [x for s, x in zip(subsets, rew, strict=True) if i in s]
        out.append((sum(mine) / len(mine) - R) / (sigma + 1e-6))
    return out


@pytest.mark.parametrize("n,k", [(4, 2), (5, 3), (6, 2), (6, 4), (3, 1)])
def test_pass_at_k_matches_subset_enumeration(n, k):
    gen = torch.Generator().manual_seed(n * 10 + k)
    for _ in range(4):
        correct = (torch.rand(n, generator=gen) < 0.4).tolist()
        r = t([float(c) for c in correct])
        adv = A.pass_at_k(r, ids([3] * n), k=k)
        torch.testing.assert_close(adv, t(_brute_force_pass_at_k(correct, k)))


# --------------------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_gamma1_whitened_over_batch():
    r = t([1.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    adv = get_advantage("reinforce_pp")(r, ids([0, 1]), mask=mask)
    # returns on valid tokens: row0 [1,1], row1 [0]; mean 2/3
    # unbiased var = ((1/3)^2*2 + (2/3)^2)/2 = 1/3 -> A = (x - 2/3)/sqrt(1/3 + 1e-8)
    s = math.sqrt(1 / 3 + 1e-8)
    torch.testing.assert_close(adv, t([[1 / 3 / s, 1 / 3 / s, 0.0], [-2 / 3 / s, 0.0, 0.0]]))


def test_reinforce_pp_discount_and_mask_holes():
    r = t([1.0, 0.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    adv = A.reinforce_pp(r, ids([0, 0]), mask=mask, gamma=0.5)
    # row0 last valid token t=1: returns [0.5, 1]; row1 [0]; values {0.5,1,0}: mean 0.5,
    # var = (0 + 0.25 + 0.25)/2 = 0.25 -> [[0, 1, 0], [-1, 0, 0]] (x / sqrt(0.25 + 1e-8))
    s = math.sqrt(0.25 + 1e-8)
    torch.testing.assert_close(adv, t([[0.0, 0.5 / s, 0.0], [-0.5 / s, 0.0, 0.0]]))
    # a masked hole: last valid token is t=2, discount counts positions: [0.25, -, 1]
    hole = torch.tensor([[1, 0, 1], [1, 0, 0]], dtype=torch.bool)
    adv = A.reinforce_pp(r, ids([0, 0]), mask=hole, gamma=0.5)
    # values {0.25, 1, 0}: mean 5/12, var = ((1/6)^2 + (7/12)^2 + (5/12)^2)/2 = 0.270833
    v = ((0.25 - 5 / 12) ** 2 + (1 - 5 / 12) ** 2 + (5 / 12) ** 2) / 2
    s = math.sqrt(v + 1e-8)
    expected = t([[(0.25 - 5 / 12) / s, 0.0, (1 - 5 / 12) / s], [(-5 / 12) / s, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)


def test_reinforce_pp_baseline_hand_values():
    r = t([1.0, 0.0, 3.0])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool)
    adv = A.reinforce_pp_baseline(r, ids([0, 0, 1]), mask=mask)
    # centred [0.5, -0.5, 0 (singleton)] -> tokens .5,.5,-.5,0,0: mean 0.1
    # dev .4,.4,-.6,-.1,-.1; sq sum .7; unbiased var .7/4 = .175
    s = math.sqrt(0.175 + 1e-8)
    expected = t([[0.4 / s, 0.4 / s], [-0.6 / s, 0.0], [-0.1 / s, -0.1 / s]])
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline"])
def test_token_level_estimators_need_mask_and_handle_degenerate(name):
    fn = get_advantage(name)
    with pytest.raises(ValueError, match="mask"):
        fn(t([1.0, 0.0]), ids([0, 0]))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # all-equal rewards: zero variance -> zeros, no NaN (rsqrt(0 + 1e-8) * 0)
    adv = fn(t([1.0, 1.0]), ids([0, 0]), mask=mask)
    assert torch.equal(adv, torch.zeros(2, 3, dtype=F64))
    # empty mask -> zeros
    adv = fn(t([1.0, 0.0]), ids([0, 0]), mask=torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(adv, torch.zeros(2, 3, dtype=F64))


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline"])
def test_token_level_whitened_zero_mean_unit_var(name):
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(12, 7, generator=gen) < 0.7
    mask[:, 0] = True
    r = torch.randn(12, generator=gen, dtype=F64)
    adv = get_advantage(name)(r, torch.randint(0, 3, (12,), generator=gen), mask=mask)
    vals = adv[mask]
    torch.testing.assert_close(vals.mean(), torch.zeros((), dtype=F64))
    torch.testing.assert_close(vals.var(), torch.ones((), dtype=F64), atol=1e-6, rtol=1e-6)
    assert torch.equal(adv[~mask], torch.zeros_like(adv[~mask]))
