"""The weight-sync canary: after each sync, does the engine really serve the trainer's weights?

Comparing weights through the sync's own name mapping (`trainer.verify_sync`) cannot catch a
wrong mapping, and it skips tensors the CPU backend packs. The canary compares *behaviour*:
a small fixed probe (a few prompts with fixed completions) is scored by the engine (its prompt
logprobs) and by the trainer (the same chunked path as training), both at temperature 1.

Drift is judged against two references, so that bf16 noise (which grows as the policy gets
peakier) is not mistaken for it:
- the tolerance, max(`factor` x the floor measured right after loading, when both sides hold
  the same weights, `min_tolerance` of the dtypes involved): a difference below it is noise;
- the trainer's probe logprobs of the *previous* check: an engine that missed this step's
  update looks more like the previous weights than the current ones.
Drift = the difference to the current trainer exceeds the tolerance *and* the difference to
the previous trainer: the engine serves something closer to the old policy than to the new
one (a missed sync, or one that updated too few tensors). bf16 on either side leaves a floor
of about 1e-3 nats on SmolLM2, fp32 on both ~1e-6; the noise grows with the size of the
probe's logprobs (a collapsing tiny model reached 0.09 nats with a correct sync), which is why
no absolute threshold alone decides. Not caught: an engine whose weights are wrong but happen
to sit as close to the new policy as to the old one. Then the run raises a
`weight_sync_drift` alarm and, by default, stops with a checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlkit.trainer.prefix import ForwardBatch, compute_logprobs

__all__ = ["CanaryCheck", "SyncCanary"]

MIN_TOLERANCE = {"bfloat16": 5e-3, "float16": 5e-3, "float32": 1e-4}


@dataclass
class CanaryCheck:
    diff: float           # mean |engine - trainer| logprob over the probe's tokens
    diff_previous: float  # mean |engine - the trainer at the previous check| (inf at the first)
    tolerance: float
    seconds: float

    @property
    def drift(self) -> bool:
        if not self.diff == self.diff:  # NaN counts as drift
            return True
        return self.diff > self.tolerance and self.diff > self.diff_previous


class SyncCanary:
    """A fixed probe and the floor it showed when engine and trainer held the same weights."""

    def __init__(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], *, min_tolerance: float,
                 factor: float = 4.0) -> None:
        if not prompt_ids or any(not c for c in completion_ids):
            raise ValueError("the canary probe needs at least one prompt with a non-empty completion")
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.completion_ids = [list(c) for c in completion_ids]
        self.min_tolerance, self.factor = min_tolerance, factor
        self.floor: float | None = None
        self.previous: list[list[float]] | None = None  # the trainer's probe logprobs at the last check

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
        tol = max(MIN_TOLERANCE.get(d, MIN_TOLERANCE["bfloat16"]) for d in dtypes)
        return cls(prompt_ids, completions, min_tolerance=tol)

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
        eng = engine.score(self.prompt_ids, self.completion_ids)
        tr = self.trainer_logprobs(model, autocast, chunk_size=chunk_size, pad_id=pad_id)
        diff = _mean_abs_diff(eng, tr)
        diff_prev = float("inf") if self.previous is None else _mean_abs_diff(eng, self.previous)
        if self.floor is None:
            self.floor = diff
        self.previous = tr
        return CanaryCheck(diff, diff_prev, self.tolerance, time.perf_counter() - t0)

    @property
    def tolerance(self) -> float:
        return max(self.factor * (self.floor or 0.0), self.min_tolerance)


def _mean_abs_diff(a: list[list[float]], b: list[list[float]]) -> float:
    diffs = [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(diffs) / len(diffs)
