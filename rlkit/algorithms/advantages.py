"""Advantage estimators: pure functions from rewards to advantages.

Every estimator has one calling convention, and this module's registry is the only
dispatcher (see docs/algorithms.md for formulas, references and departures):

    fn(rewards [N] float, group_ids [N] long, *, mask=None, **params) -> Tensor [N] or [N, T]

- `group_ids` marks the rows that answer the same prompt. Ids may be arbitrary integers
  (not necessarily 0..B-1, not necessarily contiguous); they are mapped to dense indices with
  `torch.unique(return_inverse=True)` and all group statistics are computed with `index_add_`.
- `mask` is the completion mask [N, T] bool (True = token counts). Token-level estimators
  (REINFORCE++) and length-aware ones (OPO) need it; the others ignore it.
- `answers` [N] long: answer-cluster ids (rows of one prompt with the same extracted final
  answer share an id; see rlkit/algorithms/answers.py). Passed only to estimators that
  declare `needs_answers=True` (COPO); part of the calling convention, never a config param.
- Params are plain keyword floats/strings. No config objects, no `.item()`.

Conventions shared by the group estimators:
- A group of one gets advantage 0 (there is no baseline to compare against). verl instead
  gives a singleton mean 0 / std 1, i.e. advantage = reward; we depart on purpose: a lone
  sample carries no relative signal.
- A group whose rewards are all equal gets exactly 0.0 (not ~1e-17), so downstream
  `diag/zero_adv_frac` can count zeros exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rlkit.registry import Registry, UnknownNameError

__all__ = [
    "ADVANTAGES",
    "RISKPO_CREDITS",
    "UnknownNameError",
    "available_advantages",
    "copo",
    "dr_grpo",
    "get_advantage",
    "grpo",
    "hapo_tlga",
    "masked_whiten",
    "opo",
    "pass_at_k",
    "register_advantage",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "riskpo",
    "rloo",
]


# The one dispatcher of estimators. Params are the keywords after the calling convention
# (`rewards, group_ids, *, mask, answers`); `needs_group` declares whether rows are compared
# within their group (the config then requires rollout.group_size >= 2); `needs_answers`
# declares that the estimator takes `answers=` cluster ids (the config then requires
# advantage.answer_extractor, and the training step extracts them from the completions).
ADVANTAGES: Registry[Callable[..., Tensor]] = Registry(
    "advantage estimator",
    name_attr="estimator_name",
    fixed=("rewards", "group_ids", "mask", "answers"),
    declared={"needs_group": True, "needs_answers": False},
)


def register_advantage(name: str, *, needs_group: bool = True, needs_answers: bool = False):
    """Register an estimator under `name`; sets `fn.needs_group` (False: groups unused) and
    `fn.needs_answers` (True: call it with `answers=[N] long` answer-cluster ids)."""
    return ADVANTAGES.register(name, needs_group=needs_group, needs_answers=needs_answers)


def available_advantages() -> list[str]:
    return ADVANTAGES.names()


def get_advantage(name_or_path: str) -> Callable[..., Tensor]:
    """A registered estimator, or any function by import path `pkg.module:function`."""
    return ADVANTAGES.get(name_or_path)


# ---------------------------------------------------------------------------------------
# helpers


def _float(rewards: Tensor) -> Tensor:
    """Integer/bool rewards -> default float dtype; float16/32/64 kept."""
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def _groups(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Arbitrary group ids [N] -> dense index [N] in 0..B-1 and group sizes [B]."""
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return inv, counts


def _group_sum(x: Tensor, inv: Tensor, num: int) -> Tensor:
    return torch.zeros(num, dtype=x.dtype, device=x.device).index_add_(0, inv, x)  # [B]


def _group_const(r: Tensor, inv: Tensor, num: int) -> Tensor:
    """[N] bool: the row's group has all-equal rewards (singletons included)."""
    gmax = torch.full((num,), -torch.inf, dtype=r.dtype, device=r.device)
    gmin = torch.full((num,), torch.inf, dtype=r.dtype, device=r.device)
    gmax = gmax.scatter_reduce(0, inv, r, "amax")  # [B]
    gmin = gmin.scatter_reduce(0, inv, r, "amin")  # [B]
    return (gmax == gmin)[inv]


def _group_centered(r: Tensor, inv: Tensor, counts: Tensor) -> Tensor:
    """r - group mean [N]; exactly 0 in groups whose rewards are all equal (incl. singletons)."""
    B = counts.shape[0]
    mean = _group_sum(r, inv, B) / counts.to(r.dtype)  # [B]
    const = _group_const(r, inv, B)  # float error in the mean would otherwise leak ~1e-17
    return torch.where(const, torch.zeros_like(r), r - mean[inv])


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the True entries of mask; 0 where mask is False.

    Matches verl `masked_whiten` (unbiased variance, shift_mean=True, rsqrt(var + 1e-8)).
    """
    m = mask.to(x.dtype)
    n = m.sum()
    mean = (x * m).sum() / n.clamp(min=1)
    var = ((x - mean).square() * m).sum() / (n - 1).clamp(min=1)  # Bessel, as verl
    return torch.where(mask, (x - mean) * torch.rsqrt(var + eps), torch.zeros_like(x))


def _need_mask(mask: Tensor | None, name: str, n: int) -> Tensor:
    if mask is None:
        raise ValueError(f"advantage estimator {name!r} needs mask=[N, T] bool completion mask")
    if mask.dim() != 2 or mask.shape[0] != n:
        raise ValueError(f"{name}: mask must be [N, T] with N={n}, got {tuple(mask.shape)}")
    return mask.bool()


# ---------------------------------------------------------------------------------------
# group-relative estimators (outcome reward -> [N])


@register_advantage("grpo")
def grpo(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mask: Tensor | None = None,
    scale: str = "group",
    eps: float = 1e-6,
) -> Tensor:
    """GRPO group-relative advantage (DeepSeekMath, arXiv 2402.03300).

    A_i = (r_i - mean_g r) / (std_g r + eps), std unbiased (torch.std), as verl.
    scale="group": divide by the group std (the paper); "batch": divide by the std of all N
    rewards (group mean, batch std; "Tricks or Traps", arXiv 2508.08221); "none": no division
    (Dr. GRPO, arXiv 2503.20783). Singletons and constant groups -> 0.
    """
    r = _float(rewards)  # [N]
    inv, counts = _groups(group_ids)
    centered = _group_centered(r, inv, counts)  # [N]
    if scale == "group":
        var = _group_sum(centered.square(), inv, counts.shape[0])
        var = var / (counts - 1).clamp(min=1).to(r.dtype)  # [B], unbiased
        return centered / (var.sqrt()[inv] + eps)
    if scale == "batch":
        var = (r - r.mean()).square().sum() / max(r.shape[0] - 1, 1)  # unbiased
        return centered / (var.sqrt() + eps)
    if scale == "none":
        return centered
    raise ValueError(f"grpo: scale must be one of 'group', 'batch', 'none'; got {scale!r}")


@register_advantage("dr_grpo")
def dr_grpo(rewards: Tensor, group_ids: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Dr. GRPO (arXiv 2503.20783): A_i = r_i - mean_g r, no std division (grpo scale="none")."""
    return grpo(rewards, group_ids, mask=mask, scale="none")


@register_advantage("rloo")
def rloo(rewards: Tensor, group_ids: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """RLOO (Ahmadian et al., arXiv 2402.14740): leave-one-out baseline.

    A_i = r_i - mean_{j != i} r_j = G/(G-1) * (r_i - mean_g r). Group of one -> 0.
    """
    r = _float(rewards)  # [N]
    inv, counts = _groups(group_ids)
    centered = _group_centered(r, inv, counts)  # [N]
    G = counts.to(r.dtype)[inv]  # [N]
    return centered * G / (G - 1).clamp(min=1)


@register_advantage("opo")
def opo(rewards: Tensor, group_ids: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """OPO optimal baseline (Hao et al., "On-Policy RL with Optimal Reward Baseline",
    arXiv 2505.23585).


    Length-weighted group baseline b = sum_i |o_i| r_i / sum_i |o_i|; A_i = r_i - b (no std).
    |o_i| = number of True mask tokens. A group whose lengths are all 0 falls back to the
    plain mean. Singletons and constant groups -> 0.
    """
    r = _float(rewards)  # [N]
    m = _need_mask(mask, "opo", r.shape[0])
    inv, counts = _groups(group_ids)
    B = counts.shape[0]
    length = m.sum(-1).to(r.dtype)  # [N]
    wsum = _group_sum(length * r, inv, B)  # [B]
    lsum = _group_sum(length, inv, B)  # [B]
    mean = _group_sum(r, inv, B) / counts.to(r.dtype)  # [B]
    base = torch.where(lsum > 0, wsum / lsum.clamp(min=1), mean)  # [B]
    const = _group_const(r, inv, B)  # constant groups / singletons -> exactly 0
    return torch.where(const, torch.zeros_like(r), r - base[inv])


@register_advantage("hapo_tlga")
def hapo_tlga(
    rewards: Tensor, group_ids: Tensor, *, mask: Tensor | None = None, eps: float = 1e-6, fallback: float = 5.0
) -> Tensor:
    """HAPO's Token-Level Group Average (arXiv 2509.16591; `compute_hapo_outcome_advantage` in
    the authors' repository starriver030515/HAPO): group statistics over tokens, not responses.

    Each reward counts once per token of its response: mu_g = sum_i |o_i| r_i / sum_i |o_i|,
    sigma_g = sqrt(sum_i |o_i| (r_i - mu_g)^2 / sum_i |o_i|) (biased), A_i = (r_i - mu_g) /
    (sigma_g + eps). A group where some |A_i| >= `fallback` (a short outlier would dominate)
    falls back to the GRPO advantage (unbiased std, same eps), as does a group whose lengths
    are all 0. Singletons and constant groups -> 0.
    """
    if fallback <= 0:
        raise ValueError(f"hapo_tlga: fallback must be > 0 (paper: 5), got {fallback}")
    r = _float(rewards)  # [N]
    m = _need_mask(mask, "hapo_tlga", r.shape[0])
    inv, counts = _groups(group_ids)
    B = counts.shape[0]
    length = m.sum(-1).to(r.dtype)  # [N]
    lsum = _group_sum(length, inv, B)  # [B]
    mu = _group_sum(length * r, inv, B) / lsum.clamp(min=1)  # [B]
    var = _group_sum(length * (r - mu[inv]).square(), inv, B) / lsum.clamp(min=1)  # [B], biased
    adv = (r - mu[inv]) / (var.sqrt()[inv] + eps)  # [N]
    big = _group_sum((adv.abs() >= fallback).to(r.dtype), inv, B) > 0  # [B]
    use_grpo = (big | (lsum == 0))[inv]  # [N]
    adv = torch.where(use_grpo, grpo(r, group_ids, eps=eps), adv)
    return torch.where(_group_const(r, inv, B), torch.zeros_like(r), adv)


@register_advantage("pass_at_k")
def pass_at_k(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mask: Tensor | None = None,
    k: int = 4,
    threshold: float = 0.5,
    eps: float = 1e-6,
) -> Tensor:
    """Analytic Pass@k advantage (Chen et al., "Pass@k Training", arXiv 2508.10751, Eqs. 14-15).

    Binary outcome per response: correct = reward > threshold. In a group of n with c correct,
    the group reward (pass@k of a random k-subset) and its std are
        R = 1 - C(n-c, k) / C(n, k),  sigma = sqrt(R (1 - R)),
    and each response gets the expected normalised advantage of the k-subsets it belongs to:
        correct:   A+ = (1 - R) / (sigma + eps)
        incorrect: A- = (1 - R - C(n-c-1, k-1) / C(n-1, k-1)) / (sigma + eps)
    Matches RUCAIBox/Passk_Training code/passk_adv.py (eps=1e-6). Departures: rewards are
    binarised with `threshold` (the reference only maps exact 1/0 and passes other values
    through unchanged), and k is clamped to each group's size (C(n, k) = 0 for k > n).
    Binomial ratios are computed in float64 via lgamma. k=1 gives (r - p) / sqrt(p (1 - p)),
    i.e. GRPO with the biased std.
    """
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got {k}")
    correct = rewards > threshold  # [N] bool
    inv, counts = _groups(group_ids)
    B = counts.shape[0]
    n = counts.to(torch.float64)  # [B]
    c = _group_sum(correct.to(torch.float64), inv, B)  # [B]
    kk = torch.clamp(n, max=float(k))  # [B]
    fail = _comb_ratio(n - c, n, kk)  # C(n-c, k) / C(n, k)             [B]
    cond = _comb_ratio(n - c - 1, n - 1, kk - 1)  # C(n-c-1, k-1)/C(n-1, k-1) [B]
    R = 1.0 - fail
    sigma = (R * (1.0 - R)).clamp(min=0).sqrt()
    a_pos = (1.0 - R) / (sigma + eps)  # [B]
    a_neg = (1.0 - R - cond) / (sigma + eps)  # [B]
    adv = torch.where(correct, a_pos[inv], a_neg[inv])  # [N]
    return adv.to(_float(rewards).dtype)


def _comb_ratio(a: Tensor, b: Tensor, k: Tensor) -> Tensor:
    """C(a, k) / C(b, k) for integer-valued float64 tensors with b >= a, b >= k >= 0.

    = prod_{i<k} (a - i) / (b - i); 0 when a < k (no k-subset avoids the correct ones).
    """
    ok = a >= k
    a_, b_ = a.clamp(min=0), b.clamp(min=0)
    log = (
        torch.lgamma(a_ + 1)
        - torch.lgamma((a_ - k).clamp(min=0) + 1)
        - torch.lgamma(b_ + 1)
        + torch.lgamma((b_ - k).clamp(min=0) + 1)
    )
    return torch.where(ok, log.exp(), torch.zeros_like(a))


# ---------------------------------------------------------------------------------------
# token-level estimators (-> [N, T], whitened over the batch)


@register_advantage("reinforce_pp", needs_group=False)
def reinforce_pp(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mask: Tensor | None = None,
    gamma: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++ (Hu, arXiv 2501.03262): token returns, whitened over the whole batch.

    The outcome reward sits on the last valid token of each row; returns
    G_t = sum_{s>=t} gamma^(s-t) r_s = gamma^(last-t) * r for t <= last (gamma=1: every valid
    token carries r). Then masked whitening over all valid tokens of the batch. Groups are
    not used. The per-token -beta*KL reward of the paper is not folded in here: rlkit adds KL
    as a loss term (PolicyLoss kl_coef) instead. Returns [N, T], 0 on padding.
    """
    r = _float(rewards)  # [N]
    m = _need_mask(mask, "reinforce_pp", r.shape[0])  # [N, T]
    T = m.shape[-1]
    pos = torch.arange(T, device=m.device)  # [T]
    last = torch.where(m, pos, -1).amax(-1, keepdim=True)  # [N, 1]
    steps = (last - pos).clamp(min=0).to(r.dtype)  # [N, T]
    returns = r[:, None] * torch.pow(torch.as_tensor(gamma, dtype=r.dtype), steps)  # [N, T]
    return masked_whiten(torch.where(m, returns, torch.zeros_like(returns)), m, eps)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mask: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++-baseline (arXiv 2501.03262; verl `compute_rf_baseline_outcome_advantage`).

    A_i = r_i - mean_g r, broadcast over the valid tokens, then masked whitening over the
    batch. Returns [N, T], 0 on padding. Singleton groups are centred to 0 (verl: mean 0).
    """
    r = _float(rewards)  # [N]
    m = _need_mask(mask, "reinforce_pp_baseline", r.shape[0])  # [N, T]
    inv, counts = _groups(group_ids)
    centered = _group_centered(r, inv, counts)  # [N]
    tok = torch.where(m, centered[:, None], torch.zeros((), dtype=r.dtype))  # [N, T]
    return masked_whiten(tok, m, eps)


# ---------------------------------------------------------------------------------------
# RiskPO: mixed value-at-risk over question bundles (-> [N])

RISKPO_CREDITS = ("uniform", "std", "sum_mean", "score")


@register_advantage("riskpo")
def riskpo(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mask: Tensor | None = None,
    bundle_size: int = 5,
    alpha: float = 0.2,
    beta: float = 0.8,
    omega: float = 1.5,
    natural_baseline: bool = False,
    norm_by_std: bool = True,
    credit: str = "sum_mean",
    eps: float = 1e-6,
) -> Tensor:
    """RiskPO mixed value-at-risk advantage (arXiv 2510.00911; [CODE] RTkenny/RiskPO
    `compute_grpo_bundle_rvar_outcome_advantage_quantile_tracking`, mixing measure on).

    1. Bundles: `bundle_size` consecutive groups, in the order of their first row in the
       batch, form a bundle; a last, partial bundle is a bundle of its own. Paper k of a
       bundle holds the k-th response (batch order) of each of its questions, and scores
       S_k = the sum of their rewards. Papers are drawn without replacement, as in the
       official code: k runs below the bundle's smallest group size; rows beyond get 0.
    2. Per bundle, q_a and q_b are the alpha- and beta-quantiles of its paper scores
       (linear interpolation, as torch.quantile; one paper: q = S, std = 1), and
           A_rvar = [(S - q_a)^+ - (S - q_b)^+ + c (q_a - q_b)] / (beta - alpha + eps)
                  = [clamp(S, q_a, q_b) - q_a + c (q_a - q_b)] / (beta - alpha + eps)
           A_cvar = -(q_a - S)^+ / (alpha + eps)
           A      = (omega A_cvar + A_rvar) / (omega + 1)   [/ (std_bundle(S) + eps)]
       with c = 1 if `natural_baseline` (then A_rvar <= 0, else >= 0) and the unbiased std
       of the bundle's paper scores if `norm_by_std`. omega = 0 gives pure range-VaR.
    3. `credit`, from the paper's A to row i of question q:
       "uniform": A; "std": A / (sigma_q + eps), sigma_q the unbiased std of question q's
       rewards (1 when <= 1e-3); "sum_mean": A (r_i - mu_q) / sum_{j in paper}(r_j - mu_qj),
       or A / (questions in the paper) when |sum| <= 1e-6; "score": 0.5 A if r_i > 0 else 1.5 A.
    A bundle whose papers all score the same (e.g. every question solved) gets exactly 0.

    Defaults: the official DAPO-Math script (the MATH script uses beta=0.9, credit="std",
    natural_baseline=True). rlkit's reading: the quantiles are each bundle's batch quantiles.
    The official code also has an SGD quantile tracker, but its tracked values are written
    after the advantage is computed and reach only the logs, so rlkit has no tracker.
    Bundling by batch order stands in for the code's `bundle_uid` (consecutive prompts share
    one before rollouts are repeated). The risk-seeking upper-tail variant is not implemented.
    """
    _check_riskpo(bundle_size, alpha, beta, omega, credit)
    r = _float(rewards)  # [N]
    if r.dtype not in (torch.float32, torch.float64):
        r = r.float()  # torch.nanquantile takes float32/float64 only
    inv, counts = _groups(group_ids)  # [N], [Q]
    Q = counts.shape[0]
    bundle = _batch_order_rank(inv, Q) // bundle_size  # [Q] bundle of each question
    nb = -(-Q // bundle_size)  # bundles, the last one possibly partial
    k = _rank_in_group(inv, counts)  # [N] paper of each row within its bundle
    K = torch.unique(k).shape[0]  # = largest group size (every k below it occurs)
    cell = bundle[inv] * K + k  # [N] flat index of the row's paper in [nb, K]
    S = torch.zeros(nb * K, dtype=r.dtype, device=r.device).index_add_(0, cell, r)  # [nb*K]
    nq = torch.zeros_like(S).index_add_(0, cell, torch.ones_like(r))  # [nb*K] questions per paper
    S, nq_paper = S.view(nb, K), nq.view(nb, K)  # [nb, K]
    nq_bundle = _group_sum(torch.ones(Q, dtype=r.dtype, device=r.device), bundle, nb)  # [nb]
    valid = nq_paper == nq_bundle[:, None]  # [nb, K] complete papers (without replacement)

    S_nan = torch.where(valid, S, torch.full_like(S, torch.nan))  # [nb, K]
    q_a = torch.nanquantile(S_nan, alpha, dim=1, keepdim=True)  # [nb, 1]
    q_b = torch.nanquantile(S_nan, beta, dim=1, keepdim=True)  # [nb, 1]
    c = 1.0 if natural_baseline else 0.0
    a_rvar = ((S - q_a).clamp(min=0) - (S - q_b).clamp(min=0) + c * (q_a - q_b)) / (beta - alpha + eps)
    a_cvar = -(q_a - S).clamp(min=0) / (alpha + eps)  # [nb, K]
    adv = (omega * a_cvar + a_rvar) / (omega + 1)  # [nb, K]
    if norm_by_std:
        n = valid.sum(1, keepdim=True).to(r.dtype)  # [nb, 1] papers per bundle, >= 1
        zero = torch.zeros_like(S)
        mean = torch.where(valid, S, zero).sum(1, keepdim=True) / n  # [nb, 1]
        var = torch.where(valid, (S - mean).square(), zero).sum(1, keepdim=True) / (n - 1).clamp(min=1)
        std = torch.where(n > 1, var.sqrt(), torch.ones_like(var))  # [nb, 1]
        adv = adv / (std + eps)
    adv = torch.where(valid, adv, torch.zeros_like(adv)).view(-1)[cell]  # [N] the row's paper's A
    return _riskpo_credit(adv, r, inv, counts, cell, nq, credit, eps)


def _check_riskpo(bundle_size: int, alpha: float, beta: float, omega: float, credit: str) -> None:
    if isinstance(bundle_size, bool) or not isinstance(bundle_size, int) or bundle_size < 1:
        raise ValueError(
            f"riskpo: bundle_size (groups per bundle) must be an integer >= 1, got {bundle_size!r}"
        )
    for name, level in (("alpha", alpha), ("beta", beta)):
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"riskpo: {name} is a quantile level and must be in [0, 1], got {level}")
    if alpha >= beta:
        raise ValueError(
            f"riskpo: alpha must be < beta (the range-VaR band lies between the alpha- and "
            f"beta-quantiles); got alpha={alpha}, beta={beta}"
        )
    if not omega >= 0:
        raise ValueError(f"riskpo: omega (weight of the CVaR term) must be >= 0, got {omega}")
    if credit not in RISKPO_CREDITS:
        raise ValueError(f"riskpo: credit must be one of {', '.join(RISKPO_CREDITS)}; got {credit!r}")


def _batch_order_rank(inv: Tensor, num: int) -> Tensor:
    """[B] rank of each dense group by its first row in the batch (0 = the first group seen)."""
    rows = torch.arange(inv.shape[0], device=inv.device)  # [N]
    first = torch.full((num,), inv.shape[0], dtype=torch.long, device=inv.device)
    first = first.scatter_reduce(0, inv, rows, "amin")  # [B] first row of each group
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(num, device=inv.device)  # [B]
    return rank


def _rank_in_group(inv: Tensor, counts: Tensor) -> Tensor:
    """[N] position of each row within its group, in batch order (0 = the group's first row)."""
    order = torch.argsort(inv, stable=True)  # [N] rows by group, batch order kept inside
    start = counts.cumsum(0) - counts  # [B] first slot of each group in `order`
    k = torch.empty_like(inv)
    k[order] = torch.arange(inv.shape[0], device=inv.device) - start[inv[order]]
    return k


def _riskpo_credit(
    adv: Tensor, r: Tensor, inv: Tensor, counts: Tensor, cell: Tensor, nq: Tensor, credit: str, eps: float
) -> Tensor:
    """RiskPO credit rules: paper advantage [N] -> row advantage [N] (see `riskpo`)."""
    if credit == "uniform":
        return adv
    if credit == "score":
        return torch.where(r > 0, 0.5 * adv, 1.5 * adv)
    centered = _group_centered(r, inv, counts)  # [N] r_i - mu_q
    if credit == "std":
        var = _group_sum(centered.square(), inv, counts.shape[0]) / (counts - 1).clamp(min=1).to(r.dtype)
        sigma = var.sqrt()  # [Q], unbiased
        sigma = torch.where(sigma > 1e-3, sigma, torch.ones_like(sigma))  # near-constant: 1 (official)
        return adv / (sigma[inv] + eps)
    total = torch.zeros_like(nq).index_add_(0, cell, centered)[cell]  # [N] sum over the row's paper
    big = total.abs() > 1e-6
    share = torch.where(big, centered / torch.where(big, total, torch.ones_like(total)), 1.0 / nq[cell])
    return adv * share


# ---------------------------------------------------------------------------------------
# COPO: consistency-aware blend of a group-relative and a batch-level advantage (-> [N])

COPO_GLOBAL_FORMS = ("response", "prompt")


@register_advantage("copo", needs_answers=True)
def copo(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    mask: Tensor | None = None,
    answers: Tensor | None = None,
    gamma: float = 20.0,
    rho: float = 1.5,
    global_form: str = "response",
    eps: float = 1e-6,
) -> Tensor:
    """COPO, Consistency-Aware Policy Optimization (arXiv 2508.04138) as one advantage.

        H_q      = -sum_tau p(tau) ln p(tau)   over the answer clusters tau of prompt q
        w_q      = sigmoid(gamma (H_q - rho))
        A_i      = w_q A_local_i + (1 - w_q) A_global_i
    A_local is GRPO's (group std, `eps`). `answers` [N] long are answer-cluster ids (rows
    of one prompt with the same final answer share one; an unparseable answer has its own),
    from rlkit.algorithms.answers.answer_ids. gamma = 20, rho = 1.5 are the reported values
    [SEC]; with G <= 4 responses H_q <= ln 4 < rho, so w_q <= 0.093 and the global term rules.

    The global term (rlkit's reading; the paper's prompt-level reward is not defined in the
    sources we could read), `global_form`:
    - "response" (default): each row's reward standardised over the whole batch,
      (r_i - mean_batch r) / (std_batch r + eps).
    - "prompt": the prompt's group accuracy R_q = mean_g r standardised over the batch's
      prompts, (R_q - mean_q R) / (std_q R + eps), the same for all rows of q.
    Both keep a signal in all-correct and all-wrong groups. The default is "response" because
    "prompt" punishes a correct answer for its prompt being hard: G = 4 with one correct
    answer out of four distinct ones, next to an easier prompt, gives it A < 0 (see the tests).
    Stds are unbiased; a constant batch gives an exactly-0 global term.

    Departure: the paper weights two loss terms, w L_local + (1 - w) L_global; rlkit blends
    the advantages and runs one loss. The two agree on-policy (ratio 1) and differ only in
    how the clip acts on the blended advantage.
    """
    if global_form not in COPO_GLOBAL_FORMS:
        raise ValueError(
            f"copo: global_form must be one of {', '.join(COPO_GLOBAL_FORMS)}; got {global_form!r}"
        )
    if not gamma >= 0:
        raise ValueError(f"copo: gamma (sharpness of the entropy gate) must be >= 0, got {gamma}")
    r = _float(rewards)  # [N]
    a = _need_answers(answers, "copo", r.shape[0])  # [N]
    inv, counts = _groups(group_ids)  # [N], [Q]
    Q = counts.shape[0]
    # Answer clusters are (prompt, answer id) pairs, so ids need only be unique per prompt.
    _, cinv, csize = torch.unique(torch.stack([inv, a]), dim=1, return_inverse=True, return_counts=True)
    cprompt = torch.zeros_like(csize).scatter_(0, cinv, inv)  # [C] prompt of each cluster
    p = csize.to(r.dtype) / counts[cprompt].to(r.dtype)  # [C] cluster share of its prompt
    entropy = _group_sum(-p * p.log(), cprompt, Q)  # [Q] H_q in nats
    w_local = torch.sigmoid(gamma * (entropy - rho))[inv]  # [N]
    local = grpo(r, group_ids, scale="group", eps=eps)  # [N]
    if global_form == "response":
        glob = _standardise(r, eps)  # [N]
    else:
        accuracy = _group_sum(r, inv, Q) / counts.to(r.dtype)  # [Q]
        glob = _standardise(accuracy, eps)[inv]  # [N]
    return w_local * local + (1 - w_local) * glob


def _standardise(x: Tensor, eps: float) -> Tensor:
    """(x - mean) / (std + eps) over all of x [M], std unbiased; exactly 0 when x is constant."""
    centered = x - x.mean()  # [M]
    var = centered.square().sum() / max(x.shape[0] - 1, 1)
    const = x.amax() == x.amin()
    return torch.where(const, torch.zeros_like(x), centered / (var.sqrt() + eps))


def _need_answers(answers: Tensor | None, name: str, n: int) -> Tensor:
    if answers is None:
        raise ValueError(
            f"advantage estimator {name!r} needs answers=[N] long answer-cluster ids "
            "(rlkit.algorithms.answers.answer_ids; set advantage.answer_extractor)"
        )
    if answers.shape != (n,) or answers.is_floating_point():
        raise ValueError(
            f"{name}: answers must be [N] integer ids with N={n}, "
            f"got {answers.dtype} {tuple(answers.shape)}"
        )
    return answers.long()
