"""The weight-sync canary: after each sync, does the engine really serve the trainer's weights?

Comparing weights through the sync's own name mapping (`trainer.verify_sync`) cannot catch a
wrong mapping, and it skips tensors the CPU backend packs. The canary compares *behaviour*:
a small fixed probe (a few prompts with fixed completions) is scored by the engine (its prompt
logprobs) and by the trainer (the same chunked path as training), both at temperature 1.

A fixed threshold on that difference does not work: bf16 leaves a floor that depends on the
model and grows as the policy gets peakier (0.04 nats on SmolLM2-135M with a bf16 engine,
0.09 on a collapsing tiny model, both with correct syncs), while one update at a small
learning rate moves the probe by about as much. So the canary compares *movements* between
consecutive checks: after a correct sync the engine's probe logprobs move about as much as the
trainer's did; after a missed one they do not move at all (the same weights score the same
probe identically). With e = engine - engine at the previous check and t = trainer - trainer
at the previous check (per token), moved_ratio = mean|e| / mean|t|: near 1 after a correct
sync (measured 0.6-1.4 with bf16 noise), exactly 0 after a missed one. Drift = moved_ratio <
`threshold` (0.3) while the trainer moved by more than a quarter of the floor (a step that
changed nothing cannot tell). A sync that updated only some tensors lands in between. The run
then raises `weight_sync_drift` and, by default, stops with a checkpoint. Also logged: the
mismatch mean|e - t| / mean|t| (0 with fp32 on both sides, ~0.6 with bf16 noise, 1 when missed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlkit.trainer.prefix import ForwardBatch, compute_logprobs

__all__ = ["MIN_MOVE", "CanaryCheck", "SyncCanary"]

MIN_MOVE = {"bfloat16": 1e-3, "float16": 1e-3, "float32": 1e-6}  # nats; below, a move is noise


@dataclass
class CanaryCheck:
    diff: float       # mean |engine - trainer| logprob over the probe's tokens
    mismatch: float   # mean |engine move - trainer move| / mean |trainer move| since the last check
    moved_ratio: float  # mean |engine move| / mean |trainer move| since the last check (1 at the first)
    moved: float      # mean |trainer move| since the last check (0 at the first)
    threshold: float
    min_move: float
    seconds: float

    @property
    def drift(self) -> bool:
        if not (self.diff == self.diff and self.mismatch == self.mismatch):  # NaN counts as drift
            return True
        return self.moved > self.min_move and self.moved_ratio < self.threshold


class SyncCanary:
    """A fixed probe and the floor it showed when engine and trainer held the same weights."""

    def __init__(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], *, min_move: float,
                 threshold: float = 0.3) -> None:
        if not prompt_ids or any(not c for c in completion_ids):
            raise ValueError("the canary probe needs at least one prompt with a non-empty completion")
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.completion_ids = [list(c) for c in completion_ids]
        self.min_move_dtype, self.threshold = min_move, threshold
        self.floor: float | None = None  # mean |engine - trainer| at the first check (same weights)
        self.previous: tuple[list[float], list[float]] | None = None  # (engine, trainer) at the last check

    @classmethod
    def from_problems(cls, tokenizer, problems: Sequence, *, chat_template: bool, dtypes: Sequence[str],
                      count: int = 4) -> SyncCanary:
        """Probe: the first `count` problems' prompts as the engine renders them, each followed by
        "The answer is <answer>." and EOS (fixed text, whatever the policy would write)."""
        from rlkit.rollout.engine import render_prompts

        chosen = list(problems)[:count]
        _, prompt_ids = render_prompts(tokenizer, [p.prompt for p in chosen], chat_template=chat_template)
        eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        completions = [list(tokenizer(f"The answer is {p.answer}.", add_special_tokens=False).input_ids) + eos
                       for p in chosen]
        floor = max(MIN_MOVE.get(d, MIN_MOVE["bfloat16"]) for d in dtypes)
        return cls(prompt_ids, completions, min_move=floor)

    @torch.no_grad()
    def trainer_logprobs(self, model, autocast, *, chunk_size: int, pad_id: int) -> list[list[float]]:
        n = len(self.prompt_ids)
        width = max(len(c) for c in self.completion_ids)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.bool)
        for i, c in enumerate(self.completion_ids):
            ids[i, : len(c)], mask[i, : len(c)] = torch.tensor(c), True
        fb = ForwardBatch(self.prompt_ids, ids, mask, group_ids=torch.arange(n))
        with autocast():
            out = compute_logprobs(model, fb, shared_prefix=False, temperature=1.0, chunk_size=chunk_size,
                                   pad_id=pad_id, with_entropy=False)
        lp = out.logprobs.float().cpu()
        return [lp[i, : len(c)].tolist() for i, c in enumerate(self.completion_ids)]

    def check(self, engine, model, autocast, *, chunk_size: int, pad_id: int) -> CanaryCheck:
        """Score the probe on both sides; the first call sets the floor (call it when both hold
        the same weights, e.g. right after the engine was loaded or synced)."""
        t0 = time.perf_counter()
        eng = [x for row in engine.score(self.prompt_ids, self.completion_ids) for x in row]
        tr = [x for row in self.trainer_logprobs(model, autocast, chunk_size=chunk_size, pad_id=pad_id) for x in row]
        diff = _mean_abs(a - b for a, b in zip(eng, tr, strict=True))
        if self.floor is None:
            self.floor = diff
        moved, mismatch, ratio = 0.0, 0.0, 1.0
        if self.previous is not None:
            peng, ptr = self.previous
            moved = _mean_abs(a - b for a, b in zip(tr, ptr, strict=True))
            if moved > 0:
                gap = _mean_abs((e - pe) - (t - pt) for e, pe, t, pt in zip(eng, peng, tr, ptr, strict=True))
                mismatch = gap / moved
                ratio = _mean_abs(a - b for a, b in zip(eng, peng, strict=True)) / moved
        self.previous = (eng, tr)
        return CanaryCheck(diff, mismatch, ratio, moved, self.threshold, self.min_move, time.perf_counter() - t0)

    @property
    def min_move(self) -> float:
        return max(0.25 * (self.floor or 0.0), self.min_move_dtype)


def _mean_abs(values) -> float:
    values = [abs(v) for v in values]
    return sum(values) / len(values)
