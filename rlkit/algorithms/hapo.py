"""HAPO, Heterogeneous Adaptive Policy Optimization (arXiv 2509.16591): its token objective and loss.

Kept beside `losses.py` (whose layering it follows: a pure per-token objective, then a
`PolicyLoss` subclass registered as `hapo`); imported by `rlkit.algorithms`, so the name is
registered whenever any loss is. The entropy score it reads is in `token_weights.py`, its
advantage (`hapo_tlga`) in `advantages.py`. Formulas and departures: docs/algorithms.md.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlkit.algorithms.losses import (
    LossInputs,
    Metrics,
    PolicyLoss,
    _log_ratio,
    _token_adv,
    masked_mean,
    ppo_clip,
    register_loss,
)

__all__ = ["HAPOLoss", "hapo"]


def hapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    h_hat: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    clip_alpha: float = 1.0,
    adv_beta: float = 1.0,
    dual_clip: float | None = 10.0,
) -> tuple[Tensor, Metrics]:
    """HAPO's token objective (arXiv 2509.16591; `ada_clip`, `ada_advantage` and
    `compute_policy_loss` in the authors' repository starriver030515/HAPO).

    h_hat [N, T] is the normalised entropy score in [-1, 1] (`entropy_score`), no gradient.
    - Asymmetric adaptive clipping: eps_l = clip_low (1 - clip_alpha ĥ) where ĥ <= 0 (low
      entropy: a wider lower bound), eps_h = clip_high (1 + clip_alpha ĥ) where ĥ > 0 (high
      entropy: a wider upper bound); the other side keeps its base value.
    - Advantage redistribution: A_ent = A (1 + adv_beta ĥ); the neutral zone is
      1 - eps_l/2 < ρ < 1 + eps_h/2. High-entropy tokens (ĥ > 0) keep A inside the zone and
      take A_ent outside it; low-entropy tokens take A_ent inside and keep A outside. On
      policy (ρ = 1) this scales low-entropy tokens' advantages down by (1 + adv_beta ĥ).
    - `ppo_clip` with the per-token ranges and the redistributed advantages, then dual clip
      c (> 1) on negative advantages; so clip_alpha = adv_beta = 0 is exactly `ppo_clip`
      (DAPO with the same clips).
    Metrics: hapo/clip_low_mean, hapo/clip_high_mean (token means of eps_l, eps_h),
    hapo/redistributed_frac (tokens whose advantage was rescaled), plus ppo_clip's.
    """
    adv = _token_adv(advantages, logprobs)  # [N, T]
    h = h_hat.detach().to(adv.dtype)  # [N, T]
    eps_l = torch.where(h <= 0, clip_low * (1.0 - clip_alpha * h), torch.full_like(h, clip_low))  # [N, T]
    eps_h = torch.where(h > 0, clip_high * (1.0 + clip_alpha * h), torch.full_like(h, clip_high))  # [N, T]
    r = _log_ratio(logprobs, old_logprobs, mask).detach().exp()  # [N, T]
    neutral = (r > 1.0 - eps_l / 2) & (r < 1.0 + eps_h / 2)  # [N, T]
    use_ent = torch.where(h > 0, ~neutral, neutral)  # [N, T]
    adv = torch.where(use_ent, adv * (1.0 + adv_beta * h), adv)
    loss, metrics = ppo_clip(logprobs, old_logprobs, adv, mask, clip_low=eps_l, clip_high=eps_h, dual_clip=dual_clip)
    metrics["hapo/clip_low_mean"] = masked_mean(eps_l, mask)
    metrics["hapo/clip_high_mean"] = masked_mean(eps_h, mask)
    metrics["hapo/redistributed_frac"] = masked_mean((use_ent & (h != 0) & (adv_beta != 0)).float(), mask)
    return loss, metrics


@register_loss("hapo")
class HAPOLoss(PolicyLoss):
    """HAPO (arXiv 2509.16591): entropy-adaptive clip ranges and advantage redistribution on
    a DAPO-style loss (token_mean, clip 0.2/0.28, dual clip 10). Pair with the `hapo_tlga`
    advantage. See `hapo` and `rlkit.algorithms.token_weights.entropy_score`.

    entropy_stats: "batch" (default): ĥ from the old policy's entropies over the whole
      rollout batch (the trainer's token pass), so a token's score does not depend on which
      micro-batch it lands in; "micro_batch": ĥ from the current micro-batch's entropies, as
      the released code does inside its loss.
    entropy_pivot: the quantile of log-entropy that maps to ĥ = 0 (paper: 0.8), in (0, 1).
    released_sign: reproduce the released sign bug (see `entropy_score`).
    clip_alpha = adv_beta = 0 reduces to DAPO exactly (`dapo` with the same dual_clip).
    """

    def __init__(
        self,
        *,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        clip_alpha: float = 1.0,
        adv_beta: float = 1.0,
        dual_clip: float | None = 10.0,
        entropy_pivot: float = 0.8,
        entropy_stats: str = "batch",
        released_sign: bool = False,
        agg_mode: str = "token_mean",
        **kwargs,
    ) -> None:
        super().__init__(agg_mode=agg_mode, **kwargs)
        if not 0.0 < entropy_pivot < 1.0:
            raise ValueError(f"entropy_pivot must be in (0, 1) (a quantile; paper: 0.8), got {entropy_pivot}")
        if entropy_stats not in ("batch", "micro_batch"):
            raise ValueError(f"entropy_stats must be 'batch' or 'micro_batch', got {entropy_stats!r}")
        if dual_clip is not None and dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (HAPO: 10) or None, got {dual_clip}")
        if clip_alpha < 0 or adv_beta < 0:
            raise ValueError(f"clip_alpha and adv_beta must be >= 0, got {clip_alpha}, {adv_beta}")
        self.clip_low, self.clip_high, self.dual_clip = clip_low, clip_high, dual_clip
        self.clip_alpha, self.adv_beta = clip_alpha, adv_beta
        self.entropy_pivot, self.entropy_stats, self.released_sign = entropy_pivot, entropy_stats, released_sign

    @property
    def needs_entropy_score(self) -> bool:  # type: ignore[override]
        return self.entropy_stats == "batch"

    def batch_entropy_score(self, entropy: Tensor, mask: Tensor) -> Tensor:
        """ĥ [N, T] of a whole batch from its old-policy entropies (run once per batch)."""
        from rlkit.algorithms.token_weights import entropy_score

        return entropy_score(entropy, mask, pivot=self.entropy_pivot, released_sign=self.released_sign)

    def per_token(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        if self.entropy_stats == "batch":
            if inputs.entropy_score is None:
                raise ValueError("HAPOLoss(entropy_stats='batch') needs LossInputs.entropy_score "
                                 "(the trainer fills it from the token pass)")
            h_hat = inputs.entropy_score
        else:
            if inputs.entropy is None:
                raise ValueError("HAPOLoss(entropy_stats='micro_batch') needs LossInputs.entropy")
            h_hat = self.batch_entropy_score(inputs.entropy.detach(), inputs.mask)
        return hapo(inputs.logprobs, inputs.old(), inputs.advantages, inputs.mask, h_hat,
                    clip_low=self.clip_low, clip_high=self.clip_high, clip_alpha=self.clip_alpha,
                    adv_beta=self.adv_beta, dual_clip=self.dual_clip)
