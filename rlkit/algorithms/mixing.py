"""Mixing modes: when demonstrations and a teacher join the RL step (`mixing:` in YAML).

    hpt     HPT (arXiv 2509.04419): a prompt with <= gamma correct rollouts drops them and is
            learnt from its demonstration in the same optimizer step (sft_coef).
    relift  ReLIFT (arXiv 2506.07527): prompts with every rollout wrong go to a FIFO; when it
            holds `buffer_size`, one SFT step on them at its own learning rate.
    paced   PACED (arXiv 2603.11178): per-prompt weights w = p^alpha (1 - p)^beta from the step's
            pass rate, on the demonstration NLL before `switch_step` (forward stage) and on the
            KL-to-teacher term from it on (reverse stage).

A mixer decides, once per step, which groups the RL update keeps, which demonstrations join it
and how each group's distillation term is weighted (`plan`), and what happens after the update
(`after_update`, ReLIFT's buffer). These are decisions on counts only; the math is in
rlkit/algorithms/distill.py, and the trainer carries them out in rlkit/trainer/sft.py
(`mix_step`, `relift_step`). One registry, `MIXERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from rlkit.algorithms.distill import (
    ReliftBuffer,
    hard_prompts,
    hpt_switch,
    paced_weights,
    prompt_fingerprint,
)
from rlkit.registry import Registry

__all__ = ["HPT", "MIXERS", "PACED", "MixPlan", "Mixer", "ReLIFT", "build_mixer", "check_demo_field", "demo_of",
           "hard_items"]


@dataclass
class MixPlan:
    """One step's mix, over the B groups of this rank's batch."""

    keep_groups: list[int] | None = None     # groups the RL update trains on (None: all)
    zero_pg: bool = False                     # every group dropped: no policy-gradient this step
    demo_groups: list[int] = field(default_factory=list)   # groups whose demonstration joins the update
    demo_weights: list[float] = field(default_factory=list)  # one per demo group
    kd_group_weights: Tensor | None = None    # [B] multiplies the distillation term's row weights
    sft_coef: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)


class Mixer:
    """Base class. Declared needs: `needs_demos` (data.demo_field), `needs_teacher` (a teacher
    model, for a stage that weights a distillation term)."""

    name: str = ""
    needs_demos: ClassVar[bool] = True

    def needs_teacher(self, max_steps: int) -> bool:
        return False

    def demos_in_step(self, step: int) -> bool:
        """Demonstrations join this step's RL optimizer steps (the trainer then builds an SFT
        batch on every rank, possibly empty)."""
        return False

    def plan(self, step: int, correct_counts: Tensor, group_size: int, has_demo: Sequence[bool]) -> MixPlan:
        return MixPlan()

    def after_update(self, step: int, hard: list[tuple[int, str]]) -> list[int]:
        """Problem indices for a separate SFT step now (ReLIFT), [] for none."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, prompts: Sequence[str]) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


MIXERS: Registry[type[Mixer]] = Registry("mixing mode", base=Mixer, name_attr="name")


def build_mixer(name_or_path: str, **params) -> Mixer:
    return MIXERS.bind(name_or_path, params)()


@MIXERS.register("hpt")
class HPT(Mixer):
    """gamma: switch gate (paper: 0 for Qwen2.5-Math-7B, 2 for Llama-3.1-8B); sft_coef: weight
    of the demonstration NLL (paper: 1.0)."""

    def __init__(self, *, gamma: int = 0, sft_coef: float = 1.0) -> None:
        if gamma < 0:
            raise ValueError(f"gamma: must be >= 0, got {gamma}")
        if sft_coef <= 0:
            raise ValueError(f"sft_coef: must be > 0, got {sft_coef}")
        self.gamma, self.sft_coef = gamma, sft_coef

    def demos_in_step(self, step: int) -> bool:
        return True

    def plan(self, step, correct_counts, group_size, has_demo) -> MixPlan:
        switched = hpt_switch(correct_counts, self.gamma).tolist()
        switched = [s and d for s, d in zip(switched, has_demo, strict=True)]  # no demonstration: stays RL
        keep = [b for b, s in enumerate(switched) if not s]
        demos = [b for b, s in enumerate(switched) if s]
        frac = len(demos) / max(len(switched), 1)
        return MixPlan(keep_groups=keep if keep else None, zero_pg=not keep, demo_groups=demos,
                       demo_weights=[1.0] * len(demos), sft_coef=self.sft_coef,
                       metrics={"hpt/switched_frac": frac})


@MIXERS.register("relift")
class ReLIFT(Mixer):
    """buffer_size: hard prompts per SFT step (paper: 128); lr: the SFT step's learning rate
    (paper: 1e-6, its own AdamW; here the policy's optimizer at this rate)."""

    def __init__(self, *, buffer_size: int = 128, lr: float = 1e-6) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size: must be >= 1, got {buffer_size}")
        if lr <= 0:
            raise ValueError(f"lr: must be > 0, got {lr}")
        self.buffer_size, self.lr = buffer_size, lr
        self.buffer = ReliftBuffer()

    def plan(self, step, correct_counts, group_size, has_demo) -> MixPlan:
        return MixPlan(metrics={"relift/buffer": float(len(self.buffer))})

    def after_update(self, step: int, hard: list[tuple[int, str]]) -> list[int]:
        self.buffer.add(hard)
        return self.buffer.pop(self.buffer_size)

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict, prompts: Sequence[str]) -> None:
        self.buffer.load_state_dict(state.get("buffer", {}), prompts)


@MIXERS.register("paced")
class PACED(Mixer):
    """alpha, beta: the weight's exponents (v3 of the paper: 1, 1); switch_step: the first step
    of the reverse stage (the kdrl term on the student's samples, weighted by w); before it, the
    forward stage (the demonstration NLL weighted by w, the kdrl term off). 0 = reverse from the
    start; a value > max_steps = forward only (then no teacher is needed).
    sft_coef: weight of the demonstration NLL; normalise: divide w by its batch mean (INTERP)."""

    def __init__(self, *, alpha: float = 1.0, beta: float = 1.0, switch_step: int = 0, sft_coef: float = 1.0,
                 normalise: bool = True) -> None:
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha, beta: must be > 0, got {alpha}, {beta}")
        if switch_step < 0:
            raise ValueError(f"switch_step: must be >= 0, got {switch_step}")
        if sft_coef <= 0:
            raise ValueError(f"sft_coef: must be > 0, got {sft_coef}")
        self.alpha, self.beta, self.switch_step = alpha, beta, switch_step
        self.sft_coef, self.normalise = sft_coef, normalise

    def needs_teacher(self, max_steps: int) -> bool:
        return self.switch_step <= max_steps

    def uses_demos(self) -> bool:
        return self.switch_step > 1

    def demos_in_step(self, step: int) -> bool:
        return step < self.switch_step

    def plan(self, step, correct_counts, group_size, has_demo) -> MixPlan:
        w = paced_weights(correct_counts.float() / group_size, alpha=self.alpha, beta=self.beta,
                          normalise=self.normalise)  # [B]
        metrics = {"paced/w_mean": float(w.mean()) if w.numel() else 0.0,
                   "paced/reverse": float(step >= self.switch_step)}
        if step >= self.switch_step:  # reverse stage: the KL-to-teacher term, weighted per prompt
            return MixPlan(kd_group_weights=w, metrics=metrics)
        # forward stage: the demonstration NLL, weighted per prompt; the KL term waits (weight 0)
        demos = [b for b in range(len(has_demo)) if has_demo[b] and float(w[b]) > 0]
        return MixPlan(demo_groups=demos, demo_weights=[float(w[b]) for b in demos], sft_coef=self.sft_coef,
                       kd_group_weights=w.new_zeros(w.shape), metrics=metrics)


def hard_items(indices: Sequence[int], correct_counts: Sequence[int], has_demo: Sequence[bool],
               prompt_of: Callable[[int], str]) -> list[tuple[int, str]]:
    """(problem index, prompt fingerprint) of this step's hard prompts (ReLIFT's rule)."""
    flags = hard_prompts(list(correct_counts), list(has_demo))
    return [(i, prompt_fingerprint(prompt_of(i))) for i, f in zip(indices, flags, strict=True) if f]


def demo_of(problem, demo_field: str) -> str | None:
    """A problem's demonstration text, or None when the row has none (empty counts as none)."""
    value = problem.fields.get(demo_field)
    return None if value is None or str(value) == "" else str(value)


def check_demo_field(problems: Sequence, demo_field: str) -> None:
    """Refuse a demonstration column that no problem has; the message lists the columns found."""
    if problems and not any(demo_field in p.fields for p in problems):
        columns = sorted(problems[0].fields)
        raise ValueError(f"data.demo_field: no problem has a '{demo_field}' column; the columns are "
                         f"{', '.join(columns) or '(none)'}")

