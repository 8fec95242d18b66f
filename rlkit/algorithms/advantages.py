"""Advantage estimators: pure functions from rewards to advantages.

Every estimator has one calling convention, and this module's registry is the only
dispatcher (see docs/algorithms.md for formulas, references and departures):

    fn(rewards [N] float, group_ids [N] long, *, mask=None, **params) -> Tensor [N] or [N, T]

- `group_ids` marks the rows that answer the same prompt. Ids may be arbitrary integers
  (not necessarily 0..B-1, not necessarily contiguous); they are mapped to dense indices with
  `torch.unique(return_inverse=True)` and all group statistics are computed with `index_add_`.
- `mask` is the completion mask [N, T] bool (True = token counts). Token-level estimators
  (REINFORCE++) and length-aware ones (OPO) need it; the others ignore it.
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
    "UnknownNameError",
    "available_advantages",
    "dr_grpo",
    "get_advantage",
    "grpo",
    "masked_whiten",
    "opo",
    "pass_at_k",
    "register_advantage",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "rloo",
]


# The one dispatcher of estimators. Params are the keywords after the calling convention
# (`rewards, group_ids, *, mask`); `needs_group` declares whether rows are compared within
# their group (the config then requires rollout.group_size >= 2).
ADVANTAGES: Registry[Callable[..., Tensor]] = Registry(
    "advantage estimator",
    name_attr="estimator_name",
    fixed=("rewards", "group_ids", "mask"),
    declared={"needs_group": True},
)


def register_advantage(name: str, *, needs_group: bool = True):
    """Register an estimator under `name`; sets `fn.needs_group` (False: groups unused)."""
    return ADVANTAGES.register(name, needs_group=needs_group)


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
