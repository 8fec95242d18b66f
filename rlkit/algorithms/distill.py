"""Knowledge distillation and SFT mixed into RL: the math, pure functions on tensors.

    kdrl_row_mask     which rows a KL-to-teacher term applies to (KDRL's reward-guided KD)
    paced_weights     PACED's per-prompt weight w(p) = p^alpha (1 - p)^beta from the pass rate
    hpt_switch        HPT's per-prompt switch: correct count <= gamma -> learn from the demonstration
    hard_prompts      ReLIFT's hard questions: every sample wrong, a demonstration available
    ReliftBuffer      ReLIFT's FIFO of hard prompts (checkpointed)
    scheduled_coef    a coefficient's value at a step (constant or linear), for regularizers
    sft_nll           the demonstration NLL (token-mean, per-row weights)

Where they plug in (docs/algorithms.md, "Distillation and SFT mixing"): the `kdrl` regularizer
(rlkit/algorithms/regularizers.py) reads teacher logprobs and row weights from `LossInputs`;
the mixing modes (`mixing:` in YAML) decide per step which demonstrations join the update
(rlkit/trainer/sft.py). Sources: KDRL arXiv 2506.02208, PACED arXiv 2603.11178, ReLIFT
arXiv 2506.07527 (code TheRoadQaQ/ReLIFT), HPT arXiv 2509.04419 (code TsinghuaC3I/Unify-Post-Training).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["KD_MASKS", "ReliftBuffer", "group_pass_rates", "hard_prompts", "hpt_switch", "kdrl_row_mask",
           "paced_weights", "prompt_fingerprint", "scheduled_coef", "sft_nll"]

KD_MASKS = ("none", "incorrect", "group")


def group_pass_rates(correct: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(pass rate of each row's group [N], dense group index [N]) from correct [N] bool."""
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    hits = torch.zeros(counts.shape[0], dtype=torch.float32).index_add_(0, inv, correct.float())
    return (hits / counts.float())[inv], inv


def kdrl_row_mask(correct: Tensor, group_ids: Tensor, mode: str = "none", *, pass_gate: float = 0.5) -> Tensor:
    """Rows [N] float (1 = the KL-to-teacher term applies) for KDRL's reward-guided KD.

    none: every row; incorrect: rows whose response is wrong (KDRL masks KD on correct
    responses, [SEC]); group: every row of a group whose pass rate is <= pass_gate (INTERP:
    the paper's group-level variant is not specified; the teacher is consulted where the
    student mostly fails)."""
    if mode == "none":
        return torch.ones(correct.shape[0])
    if mode == "incorrect":
        return (~correct.bool()).float()
    if mode == "group":
        rate, _ = group_pass_rates(correct.bool(), group_ids)
        return (rate <= pass_gate).float()
    raise ValueError(f"unknown KD mask {mode!r}; choose one of {', '.join(KD_MASKS)}")


def paced_weights(pass_rate: Tensor, *, alpha: float = 1.0, beta: float = 1.0, normalise: bool = True) -> Tensor:
    """PACED's per-problem weight w(p) = p^alpha (1 - p)^beta (arXiv 2603.11178).

    w(0) = w(1) = 0: problems the student always or never solves contribute nothing.
    normalise=True divides by the mean of w over the given problems (INTERP; the paper does not
    say whether weights are normalised), so the term's scale does not shrink as pass rates
    move to the ends; when every w is 0 the result is all 0."""
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"PACED alpha and beta must be > 0, got {alpha}, {beta}")
    p = pass_rate.float().clamp(0.0, 1.0)
    w = p.pow(alpha) * (1.0 - p).pow(beta)
    if normalise:
        mean = w.mean() if w.numel() else w.new_zeros(())
        w = torch.where(mean > 0, w / mean.clamp(min=1e-12), torch.zeros_like(w))
    return w


def hpt_switch(correct_counts: Tensor, gamma: int) -> Tensor:
    """HPT's rule (arXiv 2509.04419; `select_on_off_ada_balance`): per prompt [B] bool, True
    when its number of correct rollouts is <= gamma, i.e. the prompt is learnt from its
    demonstration (SFT) and its rollouts are dropped."""
    if gamma < 0:
        raise ValueError(f"HPT gamma must be >= 0, got {gamma}")
    return correct_counts <= gamma


def hard_prompts(correct_counts: Sequence[int], has_demo: Sequence[bool]) -> list[bool]:
    """ReLIFT's hard questions (arXiv 2506.07527): every rollout wrong and a demonstration to
    learn from."""
    return [c == 0 and d for c, d in zip(correct_counts, has_demo, strict=True)]


def prompt_fingerprint(prompt: str | list[dict[str, str]]) -> str:
    """A short stable digest of a prompt (text, or a chat as its JSON): a buffered index must
    still name the same problem."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class ReliftBuffer:
    """ReLIFT's FIFO of hard prompts, as (problem index, prompt fingerprint) pairs.

    `add` appends, `pop(k)` removes the k oldest once `len >= k`. The state is checkpointed;
    `load_state_dict` refuses a state whose fingerprints do not match the problems now loaded
    (a checkpoint made for another dataset)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, items: Sequence[tuple[int, str]]) -> None:
        self.items.extend((int(i), str(f)) for i, f in items)

    def pop(self, k: int) -> list[int]:
        if k <= 0:
            raise ValueError(f"pop size must be > 0, got {k}")
        if len(self.items) < k:
            return []
        out, self.items = self.items[:k], self.items[k:]
        return [i for i, _ in out]

    def state_dict(self) -> dict:
        return {"items": [list(x) for x in self.items]}

    def load_state_dict(self, state: dict, prompts: Sequence[str]) -> None:
        items = [(int(i), str(f)) for i, f in state.get("items", [])]
        for i, f in items:
            if i >= len(prompts) or prompt_fingerprint(prompts[i]) != f:
                raise ValueError(f"the ReLIFT buffer refers to problem {i}, which is not the problem it buffered "
                                 "(data config changed)")
        self.items = items


def scheduled_coef(coef: float, coef_end: float | None, schedule: str, step: int, max_steps: int) -> float:
    """A coefficient at step `step` (1-based): `constant` keeps coef; `linear` moves from coef
    at step 1 to coef_end at max_steps (KDRL anneals its KL weight 5e-3 -> 1e-3; the shape
    is INTERP)."""
    if schedule == "constant" or coef_end is None:
        return coef
    if schedule != "linear":
        raise ValueError(f"unknown schedule {schedule!r}; choose constant or linear")
    frac = min(1.0, max(0.0, (step - 1) / max(1, max_steps - 1)))
    return coef + (coef_end - coef) * frac


def sft_nll(logprobs: Tensor, mask: Tensor, row_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(weighted token-sum of -log p, number of valid tokens) of demonstration rows [S, L].

    The caller divides the sum by the token count of the whole SFT batch (over micro-batches
    and ranks), which makes the term a token-mean NLL; `row_weights` [S] (PACED) scale rows,
    and a row of weight 0 contributes exactly no gradient."""
    nll = torch.where(mask, -logprobs, 0.0)  # [S, L]
    if row_weights is not None:
        nll = nll * row_weights.to(nll.dtype)[:, None]
    return nll.sum(), mask.sum()
