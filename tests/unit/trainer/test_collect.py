"""Scoring rollouts (rlkit/trainer/collect.py) on a hand-made batch (no engine)."""

from __future__ import annotations

import torch
from trainer_helpers import tiny_batch

from rlkit.data import Problem
from rlkit.trainer.collect import RewardFunction, score_rollouts

PROBLEMS = [Problem("What is 3 + 4?", "7"), Problem("What is 1 + 2?", "3")]


def test_score_rollouts_sums_weighted_rewards_and_counts_accuracy():
    def exact(prompts, completions, answer, **_):
        return [1.0 if c.strip(".") == a else 0.0 for c, a in zip(completions, answer, strict=True)]

    def bonus(prompts, completions, **_):
        return [None if c == "x" else 0.5 for c in completions]

    scored = score_rollouts(tiny_batch(), PROBLEMS, [RewardFunction("exact", exact), RewardFunction("bonus", bonus, 0.2)])
    # rows 0..3 answer 7: "7" 1, "8" 0, "seven" 0, "7." 1; rows 4..7 answer 3: "x" 0, "3" 1, "4" 0, "3" 1
    exact_col = torch.tensor([1.0, 0, 0, 1, 0, 1, 0, 1])
    bonus_col = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 0.5, 0.5, 0.5])  # None -> 0
    assert torch.equal(scored.columns["exact"], exact_col)
    assert torch.allclose(scored.rewards, exact_col + 0.2 * bonus_col)
    assert scored.correct.tolist() == [True, False, False, True, False, True, False, True]
    assert scored.missing == {"exact": 0, "bonus": 1} and scored.failures == {"exact": 0, "bonus": 0}


def test_a_failing_reward_is_counted_and_scores_zero(caplog):
    def broken(prompts, completions, **_):
        raise RuntimeError("sandbox down")

    def one(prompts, completions, **_):
        return [1.0] * len(completions)

    scored = score_rollouts(tiny_batch(), PROBLEMS, [RewardFunction("one", one), RewardFunction("broken", broken)])
    assert scored.failures["broken"] == 1
    assert torch.equal(scored.rewards, torch.ones(8))  # broken contributes 0, the run goes on
    assert "reward 'broken' failed" in caplog.text and "sandbox down" in caplog.text
