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

from rlkit.algorithms.losses import LossInputs, LossOutput, Metrics, aggregate
from rlkit.registry import Registry

__all__ = ["LLDS", "REGULARIZERS", "Regularizer", "available_regularizers", "build_regularizer", "get_regularizer_class",
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
    """

    name: str = ""
    needs_trainer_old_logprobs: ClassVar[bool] = False
    accumulate: ClassVar[Literal["tokens", "rows"]] = "tokens"

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
