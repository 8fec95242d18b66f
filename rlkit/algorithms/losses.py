"""Policy losses: per-token objectives, one aggregation function, KL estimators, TIS, PolicyLoss.

Layering (each layer is usable on its own):
1. Pure per-token objectives `ppo_clip`, `gspo`, `cispo`, `reinforce` ->
   `(per_token_loss [N, T], metrics)`. Loss = negative objective (to be minimised).
2. `aggregate(per_token, mask, mode)`: the single place where aggregation modes live.
3. `kl_penalty` (k1/k2/k3/abs) and `tis_weights` (engine/trainer mismatch correction).
4. `PolicyLoss`: composes 1-3 from a typed `LossInputs`; subclasses override `per_token`.
   Registered by name (`@register_loss`), or named by import path `pkg.mod:Class` in YAML.

Conventions: mask is bool [N, T], True = token counts. Per-token outputs are 0 on padding,
and values under mask=False never reach the result or the gradient (they are replaced with
`torch.where`, not multiplied, so even inf/NaN padding is harmless). Metrics are detached
0-dim tensors, masked means, keys namespaced `policy/...`. No `.item()`.
Formulas, references and defaults: docs/algorithms.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor

from rlkit.registry import Registry

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "LOSSES",
    "CISPOLoss",
    "DAPOLoss",
    "DrGRPOLoss",
    "GRPOLoss",
    "GSPOLoss",
    "LossInputs",
    "LossOutput",
    "PolicyLoss",
    "ReinforceLoss",
    "aggregate",
    "available_losses",
    "build_loss",
    "cispo",
    "get_loss_class",
    "gspo",
    "kl_penalty",
    "masked_mean",
    "ppo_clip",
    "register_loss",
    "reinforce",
    "tis_weights",
]

Metrics = dict[str, Tensor]

# Δ = log π_new − log π_old is clamped to ±20 before exp (as verl), so a wild ratio cannot
# overflow; beyond the clamp the gradient is zero.
_LOG_RATIO_CLAMP = 20.0

# ---------------------------------------------------------------------------------------
# masked helpers


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over mask=True entries; 0 (with grad) when the mask is empty."""
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def _masked_min_max(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) of x over mask; (0, 0) when the mask is empty. Detached."""
    x = x.detach()
    any_ = mask.any()
    lo = torch.where(mask, x, torch.inf).amin()
    hi = torch.where(mask, x, -torch.inf).amax()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(any_, lo, zero), torch.where(any_, hi, zero)


def _token_adv(advantages: Tensor, like: Tensor) -> Tensor:
    """Advantages [N] or [N, T] -> detached [N, T] in like's dtype."""
    adv = advantages.detach().to(like.dtype)
    if adv.dim() == 1:
        adv = adv[:, None]  # [N, 1] broadcasts over T
    if adv.dim() != 2 or adv.shape[0] != like.shape[0]:
        raise ValueError(
            f"advantages must be [N] or [N, T] with N={like.shape[0]}, "
            f"got {tuple(advantages.shape)}"
        )
    return adv.expand_as(like)


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """log(π/π_old) [N, T], 0 on padding, clamped to ±20."""
    lr = torch.where(mask, logprobs - old_logprobs, 0.0)
    return lr.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)


def _ratio_metrics(ratio: Tensor, log_ratio: Tensor, mask: Tensor) -> Metrics:
    ratio, log_ratio = ratio.detach(), log_ratio.detach()
    rmin, rmax = _masked_min_max(ratio, mask)
    # k3 estimate of KL(π_old || π) from samples of π_old: (ρ - 1) - log ρ  (Schulman 2020)
    approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return {
        "policy/ratio_mean": masked_mean(ratio, mask),
        "policy/ratio_min": rmin,
        "policy/ratio_max": rmax,
        "policy/approx_kl": approx_kl,
    }


# ---------------------------------------------------------------------------------------
# aggregation: the one place where loss aggregation modes live

AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def aggregate(
    per_token: Tensor, mask: Tensor, mode: str, *, norm_len: float | None = None
) -> Tensor:
    """Reduce a per-token loss [N, T] to a scalar over mask=True tokens.

    - token_mean: sum_it l / sum_it m. DAPO (arXiv 2503.14476): every token weighs the same,
      so long responses are not under-weighted (the fix for GRPO's length bias).
    - seq_mean_token_mean: (1/N) sum_i (sum_t l_it / |o_i|). Original GRPO (arXiv 2402.03300):
      each response weighs the same; its tokens share 1/|o_i| (long wrong answers get a
      smaller per-token push, the length bias Dr. GRPO points out).
    - seq_mean_token_sum: (1/N) sum_i sum_t l_it. Per-sequence sum, no length normalisation.
    - seq_mean_token_sum_norm: (1/N) sum_i sum_t l_it / norm_len. Dr. GRPO (arXiv 2503.20783):
      a constant normaliser (the generation budget) instead of |o_i|, so a row's weight does
      not depend on any length. norm_len defaults to T = mask.shape[-1], which is only right
      when T is the generation budget: `PolicyLoss` passes the budget, since a batch trimmed to
      its longest row (each micro-batch is) would otherwise be scaled by its own length.
      verl's `seq-mean-token-sum-norm` omits the 1/N (ours = verl / N, a constant rescale).

    Seq-mean modes divide by N = all rows (a fully masked row contributes 0 but still counts),
    so row i's contribution never depends on other rows' masks. An empty mask gives 0 with grad.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"aggregate: mask must be bool (True = token counts), got {mask.dtype}")
    x = torch.where(mask, per_token, 0.0)  # [N, T]
    if mode == "token_mean":
        return x.sum() / mask.sum().clamp(min=1)
    row = x.sum(-1)  # [N]
    if mode == "seq_mean_token_mean":
        row = row / mask.sum(-1).clamp(min=1)
    elif mode == "seq_mean_token_sum":
        pass
    elif mode == "seq_mean_token_sum_norm":
        row = row / (float(norm_len) if norm_len is not None else float(mask.shape[-1]))
    else:
        raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {', '.join(AGG_MODES)}")
    return row.sum() / max(row.shape[0], 1)


# ---------------------------------------------------------------------------------------
# per-token objectives


def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float | Tensor = 0.2,
    clip_high: float | Tensor = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Metrics]:
    """PPO clipped surrogate (arXiv 1707.06347) per token; GRPO and DAPO clip-higher.

    The clip ranges are floats or per-token [N, T] tensors (HAPO's adaptive ranges).

    l = max(-A ρ, -A clip(ρ, 1 - clip_low, 1 + clip_high)),  ρ = exp(logp - old_logp).
    clip_high > clip_low is DAPO's clip-higher (arXiv 2503.14476). dual_clip=c (> 1; Ye et al.
    arXiv 1912.09729, c=3) caps the loss of negative-advantage tokens at -c A: for A < 0,
    l = min(l, -c A). Metrics: clip_frac_high = A > 0 and ρ > 1 + clip_high (gradient cut),
    clip_frac_low = A < 0 and ρ < 1 - clip_low, dual_clip_frac = A < 0 and ρ > c.
    """
    adv = _token_adv(advantages, logprobs)  # [N, T]
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # [N, T]
    ratio = log_ratio.exp()
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(pg1, pg2)  # [N, T]
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    r = ratio.detach()
    metrics["policy/clip_frac_high"] = masked_mean(((adv > 0) & (r > 1 + clip_high)).float(), mask)
    metrics["policy/clip_frac_low"] = masked_mean(((adv < 0) & (r < 1 - clip_low)).float(), mask)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (paper uses 3), got {dual_clip}")
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
        metrics["policy/dual_clip_frac"] = masked_mean(((adv < 0) & (r > dual_clip)).float(), mask)
    return torch.where(mask, loss, 0.0), metrics


def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, Metrics]:
    """GSPO (Zheng et al., arXiv 2507.18071), "GSPO-token" form as in verl.

    Sequence ratio s_i = exp(mean_t log(π/π_old)) over the valid tokens of row i. Per token
    s_it = sg[s_i] * π_t / sg[π_t]: its value is s_i, its gradient s_i * ∇log π_t, so with
    seq_mean_token_mean aggregation the gradient equals GSPO's sequence-level one while still
    allowing per-token advantages. log s_it is clamped at 10 (verl). Clipping acts on s_i, so a
    whole sequence is clipped together. Ratio metrics are token-weighted over s_i.
    """
    adv = _token_adv(advantages, logprobs)  # [N, T]
    lp = torch.where(mask, logprobs, 0.0)  # [N, T]; padding can't reach the graph
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # [N, T]
    seq_log_ratio = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)  # [N]
    log_s = (lp - lp.detach() + seq_log_ratio.detach()[:, None]).clamp(max=10.0)  # [N, T]
    s = log_s.exp()
    pg1 = -adv * s
    pg2 = -adv * s.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(pg1, pg2)  # [N, T]
    s_val = seq_log_ratio.detach().exp()[:, None].expand_as(lp)  # [N, T]
    metrics = _ratio_metrics(s_val, seq_log_ratio.detach()[:, None].expand_as(lp), mask)
    # approx_kl stays token-level (comparable across losses)
    lr = log_ratio.detach()
    metrics["policy/approx_kl"] = masked_mean(lr.exp() - 1 - lr, mask)
    high = (adv > 0) & (s_val > 1 + clip_high)  # [N, T], whole sequences
    low = (adv < 0) & (s_val < 1 - clip_low)
    metrics["policy/clip_frac_high"] = masked_mean(high.float(), mask)
    metrics["policy/clip_frac_low"] = masked_mean(low.float(), mask)
    return torch.where(mask, loss, 0.0), metrics


def cispo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 1.0,
    clip_high: float = 0.28,
) -> tuple[Tensor, Metrics]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): clipped, detached IS weight times A log π.

    l = -sg(clip(ρ, 1 - clip_low, 1 + clip_high)) * A * log π. No min(): every token keeps a
    gradient (PPO would zero it outside the trust region), only its weight is bounded. The
    paper sets ε_low large (no lower bound) and tunes ε_high only; defaults 1.0 / 0.28 follow
    Trinity-RFT's CISPO [SEC]. The loss *value* is a surrogate (its gradient is the point).
    clip_frac_* = fraction of tokens whose weight was clipped at that side (any sign of A).
    """
    adv = _token_adv(advantages, logprobs)  # [N, T]
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # [N, T]
    ratio = log_ratio.exp()
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()  # [N, T]
    loss = -adv * weight * torch.where(mask, logprobs, 0.0)  # 0 on padding
    metrics = _ratio_metrics(ratio, log_ratio, mask)
    r = ratio.detach()
    metrics["policy/clip_frac_high"] = masked_mean((r > 1 + clip_high).float(), mask)
    metrics["policy/clip_frac_low"] = masked_mean((r < 1 - clip_low).float(), mask)
    return loss, metrics


def reinforce(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Metrics]:
    """On-policy REINFORCE (Williams 1992): l = -A * log π. No ratio, no clipping."""
    adv = _token_adv(advantages, logprobs)  # [N, T]
    return -adv * torch.where(mask, logprobs, 0.0), {}  # 0 on padding


# ---------------------------------------------------------------------------------------
# KL estimators and truncated importance sampling

KL_KINDS = ("k1", "k2", "k3", "abs")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token KL(π || π_ref) estimate on sampled tokens [N, T] (Schulman 2020 estimators).

    Δ = log π - log π_ref, clamped to ±20. k1 = Δ; k2 = Δ²/2; k3 = e^{-Δ} + Δ - 1 clamped to
    [-10, 10] (verl "low_var_kl"); abs = |Δ|. As losses their gradients are not the true KL
    gradient in general (Tang & Munos, arXiv 2506.09477): ∇k2 = Δ ∇log π is the reverse-KL
    policy gradient, ∇k1 = ∇log π is zero in expectation. Not masked: `aggregate` masks.
    """
    delta = (logprobs - ref_logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta.square()
    if kind == "k3":
        return (torch.exp(-delta) + delta - 1.0).clamp(-10.0, 10.0)
    if kind == "abs":
        return delta.abs()
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_KINDS)}")


TIS_MODES = ("truncate", "mask")


def tis_weights(
    old_logprobs: Tensor,
    engine_logprobs: Tensor,
    mask: Tensor,
    *,
    cap: float = 2.0,
    mode: str = "truncate",
) -> tuple[Tensor, Metrics]:
    """Token-level importance weights for rollout-engine / trainer mismatch. Detached [N, T].

    w = π_train_old / π_engine (Yao et al., "Your efficient RL framework secretly brings you
    off-policy RL training"; verl rollout IS, threshold 2.0). truncate (TIS): min(w, cap);
    mask (MIS): 1 if 1/cap <= w <= cap else 0. 0 on padding. tis_clip_frac = fraction of
    valid tokens truncated (w > cap) or rejected (outside the band).
    """
    if cap <= 1.0:
        raise ValueError(f"tis cap must be > 1, got {cap}")
    log_w = _log_ratio(old_logprobs.detach(), engine_logprobs.detach(), mask)  # [N, T]
    w = log_w.exp()
    if mode == "truncate":
        clipped = w > cap
        out = w.clamp(max=cap)
    elif mode == "mask":
        clipped = (w < 1.0 / cap) | (w > cap)
        out = (~clipped).to(w.dtype)
    else:
        raise ValueError(f"unknown TIS mode {mode!r}; choose one of {', '.join(TIS_MODES)}")
    out = torch.where(mask, out, 0.0)
    metrics = {
        "policy/tis_weight_mean": masked_mean(out, mask),
        "policy/tis_clip_frac": masked_mean(clipped.to(w.dtype), mask),
    }
    return out, metrics


# ---------------------------------------------------------------------------------------
# typed inputs / outputs


@dataclass
class LossInputs:
    """Everything a policy loss may read. Shapes: N rows, T completion tokens.

    logprobs [N, T] (with grad), mask [N, T] bool, advantages [N] or [N, T]. Optional:
    old_logprobs [N, T] (None = on-policy single iteration: logprobs.detach() is used),
    engine_logprobs [N, T] (rollout engine's logprobs, for TIS), ref_logprobs [N, T]
    (reference model, for kl_coef > 0), teacher_logprobs [N, T] (distillation terms),
    entropy [N, T], rewards [N], group_ids [N], token_weights [N, T] (multiplies the
    per-token policy loss; token-reweighting methods such as THR, rlkit/algorithms/token_weights.py),
    entropy_score [N, T] (HAPO's normalised old-policy entropy in [-1, 1], computed over the
    whole batch by the token pass), kd_weights [N] (per-row weights of a distillation term,
    e.g. KDRL's reward-guided mask times PACED's w), hidden [N, T, D] (last hidden states),
    gen_budget (the rollout's max new tokens: the constant normaliser of
    seq_mean_token_sum_norm when the loss sets no norm_len; the trainer always fills it).
    """

    logprobs: Tensor
    mask: Tensor
    advantages: Tensor
    old_logprobs: Tensor | None = None
    engine_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    teacher_logprobs: Tensor | None = None
    entropy: Tensor | None = None
    rewards: Tensor | None = None
    group_ids: Tensor | None = None
    token_weights: Tensor | None = None
    entropy_score: Tensor | None = None
    kd_weights: Tensor | None = None
    hidden: Tensor | None = None
    gen_budget: int | None = None

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool:
            raise TypeError(
                f"LossInputs.mask must be bool (True = token counts), got {self.mask.dtype}"
            )
        if self.logprobs.shape != self.mask.shape or self.logprobs.dim() != 2:
            raise ValueError(
                f"logprobs {tuple(self.logprobs.shape)} and mask {tuple(self.mask.shape)} "
                "must both be [N, T]"
            )
        for name in (
            "old_logprobs",
            "engine_logprobs",
            "ref_logprobs",
            "teacher_logprobs",
            "entropy",
            "token_weights",
            "entropy_score",
        ):
            t = getattr(self, name)
            if t is not None and t.shape != self.mask.shape:
                raise ValueError(
                    f"LossInputs.{name} must be [N, T]={tuple(self.mask.shape)}, "
                    f"got {tuple(t.shape)}"
                )

    def old(self) -> Tensor:
        """old_logprobs, or logprobs.detach() when absent (on-policy: ratio 1, REINFORCE grad)."""
        return self.old_logprobs if self.old_logprobs is not None else self.logprobs.detach()


@dataclass
class LossOutput:
    loss: Tensor  # scalar, to be minimised
    metrics: Metrics = field(default_factory=dict)  # detached 0-dim tensors


# ---------------------------------------------------------------------------------------
# PolicyLoss and its registry

# Params of a loss are the keyword parameters of its __init__ (following **kwargs to the base
# class). The base is named by path: the registry is made before PolicyLoss is defined.
LOSSES: Registry[type[PolicyLoss]] = Registry(
    "loss", base="rlkit.algorithms.losses:PolicyLoss", name_attr="loss_name"
)


def register_loss(name: str):
    """Class decorator: make a PolicyLoss subclass selectable by `name` in YAML."""
    return LOSSES.register(name)


def available_losses() -> list[str]:
    return LOSSES.names()


def get_loss_class(name_or_path: str) -> type[PolicyLoss]:
    """A registered name ("grpo") or an import path "pkg.module:ClassName" -> the class."""
    return LOSSES.get(name_or_path)


def build_loss(name_or_path: str, **params) -> PolicyLoss:
    """Instantiate a loss from a registered name or import path; unknown params -> ParamError."""
    return LOSSES.bind(name_or_path, params)()


class PolicyLoss:
    """Base class: per-token objective -> TIS / token weights -> aggregate -> + KL - entropy.

    Subclasses implement `per_token(inputs) -> (loss [N, T], metrics)`; override `__call__`
    only for whole-batch objectives. Constructor params (keyword-only, shared by all):
      agg_mode: one of AGG_MODES (see `aggregate`); the KL and entropy terms use it too.
      norm_len: constant normaliser for seq_mean_token_sum_norm (None = the rollout's
        generation budget, `LossInputs.gen_budget`, which the trainer supplies).
      kl_coef: weight (>= 0) of the KL-to-reference term (needs inputs.ref_logprobs when != 0).
        Default 0: DeepSeekMath used 0.04 with k3; DAPO, Dr. GRPO, verl's GRPO examples and
        TRL (beta) default to no KL.
      kl_kind: "k1" | "k2" | "k3" | "abs" (see `kl_penalty`); k3 as DeepSeekMath / verl.
      entropy_coef: weight of an entropy bonus (loss -= coef * entropy); needs inputs.entropy.
      tis_cap: truncated importance sampling cap C (None = off; verl's threshold is 2.0).
        Applied only when inputs.engine_logprobs is given.
      tis_mode: "truncate" (TIS) | "mask" (MIS), see `tis_weights`.
      pg_coef: weight (>= 0) of the policy-gradient term; 0 trains only the other terms
        (a distillation- or SFT-only run). `policy/pg_loss` is logged unweighted.

    What the trainer must provide is declared here and read by the trainer, never probed:
      needs_ref_model: a frozen reference model's logprobs (LossInputs.ref_logprobs); True
        when kl_coef != 0. The reference model is loaded only when this is True.
      needs_entropy_grad: the entropy in LossInputs carries a gradient (entropy_coef != 0).
      accumulate: "tokens" or "rows", how the loss averages over the batch, so the trainer
        weights each micro-batch by its share of the mini-batch's tokens or rows (across all
        ranks) and the update does not depend on the micro-batch split. A subclass that
        overrides `__call__` with its own reduction sets it as a class attribute.
      needs_teacher, needs_hidden: teacher logprobs / last hidden states (class attributes,
        False here; for distillation and token-reweighting losses).
      needs_entropy_score: LossInputs.entropy_score, computed once per batch from the
        old-policy token pass by the loss's own `batch_entropy_score(entropy, mask)` (HAPO).
    """

    loss_name: str = ""
    needs_teacher: ClassVar[bool] = False
    needs_hidden: ClassVar[bool] = False
    needs_entropy_score: ClassVar[bool] = False

    def __init__(
        self,
        *,
        agg_mode: str = "token_mean",
        norm_len: float | None = None,
        kl_coef: float = 0.0,
        kl_kind: str = "k3",
        entropy_coef: float = 0.0,
        tis_cap: float | None = None,
        tis_mode: str = "truncate",
        pg_coef: float = 1.0,
    ) -> None:
        if pg_coef < 0:
            raise ValueError(f"pg_coef must be >= 0 (0 = no policy-gradient term), got {pg_coef}")
        if agg_mode not in AGG_MODES:
            raise ValueError(f"unknown agg_mode {agg_mode!r}; choose one of {', '.join(AGG_MODES)}")
        if kl_kind not in KL_KINDS:
            raise ValueError(f"unknown kl_kind {kl_kind!r}; choose one of {', '.join(KL_KINDS)}")
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        if tis_mode not in TIS_MODES:
            raise ValueError(f"unknown tis_mode {tis_mode!r}; choose one of {', '.join(TIS_MODES)}")
        if tis_cap is not None and tis_cap <= 1.0:
            raise ValueError(f"tis_cap must be > 1 or None (off), got {tis_cap}")
        if norm_len is not None and norm_len <= 0:
            raise ValueError(f"norm_len must be > 0 or None (= the generation budget), got {norm_len}")
        self.agg_mode = agg_mode
        self.norm_len = norm_len
        self.kl_coef = kl_coef
        self.kl_kind = kl_kind
        self.entropy_coef = entropy_coef
        self.tis_cap = tis_cap
        self.tis_mode = tis_mode
        self.pg_coef = pg_coef

    @property
    def needs_ref_model(self) -> bool:
        return self.kl_coef != 0

    @property
    def needs_entropy_grad(self) -> bool:
        return self.entropy_coef != 0

    @property
    def accumulate(self) -> Literal["tokens", "rows"]:
        return "tokens" if self.agg_mode == "token_mean" else "rows"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def per_token(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        raise NotImplementedError(f"{type(self).__name__} must implement per_token(inputs)")

    def aggregate(self, per_token: Tensor, mask: Tensor, *, gen_budget: int | None = None) -> Tensor:
        """`aggregate` in this loss's mode; seq_mean_token_sum_norm divides by norm_len, else
        by `gen_budget` (a constant: never the micro-batch's own padded length, which would
        make the update depend on how the batch was split)."""
        norm = self.norm_len if self.norm_len is not None else gen_budget
        return aggregate(per_token, mask, self.agg_mode, norm_len=norm)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        mask, budget = inputs.mask, inputs.gen_budget
        per_tok, metrics = self.per_token(inputs)  # [N, T]
        metrics = dict(metrics)
        if self.tis_cap is not None and inputs.engine_logprobs is not None:
            w, m = tis_weights(
                inputs.old(), inputs.engine_logprobs, mask, cap=self.tis_cap, mode=self.tis_mode
            )
            per_tok = per_tok * w
            metrics.update(m)
        if inputs.token_weights is not None:
            per_tok = per_tok * inputs.token_weights.detach()
        pg_loss = self.aggregate(per_tok, mask, gen_budget=budget)
        loss = pg_loss if self.pg_coef == 1.0 else self.pg_coef * pg_loss
        metrics["policy/pg_loss"] = pg_loss
        if self.kl_coef != 0 and inputs.ref_logprobs is None:
            raise ValueError(
                f"{type(self).__name__}: kl_coef={self.kl_coef} needs LossInputs.ref_logprobs "
                "(a reference-model forward); enable the reference model or set kl_coef=0"
            )
        if inputs.ref_logprobs is not None:
            kl = kl_penalty(inputs.logprobs, inputs.ref_logprobs, self.kl_kind)  # [N, T]
            metrics["policy/kl_ref"] = masked_mean(kl, mask)
            if self.kl_coef != 0:
                loss = loss + self.kl_coef * self.aggregate(kl, mask, gen_budget=budget)
        if self.entropy_coef != 0:
            if inputs.entropy is None:
                raise ValueError(
                    f"{type(self).__name__}: entropy_coef={self.entropy_coef} needs LossInputs.entropy"
                )
            # The entropy itself is logged once per batch by the trainer (`policy/entropy`).
            loss = loss - self.entropy_coef * self.aggregate(inputs.entropy, mask, gen_budget=budget)
        return LossOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


@register_loss("grpo")
class GRPOLoss(PolicyLoss):
    """GRPO (DeepSeekMath, arXiv 2402.03300): PPO clip 0.2/0.2, seq_mean_token_mean.

    kl_coef defaults to 0 (the paper used 0.04 with k3: pass kl_coef=0.04 to reproduce).
    dual_clip (None = off) enables dual-clip PPO (c = 3 in arXiv 1912.09729).
    """

    def __init__(
        self,
        *,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        dual_clip: float | None = None,
        agg_mode: str = "seq_mean_token_mean",
        **kwargs,
    ) -> None:
        super().__init__(agg_mode=agg_mode, **kwargs)
        if dual_clip is not None and dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (paper: 3) or None, got {dual_clip}")
        self.clip_low, self.clip_high, self.dual_clip = clip_low, clip_high, dual_clip

    def per_token(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return ppo_clip(
            inputs.logprobs,
            inputs.old(),
            inputs.advantages,
            inputs.mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            dual_clip=self.dual_clip,
        )


@register_loss("dapo")
class DAPOLoss(GRPOLoss):
    """DAPO (arXiv 2503.14476): clip-higher 0.2/0.28 and token_mean aggregation, no KL.

    Dynamic sampling and overlong shaping are sampler / reward features, not part of the loss.
    """

    def __init__(
        self,
        *,
        clip_low: float = 0.2,
        clip_high: float = 0.28,
        agg_mode: str = "token_mean",
        **kwargs,
    ) -> None:
        super().__init__(clip_low=clip_low, clip_high=clip_high, agg_mode=agg_mode, **kwargs)


@register_loss("dr_grpo")
class DrGRPOLoss(GRPOLoss):
    """Dr. GRPO (arXiv 2503.20783): PPO clip 0.2, seq_mean_token_sum_norm, no KL.

    Pair with the `dr_grpo` advantage (no std division). The normaliser is a constant:
    norm_len, or by default the rollout's generation budget (max new tokens).
    """

    def __init__(self, *, agg_mode: str = "seq_mean_token_sum_norm", **kwargs) -> None:
        super().__init__(agg_mode=agg_mode, **kwargs)


@register_loss("gspo")
class GSPOLoss(PolicyLoss):
    """GSPO (arXiv 2507.18071): sequence-ratio clip 3e-4/4e-4, seq_mean_token_mean, no KL."""

    def __init__(
        self,
        *,
        clip_low: float = 3e-4,
        clip_high: float = 4e-4,
        agg_mode: str = "seq_mean_token_mean",
        **kwargs,
    ) -> None:
        super().__init__(agg_mode=agg_mode, **kwargs)
        self.clip_low, self.clip_high = clip_low, clip_high

    def per_token(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return gspo(
            inputs.logprobs,
            inputs.old(),
            inputs.advantages,
            inputs.mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
        )


@register_loss("cispo")
class CISPOLoss(PolicyLoss):
    """CISPO (MiniMax-M1, arXiv 2506.13585): IS-weight clip 1.0 (no lower bound) / 0.28,
    token_mean (the paper's 1/sum|o_i| normalisation)."""

    def __init__(
        self,
        *,
        clip_low: float = 1.0,
        clip_high: float = 0.28,
        agg_mode: str = "token_mean",
        **kwargs,
    ) -> None:
        super().__init__(agg_mode=agg_mode, **kwargs)
        self.clip_low, self.clip_high = clip_low, clip_high

    def per_token(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return cispo(
            inputs.logprobs,
            inputs.old(),
            inputs.advantages,
            inputs.mask,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
        )


@register_loss("reinforce")
class ReinforceLoss(PolicyLoss):
    """On-policy REINFORCE: -A log π, token_mean (pair with rloo / reinforce_pp advantages)."""

    def per_token(self, inputs: LossInputs) -> tuple[Tensor, Metrics]:
        return reinforce(inputs.logprobs, inputs.advantages, inputs.mask)
