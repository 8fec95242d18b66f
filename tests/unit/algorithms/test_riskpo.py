"""RiskPO (mixed value-at-risk over question bundles) against hand-computed values.

Hand arithmetic uses eps=0 so the numbers stay readable; torch.quantile's linear
interpolation over n sorted scores puts level u at position u (n - 1).
"""

import math

import pytest
import torch

from rlkit.algorithms.advantages import RISKPO_CREDITS, get_advantage, riskpo

F64 = torch.float64
R3 = math.sqrt(3.0)


def t(x):
    return torch.tensor(x, dtype=F64)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


# Bundle of two questions, three responses each (bundle_size=2):
#   question 0 rewards [1, 0, 1]   mean 2/3, unbiased std sqrt((1/9 + 4/9 + 1/9) / 2) = 1/sqrt(3)
#   question 1 rewards [1, 1, 1]   all solved, std 0 -> 1 under the "std" rule
# Papers (k-th response of each question): S = [1+1, 0+1, 1+1] = [2, 1, 2]; sorted [1, 2, 2].
#   q_a (alpha=0.2): position 0.4 -> 1 + 0.4 (2 - 1) = 1.4;  q_b (beta=0.8): position 1.6 -> 2
#   A_rvar = (clamp(S, 1.4, 2) - 1.4) / 0.6        = [1, 0, 1]
#   A_cvar = -(1.4 - S)^+ / 0.2                    = [0, -2, 0]
#   A      = (1.5 A_cvar + A_rvar) / 2.5           = [0.4, -1.2, 0.4]
#   std_bundle([2, 1, 2]) = 1/sqrt(3)  ->  A       = [0.4 sqrt3, -1.2 sqrt3, 0.4 sqrt3]
R_A = t([1, 0, 1, 1, 1, 1])
G_A = ids([0, 0, 0, 1, 1, 1])
PAPER_A = [0.4 * R3, -1.2 * R3, 0.4 * R3]


def _riskpo(rewards, groups, **params):
    params = {"bundle_size": 2, "eps": 0.0, **params}
    return riskpo(rewards, groups, **params)


def test_registered_with_defaults():
    fn = get_advantage("riskpo")
    assert fn is riskpo and fn.needs_group is True and fn.needs_answers is False
    # Defaults of the official DAPO-Math script.
    kw = riskpo.__kwdefaults__
    assert (kw["bundle_size"], kw["alpha"], kw["beta"], kw["omega"]) == (5, 0.2, 0.8, 1.5)
    assert (kw["credit"], kw["natural_baseline"], kw["norm_by_std"]) == ("sum_mean", False, True)


def test_range_var_identity():
    # (S - q_a)^+ - (S - q_b)^+ = clamp(S, q_a, q_b) - q_a for q_a <= q_b, whichever side S is on.
    g = torch.Generator().manual_seed(0)
    S = torch.randn(1000, generator=g, dtype=F64) * 3
    q = torch.randn(1000, 2, generator=g, dtype=F64).sort(dim=1).values
    qa, qb = q[:, 0], q[:, 1]
    lhs = (S - qa).clamp(min=0) - (S - qb).clamp(min=0)
    assert torch.allclose(lhs, torch.clamp(S, qa, qb) - qa, atol=1e-12, rtol=0)
    # Hence A_rvar >= 0 without the natural baseline and <= 0 with it (omega = 0, no std).
    r = torch.randint(0, 2, (40,), generator=g).to(F64)
    groups = torch.arange(40) // 5  # 8 questions of 5 responses, bundles of 3 (last one partial)
    plain = riskpo(r, groups, bundle_size=3, omega=0.0, norm_by_std=False, credit="uniform")
    natural = riskpo(r, groups, bundle_size=3, omega=0.0, norm_by_std=False, credit="uniform",
                     natural_baseline=True)
    assert (plain >= 0).all() and (plain > 0).any()
    assert (natural <= 0).all() and (natural < 0).any()


def test_range_var_matches_clamp_form_against_torch_quantile():
    # omega = 0, no std: A = (clamp(S, q_a, q_b) - q_a) / (beta - alpha), q from torch.quantile.
    r = t([1, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 0])  # two questions of 6 responses, one bundle
    groups = ids([0] * 6 + [1] * 6)
    S = r[:6] + r[6:]  # paper scores [2, 1, 1, 0, 1, 1]
    qa, qb = torch.quantile(S, 0.3), torch.quantile(S, 0.7)
    expected = (torch.clamp(S, qa, qb) - qa) / (0.7 - 0.3)
    got = _riskpo(r, groups, alpha=0.3, beta=0.7, omega=0.0, norm_by_std=False, credit="uniform")
    assert torch.allclose(got, torch.cat([expected, expected]), atol=1e-12)


@pytest.mark.parametrize("credit", RISKPO_CREDITS)
@pytest.mark.parametrize("natural_baseline", [False, True])
def test_all_solved_bundle_is_exactly_zero(credit, natural_baseline):
    # Bundle 0 (questions 0, 1): every paper scores 2 -> q_a = q_b = S -> A = 0 exactly, no 1e-17.
    # Bundle 1 (questions 2, 3) varies, so the batch as a whole is informative.
    r = t([1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0])  # bundle 1: S = [2, 1, 0]
    groups = ids([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    adv = riskpo(r, groups, bundle_size=2, credit=credit, natural_baseline=natural_baseline)
    assert (adv[:6] == 0).all()
    assert (adv[6:] != 0).any()


def test_uniform_credit():
    # Every response of a paper gets the paper's A (header arithmetic).
    adv = _riskpo(R_A, G_A, credit="uniform")
    assert torch.allclose(adv, t(PAPER_A + PAPER_A), atol=1e-12)


def test_score_credit():
    # 0.5 A if r > 0 else 1.5 A:
    #   question 0, r = [1, 0, 1]: [0.5*0.4 sqrt3, 1.5*(-1.2) sqrt3, 0.5*0.4 sqrt3] = [0.2, -1.8, 0.2] sqrt3
    #   question 1, r = [1, 1, 1]: [0.2, -0.6, 0.2] sqrt3
    adv = _riskpo(R_A, G_A, credit="score")
    assert torch.allclose(adv, t([0.2 * R3, -1.8 * R3, 0.2 * R3, 0.2 * R3, -0.6 * R3, 0.2 * R3]), atol=1e-12)


def test_std_credit():
    # A / sigma_q:  question 0: sigma = 1/sqrt3 -> A sqrt3 = [0.4*3, -1.2*3, 0.4*3] = [1.2, -3.6, 1.2]
    #               question 1: sigma = 0 <= 1e-3 -> 1, A unchanged
    adv = _riskpo(R_A, G_A, credit="std")
    assert torch.allclose(adv, t([1.2, -3.6, 1.2] + PAPER_A), atol=1e-12)


def test_sum_mean_credit():
    # A (r_i - mu_q) / sum_paper (r_j - mu_qj): question 1 is constant (deviations 0), so each
    # paper's sum is question 0's deviation: share 1 for question 0, 0 for question 1.
    #   paper 0: d = (1/3, 0) -> shares (1, 0); paper 1: (-2/3, 0) -> (1, 0); paper 2: (1/3, 0)
    adv = _riskpo(R_A, G_A, credit="sum_mean")
    assert torch.allclose(adv, t(PAPER_A + [0.0, 0.0, 0.0]), atol=1e-12)


def test_sum_mean_credit_falls_back_to_equal_shares():
    # question 0 rewards [1, 1, 0]: mean 2/3, d = [1/3, 1/3, -2/3]
    # question 1 rewards [0, 1, 0]: mean 1/3, d = [-1/3, 2/3, -1/3]
    # S = [1, 2, 0]; sorted [0, 1, 2]: q_a = 0.4, q_b = 1.6
    #   A_rvar = (clamp(S, 0.4, 1.6) - 0.4) / 0.6 = [1, 2, 0];  A_cvar = -(0.4 - S)^+ / 0.2 = [0, 0, -2]
    #   A = (1.5 A_cvar + A_rvar) / 2.5 = [0.4, 0.8, -1.2];  std([1, 2, 0]) = 1
    # paper 0: sum d = 1/3 - 1/3 = 0 -> A / 2 = 0.2 each
    # paper 1: sum d = 1 -> 0.8 * 1/3, 0.8 * 2/3
    # paper 2: sum d = -1 -> -1.2 * (-2/3) / (-1) = -0.8, -1.2 * (-1/3) / (-1) = -0.4
    adv = _riskpo(t([1, 1, 0, 0, 1, 0]), G_A, credit="sum_mean")
    assert torch.allclose(adv, t([0.2, 0.8 / 3, -0.8, 0.2, 1.6 / 3, -0.4]), atol=1e-12)


def test_natural_baseline_value():
    # A_rvar = (clamp(S, 1.4, 2) - 2) / 0.6 = [0, -1, 0];  A = (1.5 [0, -2, 0] + [0, -1, 0]) / 2.5
    #        = [0, -1.6, 0];  / (1/sqrt3) -> [0, -1.6 sqrt3, 0]
    adv = _riskpo(R_A, G_A, credit="uniform", natural_baseline=True)
    assert torch.allclose(adv, t([0, -1.6 * R3, 0] * 2), atol=1e-12)


def test_bundles_follow_batch_order_and_last_partial_bundle_stands_alone():
    # Ids 7, 3, 5 in batch order with bundle_size=2: bundles {7, 3} and {5}; the estimator on
    # each bundle alone gives the same rows. Ids are arbitrary integers, not sorted.
    r = t([1, 0, 1, 1, 1, 1, 0, 1, 0])
    groups = ids([7, 7, 7, 3, 3, 3, 5, 5, 5])
    adv = riskpo(r, groups, bundle_size=2, credit="std")
    first = riskpo(r[:6], groups[:6], bundle_size=2, credit="std")
    last = riskpo(r[6:], groups[6:], bundle_size=2, credit="std")
    assert torch.equal(adv, torch.cat([first, last]))
    # Rows of different groups may interleave: the k-th response is the k-th row of its group
    # in batch order, so interleaving the same rows changes nothing.
    perm = ids([0, 3, 6, 1, 4, 7, 2, 5, 8])
    assert torch.equal(riskpo(r[perm], groups[perm], bundle_size=2, credit="std"), adv[perm])


def test_bundle_size_one_is_per_question_quantiles():
    # One question per bundle: its papers are its own responses. r = [0, 1, 1, 1] (n = 4)
    #   q_a: position 0.6 -> 0 + 0.6 (1 - 0) = 0.6;  q_b: position 2.4 -> 1
    #   A_rvar = (clamp(r, 0.6, 1) - 0.6) / 0.6 = [0, 2/3, 2/3, 2/3]
    #   A_cvar = -(0.6 - r)^+ / 0.2 = [-3, 0, 0, 0]
    #   A = (1.5 A_cvar + A_rvar) / 2.5 = [-4.5 / 2.5, (2/3) / 2.5, ...] = [-1.8, 4/15, 4/15, 4/15]
    adv = riskpo(t([0, 1, 1, 1]), ids([0] * 4), bundle_size=1, eps=0.0, norm_by_std=False, credit="uniform")
    assert torch.allclose(adv, t([-1.8, 4 / 15, 4 / 15, 4 / 15]), atol=1e-12)


def test_unequal_groups_use_complete_papers_only():
    # Papers are drawn without replacement: question 1 has 2 responses, so only papers 0 and 1
    # exist; question 0's third response gets 0. S = [1+1, 0+0] = [2, 0]: q_a = 0.4, q_b = 1.6;
    #   A_rvar = [1.2, 0] / 0.6 = [2, 0];  A_cvar = [0, -0.4 / 0.2] = [0, -2]
    #   A = (1.5 A_cvar + A_rvar) / 2.5 = [0.8, -1.2]  (no std, uniform)
    adv = _riskpo(t([1, 0, 1, 1, 0]), ids([0, 0, 0, 1, 1]), norm_by_std=False, credit="uniform")
    assert torch.allclose(adv, t([0.8, -1.2, 0.0, 0.8, -1.2]), atol=1e-12)


def test_singletons_and_one_paper_bundles_are_zero():
    # One response per question: each bundle has one paper, q_a = q_b = S -> 0.
    adv = riskpo(t([1, 0, 1, 0, 1]), ids([0, 1, 2, 3, 4]), bundle_size=2)
    assert (adv == 0).all()


def test_dtype_and_shape():
    adv = riskpo(torch.tensor([1, 0, 1, 1], dtype=torch.int64), ids([0, 0, 1, 1]))
    assert adv.shape == (4,) and adv.dtype == torch.get_default_dtype()


@pytest.mark.parametrize(
    ("params", "fragments"),
    [
        ({"alpha": 0.9, "beta": 0.1}, ["alpha must be < beta", "alpha=0.9", "beta=0.1"]),
        ({"alpha": 0.5, "beta": 0.5}, ["alpha must be < beta"]),
        ({"alpha": -0.1}, ["alpha", "must be in [0, 1]", "-0.1"]),
        ({"beta": 1.5}, ["beta", "must be in [0, 1]", "1.5"]),
        ({"omega": -1.0}, ["omega", "must be >= 0", "-1.0"]),
        ({"bundle_size": 0}, ["bundle_size", "integer >= 1", "0"]),
        ({"bundle_size": 2.5}, ["bundle_size", "integer >= 1", "2.5"]),
        ({"credit": "sum-mean"}, ["credit must be one of uniform, std, sum_mean, score", "'sum-mean'"]),
    ],
)
def test_bad_params_raise(params, fragments):
    with pytest.raises(ValueError) as info:
        riskpo(R_A, G_A, **params)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
