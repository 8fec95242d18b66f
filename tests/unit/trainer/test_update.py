"""The step functions of rlkit/trainer/loop.py on small hand-made batches (no engine)."""

from __future__ import annotations

import copy

import pytest
import torch
from trainer_helpers import sgd_policy, tiny_batch, tiny_llama

from rlkit.algorithms.losses import build_loss
from rlkit.data import Problem
from rlkit.trainer.loop import (
    ForwardSettings,
    RewardFunction,
    batch_logprobs,
    micro_batches,
    policy_update,
    score_rollouts,
    split_rows,
)

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


def test_split_rows_keeps_groups_together():
    parts = split_rows(tiny_batch(), 2)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    parts = split_rows(tiny_batch(), 4)  # more chunks than prompts: split rows
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_micro_batches_respect_the_token_budget():
    batch = tiny_batch()
    # group 0: prompt 4 + completions 6,3,1,5 = 19 shared; group 1: prompt 3 + 2,6,4,3 = 18
    assert [m.tolist() for m in micro_batches(torch.arange(8), batch, 19, shared_prefix=True)] == [
        [0, 1, 2, 3], [4, 5, 6, 7]]
    # without sharing each row pays its prompt: costs 10, 7, 5, 9, 5, 9, 7, 6; greedy packing
    # under 19: 10+7=17 | 5+9+5=19 | 9+7=16 | 6
    assert [m.tolist() for m in micro_batches(torch.arange(8), batch, 19, shared_prefix=False)] == [
        [0, 1], [2, 3, 4], [5, 6], [7]]


@pytest.mark.parametrize("agg_mode", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_micro_batch_split_does_not_change_the_update(agg_mode, shared_prefix):
    """One SGD step from a whole-batch forward == the same step from tiny micro-batches."""
    batch = tiny_batch()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.0])
    loss = build_loss("grpo", agg_mode=agg_mode)
    deltas = []
    for budget in (10_000, 8):  # one micro-batch vs one row (or less) per micro-batch
        model = tiny_llama()
        before = copy.deepcopy(model.state_dict())
        fs = ForwardSettings(temperature=1.0, chunk_size=7, pad_id=0, shared_prefix=shared_prefix,
                             micro_batch_tokens=budget)
        policy_update(sgd_policy(model), loss, batch, adv, old_logprobs=None, fs=fs, num_iterations=1, mini_batches=1)
        deltas.append({k: model.state_dict()[k] - before[k] for k in before})
    for name in deltas[0]:
        torch.testing.assert_close(deltas[0][name], deltas[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_update_raises_positive_advantage_rows():
    batch = tiny_batch()
    model = tiny_llama()
    fs = ForwardSettings(temperature=1.0, chunk_size=64, pad_id=0, shared_prefix=True, micro_batch_tokens=64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    policy = sgd_policy(model)
    for g in policy.optimizer.param_groups:
        g["lr"] = 0.05
    before, _ = batch_logprobs(model, batch, fs, policy.autocast)
    policy_update(policy, build_loss("grpo"), batch, adv, old_logprobs=None, fs=fs, num_iterations=1, mini_batches=1)
    after, _ = batch_logprobs(model, batch, fs, policy.autocast)
    mask = batch.completion_mask
    delta = ((after - before) * mask).sum(1) / mask.sum(1)  # [N] mean logprob change per row
    assert (delta[adv > 0] > 0).all() and (delta[adv < 0] < 0).all(), delta


def test_non_finite_loss_is_skipped_and_counted(caplog):
    batch = tiny_batch()
    model = tiny_llama()
    before = copy.deepcopy(model.state_dict())
    fs = ForwardSettings(temperature=1.0, chunk_size=64, pad_id=0, shared_prefix=True, micro_batch_tokens=10_000)
    adv = torch.full((8,), float("nan"))
    result = policy_update(sgd_policy(model), build_loss("grpo"), batch, adv, old_logprobs=None, fs=fs,
                           num_iterations=1, mini_batches=1)
    assert result.nonfinite_skips == 1
    assert "non-finite loss" in caplog.text
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no NaN reached the weights


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_post_update_logprobs_skips_zero_advantage_groups_exactly(shared_prefix):
    """Only the group with non-zero advantages is re-run; the displacement metrics equal
    those from re-running every row, and the skipped group keeps its `before` values."""
    from rlkit.diagnostics.metrics import logp_delta_metrics
    from rlkit.trainer.loop import post_update_logprobs

    batch, model = tiny_batch(), tiny_llama()
    fs = ForwardSettings(temperature=1.0, chunk_size=7, pad_id=0, shared_prefix=shared_prefix,
                         micro_batch_tokens=10_000)
    full, _ = batch_logprobs(model, batch, fs, lambda: torch.autocast("cpu", enabled=False))
    before = full + 0.1 * torch.randn(full.shape, generator=torch.Generator().manual_seed(1)) * batch.completion_mask
    adv = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5])  # group 0 saturated
    sub = post_update_logprobs(sgd_policy(model), batch, adv, before, fs)
    assert torch.equal(sub[:4], before[:4])  # group 0 never ran through the model
    torch.testing.assert_close(sub[4:] * batch.completion_mask[4:], full[4:] * batch.completion_mask[4:])
    want = logp_delta_metrics(before, full, adv, batch.completion_mask)
    got = logp_delta_metrics(before, sub, adv, batch.completion_mask)
    for key in want:
        assert float(got[key]) == pytest.approx(float(want[key]), abs=1e-6)
    # nothing to re-run when every group is saturated
    assert torch.equal(post_update_logprobs(sgd_policy(model), batch, torch.zeros(8), before, fs), before)


def test_regularizer_terms_are_added_with_their_coefficient():
    """policy_update adds coef x term to each micro-batch loss: with old logprobs 0.5 above the
    current ones every preserved token is displaced, so LLDS is positive, and the logged loss
    grows by exactly 0.2 x the logged penalty (one micro-batch, measured before any update)."""
    from rlkit.algorithms.regularizers import LLDS

    batch = tiny_batch()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 1.0])
    fs = ForwardSettings(temperature=1.0, chunk_size=7, pad_id=0, shared_prefix=True, micro_batch_tokens=10_000)
    current, _ = batch_logprobs(tiny_llama(), batch, fs, lambda: torch.autocast("cpu", enabled=False))
    old = (current + 0.5) * batch.completion_mask
    runs = []
    for regs in ((), ((0.2, LLDS(gate="response")),)):
        res = policy_update(sgd_policy(tiny_llama()), build_loss("grpo"), batch, adv, old_logprobs=old, fs=fs,
                            num_iterations=1, mini_batches=1, regularizers=regs)
        runs.append(res.metrics)
    plain, reg = runs
    assert reg["reg/llds/penalty"] > 0.1 and "reg/llds/penalty" not in plain
    assert reg["train/loss"] - plain["train/loss"] == pytest.approx(0.2 * reg["reg/llds/penalty"], rel=1e-5)
