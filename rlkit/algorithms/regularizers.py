"""Regularizers: extra terms added to the policy loss, each with its coefficient.

A regularizer reads the same `LossInputs` as a `PolicyLoss` and returns a `LossOutput`
(scalar + metrics); the trainer adds `coef * output.loss` to the policy loss of every
micro-batch. In YAML:

    regularizers:
      - {name: llds, coef: 0.2, params: {gate: action}}

Math is in pure functions (`llds_penalty`); the classes only hold settings.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from rlkit.algorithms.distill import KD_MASKS, kdrl_row_mask
from rlkit.algorithms.losses import (
    KL_KINDS,
    LossInputs,
    LossOutput,
    Metrics,
    aggregate,
    kl_penalty,
    masked_mean,
)
from rlkit.registry import Registry

__all__ = ["KDRL", "LLDS", "REGULARIZERS", "Regularizer", "available_regularizers", "build_regularizer", "get_regularizer_class",
           "llds_penalty", "register_regularizer"]

LLDS_GATES = ("action", "response")


def _check_gate(gate: str) -> None:
    if gate not in LLDS_GATES:
        raise ValueError(f"unknown LLDS gate {gate!r}; choose one of {', '.join(LLDS_GATES)}")


def _chunk_ids(mask: Tensor) -> Tensor:
    """[N, T] long: 1, 2, ... numbering each maximal run of True in a row (0 outside runs)."""
    prev = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=False)  # [N, T]
    starts = mask & ~prev
    return torch.cumsum(starts.long(), dim=1) * mask.long()


def llds_penalty(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, gate: str = "action"
) -> tuple[Tensor, Metrics]:
    """Lazy Likelihood-Displacement Stabilization penalty per token (arXiv 2512.04220).

    delta_t = old_t - new_t is positive where the update lowered a sampled token's likelihood.
    Only tokens of responses with advantage >= 0 are preserved (token-level advantages are
    read per token). A gate decides where the penalty applies:
      "action"   (the paper's default, A-gate): each maximal run of mask=1 tokens (one model
                 turn between tool outputs; the whole response in single-turn data) is active
                 when its sum of delta over preserved tokens is > 0;
      "response" (R-gate): the whole response is active when that sum over the row is > 0.
    penalty_t = active_t * max(0, delta_t) on preserved tokens, else 0. Gradient flows
    through `logprobs` only. Returns (penalty [N, T], metrics).
    """
    _check_gate(gate)
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(mask)  # [N, T]
    keep = mask & (adv.detach() >= 0)  # [N, T] preserved tokens
    delta = (old_logprobs.detach() - logprobs) * keep  # [N, T]
    if gate == "response":
        active = (delta.detach().sum(-1, keepdim=True) > 0).expand_as(mask)  # [N, T]
    else:
        ids = _chunk_ids(mask)  # [N, T]
        sums = torch.zeros(mask.shape, dtype=delta.dtype, device=delta.device)  # [N, T] per chunk id
        sums.scatter_add_(1, ids, delta.detach())
        active = (sums.gather(1, ids) > 0) & (ids > 0)  # [N, T]
    penalty = torch.where(active & keep, delta.clamp(min=0), torch.zeros_like(delta))  # [N, T]
    denom = keep.sum().clamp(min=1)
    metrics = {
        "reg/llds/active_frac": (active & keep).sum() / denom,
        "reg/llds/displaced_frac": ((delta.detach() > 0) & keep).sum() / denom,
    }
    return penalty, metrics


class Regularizer:
    """Base class: `__call__(inputs) -> LossOutput` (the scalar the coefficient multiplies).

    Declared needs, read by the trainer and the config check (never probed):
      needs_trainer_old_logprobs: compares the policy with the trainer's own logprobs of the
        sampling policy (so the engine's cannot stand in, and one update is not enough).
      accumulate: "tokens" or "rows", how the term averages over the batch (see PolicyLoss).
      needs_teacher: reads LossInputs.teacher_logprobs (a frozen teacher, `model.teacher_model`,
        scored once per batch) and LossInputs.kd_weights, the per-row weights the trainer gets
        once per batch from `row_weights(correct, group_ids)`.
    """

    name: str = ""
    needs_trainer_old_logprobs: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False
    accumulate: ClassVar[Literal["tokens", "rows"]] = "tokens"

    def row_weights(self, correct: Tensor, group_ids: Tensor) -> Tensor | None:
        """Per-row weights [N] for a term that declares needs_teacher (None: every row 1)."""
        return None

    def __call__(self, inputs: LossInputs) -> LossOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(inputs)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer", base=Regularizer, name_attr="name")


def register_regularizer(name: str):
    """Class decorator: make a Regularizer subclass selectable by `name` in YAML."""
    return REGULARIZERS.register(name)


def available_regularizers() -> list[str]:
    return REGULARIZERS.names()


def get_regularizer_class(name_or_path: str) -> type[Regularizer]:
    """A registered name ("llds") or an import path "pkg.module:ClassName" -> the class."""
    return REGULARIZERS.get(name_or_path)


def build_regularizer(name_or_path: str, **params) -> Regularizer:
    """A regularizer with its params; unknown names or params raise with the choices."""
    return REGULARIZERS.bind(name_or_path, params)()


@register_regularizer("llds")
class LLDS(Regularizer):
    """LLDS (arXiv 2512.04220): token-mean over all response tokens of `llds_penalty`.

    The paper's coefficient is 0.2 (set it as the entry's `coef`). The penalty is zero while
    the policy equals the one that produced `old_logprobs`, so it needs at least two updates
    per rollout batch (trainer.mini_batches or num_iterations >= 2) and old logprobs from the
    trainer itself (trainer.use_engine_logprobs: false), which the config checks.
    """

    needs_trainer_old_logprobs = True

    def __init__(self, *, gate: str = "action") -> None:
        _check_gate(gate)  # at config time, not at the first update
        self.gate = gate

    def __call__(self, inputs: LossInputs) -> LossOutput:
        penalty, metrics = llds_penalty(inputs.logprobs, inputs.old(), inputs.advantages, inputs.mask,
                                        gate=self.gate)
        loss = aggregate(penalty, inputs.mask, "token_mean")
        metrics["reg/llds/penalty"] = loss
        return LossOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})


@register_regularizer("kdrl")
class KDRL(Regularizer):
    """KDRL (arXiv 2506.02208): a KL-to-teacher term on the student's own samples, added to GRPO.

    Per token k(Δ_t), Δ_t = log π_θ(o_t) − log π_T(o_t) (`kl_penalty` estimators), times the
    row's weight (`kdrl_row_mask`: none | incorrect | group, and PACED's w(p) in its reverse
    stage), token-mean over the micro-batch's response tokens. What each estimator optimises,
    used as a loss on samples of π_θ, per position with the context held fixed:
      k1: gradient ∇log π_θ, zero in expectation (nothing);
      k2: Δ ∇log π_θ, the gradient of the reverse KL(π_θ ‖ π_T) (KDRL's reported best; default);
      k3: (1 − e^{−Δ}) ∇log π_θ, the gradient of the *forward* KL(π_T ‖ π_θ); its value is
          clamped at 10 (`kl_penalty`, as verl), so where the teacher is about 11x likelier
          than the student (Δ < −2.4) it gives no gradient.
    The coefficient is the entry's `coef` (KDRL anneals 5e-3 -> 1e-3: `coef_end`, `schedule:
    linear`). Metrics: kd/kl (token mean of the k3 estimate of KL(π_θ ‖ π_T), >= 0, over all
    response tokens), kd/active_frac (share of rows with a non-zero weight).
    """

    needs_teacher = True

    def __init__(self, *, kind: str = "k2", mask: str = "none", pass_gate: float = 0.5) -> None:
        if kind not in KL_KINDS:
            raise ValueError(f"kind: unknown KL estimator {kind!r}; choose one of {', '.join(KL_KINDS)}")
        if mask not in KD_MASKS:
            raise ValueError(f"mask: unknown KD mask {mask!r}; choose one of {', '.join(KD_MASKS)}")
        if not 0.0 <= pass_gate <= 1.0:
            raise ValueError(f"pass_gate: must be in [0, 1], got {pass_gate}")
        self.kind, self.mask, self.pass_gate = kind, mask, pass_gate

    def row_weights(self, correct: Tensor, group_ids: Tensor) -> Tensor:
        return kdrl_row_mask(correct, group_ids, self.mask, pass_gate=self.pass_gate)

    def __call__(self, inputs: LossInputs) -> LossOutput:
        if inputs.teacher_logprobs is None:
            raise ValueError("KDRL needs LossInputs.teacher_logprobs (set model.teacher_model)")
        mask = inputs.mask
        k = kl_penalty(inputs.logprobs, inputs.teacher_logprobs, self.kind)  # [N, T]
        w = inputs.kd_weights
        weighted = k if w is None else k * w.to(k.dtype)[:, None]
        loss = aggregate(weighted, mask, "token_mean")
        delta = (inputs.logprobs.detach() - inputs.teacher_logprobs).clamp(-20.0, 20.0)
        kl = torch.exp(-delta) + delta - 1.0  # k3 without kl_penalty's clamp at 10: a faithful metric
        active = torch.ones(mask.shape[0], device=mask.device) if w is None else (w > 0).float()
        metrics = {"kd/kl": masked_mean(kl, mask), "kd/active_frac": active.mean(), "kd/loss": loss}
        return LossOutput(loss=loss, metrics={k_: v.detach() for k_, v in metrics.items()})
