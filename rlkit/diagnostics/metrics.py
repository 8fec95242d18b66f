"""Per-step diagnostics: pure functions over the tensors one training step already has.

`step_metrics(DiagInputs) -> dict[str, Tensor]` is the one entry point the training loop
calls. Every value is a detached 0-dim float tensor (no `.item()`, no host sync beyond what
boolean indexing needs), keys are namespaced `diag/...`. A statistic that is undefined on
this batch (e.g. no positive-advantage token, empty mask) is NaN, not 0: a 0 would read as
"likelihood did not move" to the alarms. The logger should drop non-finite values and the
alarms ignore NaN. Definitions, sources and thresholds: docs/diagnostics.md.

Quantities the trainer already logs are not repeated here (one key per quantity): the
token-mean entropy is `policy/entropy`, completion length and truncation are
`rollout/completion_len_mean` and `rollout/truncated_frac`.

Sources:
- Entropy percentiles and position profile: Cui et al., "The Entropy Mechanism of RL for
  Reasoning LMs", arXiv 2505.22617 (entropy is traded for reward, R ≈ -a·e^H + b, and
  collapses early).
- Zero-advantage groups: DAPO dynamic sampling, arXiv 2503.14476 (groups whose rewards are
  all equal give zero GRPO advantage, hence no gradient, and shrink the effective batch).
- Likelihood displacement of positive / negative responses: LLDS, arXiv 2512.04220;
  the abstract gives no formula for the metric. The official code logs the level
  `actor/pos_avg_old_log_prob` (GitHub repository
  vengdeng/LLDS-On-Group-Relative-Policy-Optimization-Collapse-in-Search-R1).
  `logp_delta_*` is rlkit's per-update difference on the same tokens: it isolates what one
  update did, whereas the level also moves with the prompts drawn at each step.
- Engine/trainer mismatch: the k3 estimator (Schulman 2020) as in verl / prime-rl
  `mismatch_kl`; it is the gap that truncated importance sampling corrects (Yao et al. 2025,
  "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"; verl PR #2953).

Not computed: the mean top-1 probability. It cannot be derived from the entropy alone (H only
bounds it: p_max >= e^{-H}), and the trainer forward does not return max logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlkit.algorithms.losses import kl_penalty

__all__ = [
    "ENTROPY_QUANTILES",
    "POSITION_BUCKETS",
    "DiagInputs",
    "entropy_metrics",
    "logp_delta_metrics",
    "masked_quantiles",
    "mismatch_metrics",
    "position_bucket_means",
    "step_metrics",
    "zero_adv_metrics",
]

Metrics = dict[str, Tensor]

ENTROPY_QUANTILES = (0.1, 0.5, 0.9)
# Relative-position buckets (fractions of each response's own length), see position_bucket_means.
POSITION_BUCKETS = 4
# Two rewards closer than this are "equal" when deciding that a group has zero variance.
_REWARD_EQ_TOL = 1e-6


@dataclass
class DiagInputs:
    """One training step's tensors, all detached. N rows, T completion positions."""

    rewards: Tensor  # [N]
    group_ids: Tensor  # [N] int, rows of one prompt share an id
    advantages: Tensor  # [N] or [N, T]
    mask: Tensor  # [N, T] bool, True = completion token that counts
    entropy: Tensor | None = None  # [N, T] token entropy under the old (generating) policy
    old_logprobs: Tensor | None = None  # [N, T] trainer logprobs before the update
    new_logprobs: Tensor | None = None  # [N, T] logprobs after this step's updates, same tokens
    engine_logprobs: Tensor | None = None  # [N, T] rollout engine's logprobs


def _nan(like: Tensor) -> Tensor:
    return torch.full((), float("nan"), dtype=torch.float32, device=like.device)


def _masked_mean_or_nan(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask=True (float32); NaN when the mask is empty."""
    total = torch.where(mask, x.float(), 0.0).sum()
    count = mask.sum()
    return torch.where(count > 0, total / count.clamp(min=1), float("nan"))


def masked_quantiles(x: Tensor, mask: Tensor, qs: tuple[float, ...]) -> Tensor:
    """Quantiles of x over mask=True entries, linear interpolation (torch.quantile's default).

    Sort-based because torch.quantile refuses inputs above 2^24 elements (N·T of a large
    batch). Returns [len(qs)] float32; all NaN when the mask is empty.
    """
    vals = torch.sort(x.float()[mask]).values  # [M]
    m = vals.numel()
    if m == 0:
        return torch.full((len(qs),), float("nan"), device=x.device)
    pos = torch.tensor(qs, dtype=torch.float32, device=x.device) * (m - 1)  # [Q]
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = pos - lo.float()
    return vals[lo] + (vals[hi] - vals[lo]) * frac


def position_bucket_means(x: Tensor, mask: Tensor, buckets: int = POSITION_BUCKETS) -> Tensor:
    """Mean of x per relative-position bucket: [buckets], NaN for an empty bucket.

    A token's position is its rank r among its row's counted tokens (so masked-out tool
    output in the middle does not shift it) over the row's count L; bucket = floor(b·r/L).
    With b = 4 the buckets are the first/second/third/fourth quarter of each response,
    whatever its length (absolute buckets would mix "end of a short answer" with
    "middle of a long one").
    """
    m = mask.bool()
    rank = torch.cumsum(m.long(), dim=1) - 1  # [N, T] 0-based rank among counted tokens
    length = m.sum(dim=1, keepdim=True).clamp(min=1)  # [N, 1]
    bucket = torch.div(rank * buckets, length, rounding_mode="floor").clamp(0, buckets - 1)
    idx = bucket[m]  # [M] bucket of each counted token
    sums = torch.zeros(buckets, device=x.device).scatter_add_(0, idx, x.float()[m])  # [b]
    counts = torch.bincount(idx, minlength=buckets)  # [b]
    return torch.where(counts > 0, sums / counts.clamp(min=1), float("nan"))


def entropy_metrics(entropy: Tensor, mask: Tensor) -> Metrics:
    """Token-entropy p10/p50/p90 and the per-quarter position profile (arXiv 2505.22617).

    The token mean is not here: the trainer logs it as `policy/entropy`.
    """
    ent = entropy.detach()
    out: Metrics = {}
    for q, v in zip(ENTROPY_QUANTILES, masked_quantiles(ent, mask, ENTROPY_QUANTILES), strict=True):
        out[f"diag/entropy_p{round(q * 100)}"] = v
    step = 100 // POSITION_BUCKETS
    for i, v in enumerate(position_bucket_means(ent, mask)):
        out[f"diag/entropy_pos_{i * step}_{(i + 1) * step}"] = v
    return out


def zero_adv_metrics(
    rewards: Tensor,
    group_ids: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    correct_reward: float = 1.0,
    wrong_reward: float = 0.0,
) -> Metrics:
    """Zero-variance groups (DAPO dynamic sampling, arXiv 2503.14476) and the effective batch.

    A group has zero variance when max - min of its rewards <= 1e-6. It is all-correct when
    that common reward >= correct_reward and all-wrong when <= wrong_reward (binary rewards:
    1 and 0). With shaped rewards (e.g. accuracy + format bonus) a zero-variance group may be
    neither, so the two fractions need not add up to `zero_adv_frac`.
    `effective_batch_frac` = rows with any non-zero advantage on a counted token / N.
    """
    r = rewards.detach().float()
    uniq, inv = torch.unique(group_ids, return_inverse=True)  # inv [N] in 0..G-1
    n_groups = uniq.numel()  # a shape, known on the host: no .item()
    if n_groups == 0:
        nan = _nan(r)
        keys = (
            "zero_adv_frac",
            "zero_adv_all_correct_frac",
            "zero_adv_all_wrong_frac",
            "effective_batch_frac",
        )
        return {f"diag/{k}": nan for k in keys}
    init = torch.zeros(n_groups, device=r.device)  # [G]; include_self=False ignores it
    lo = init.scatter_reduce(0, inv, r, "amin", include_self=False)  # [G]
    hi = init.scatter_reduce(0, inv, r, "amax", include_self=False)  # [G]
    zero_var = (hi - lo) <= _REWARD_EQ_TOL  # [G]
    all_correct = zero_var & (lo >= correct_reward - _REWARD_EQ_TOL)
    all_wrong = zero_var & (hi <= wrong_reward + _REWARD_EQ_TOL)

    adv = advantages.detach()
    if adv.dim() == 1:
        row_active = adv != 0  # [N]
    else:
        row_active = ((adv != 0) & mask).any(dim=1)  # [N]
    return {
        "diag/zero_adv_frac": zero_var.float().mean(),
        "diag/zero_adv_all_correct_frac": all_correct.float().mean(),
        "diag/zero_adv_all_wrong_frac": all_wrong.float().mean(),
        "diag/effective_batch_frac": row_active.float().mean(),
    }


def _token_sign_masks(advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) token masks [N, T]: counted tokens whose advantage is > 0 / < 0."""
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv[:, None]  # [N, 1] broadcasts over T
    return mask & (adv > 0), mask & (adv < 0)


def logp_delta_metrics(
    old_logprobs: Tensor, new_logprobs: Tensor, advantages: Tensor, mask: Tensor
) -> Metrics:
    """Per-update likelihood change of positive / negative responses (LLD, arXiv 2512.04220).

    logp_delta_pos = token-mean of (new - old) logprob over tokens with advantage > 0
    (for [N] advantages: all counted tokens of rows with A > 0); same for < 0. A healthy
    update raises the positive responses' likelihood (> 0). Lazy likelihood displacement is
    this staying <= 0 while reward rises; see alarms.py for the phase rules.
    """
    delta = new_logprobs.detach().float() - old_logprobs.detach().float()  # [N, T]
    pos, neg = _token_sign_masks(advantages, mask)
    return {
        "diag/logp_delta_pos": _masked_mean_or_nan(delta, pos),
        "diag/logp_delta_neg": _masked_mean_or_nan(delta, neg),
    }


def mismatch_metrics(old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor) -> Metrics:
    """Rollout-engine vs trainer logprob mismatch on the sampled tokens.

    mismatch_abs = token-mean |old - engine|; mismatch_kl = token-mean k3 estimate of
    KL(engine || trainer) (tokens were sampled by the engine): with log r = old - engine,
    k3 = r - 1 - log r >= 0 (clamped to 10 per token by `kl_penalty`).
    """
    old = old_logprobs.detach().float()
    eng = engine_logprobs.detach().float()
    return {
        "diag/mismatch_abs": _masked_mean_or_nan((old - eng).abs(), mask),
        "diag/mismatch_kl": _masked_mean_or_nan(kl_penalty(eng, old, "k3"), mask),
    }


def step_metrics(
    d: DiagInputs, *, correct_reward: float = 1.0, wrong_reward: float = 0.0
) -> Metrics:
    """All diagnostics of one step; keys whose inputs are None are absent. See module doc."""
    mask = d.mask.bool()
    out = zero_adv_metrics(
        d.rewards,
        d.group_ids,
        d.advantages,
        mask,
        correct_reward=correct_reward,
        wrong_reward=wrong_reward,
    )
    if d.entropy is not None:
        out.update(entropy_metrics(d.entropy, mask))
    if d.old_logprobs is not None and d.new_logprobs is not None:
        out.update(logp_delta_metrics(d.old_logprobs, d.new_logprobs, d.advantages, mask))
    if d.old_logprobs is not None and d.engine_logprobs is not None:
        out.update(mismatch_metrics(d.old_logprobs, d.engine_logprobs, mask))
    return out
