"""DAPO dynamic sampling: keep informative groups, draw again until the batch is full.

Completions come from the real transformers engine on the tiny model; the reward ignores them
and scores each row from its problem's `answer` ("mixed" -> 1, 0, 1, 0; "all" -> 1s; "none" ->
0s), so which groups are informative is known by construction.
"""

from __future__ import annotations

import pytest
import torch

from rlkit.data import Problem
from rlkit.rollout.hf_engine import HFEngine
from rlkit.rollout.types import RolloutBatch, SamplingConfig
from rlkit.trainer.collect import RewardFunction, collect_rollouts, informative_groups

G = 4
PATTERN = {"mixed": [1.0, 0.0, 1.0, 0.0], "all": [1.0] * G, "none": [0.0] * G}


def by_answer(prompts, completions, answer, **_):
    # rows come group by group, so row i is row i % G of its group
    return [PATTERN[a.split("#")[0]][i % G] for i, a in enumerate(answer)]


@pytest.fixture(scope="module")
def engine(tiny_model_path):
    eng = HFEngine(tiny_model_path, dtype="float32", seed=0)
    yield eng
    eng.close()


def _run(engine, rounds_of_answers, *, dynamic=True, max_rounds=4):
    problems = [Problem(prompt=f"What is {i} + 1?", answer=f"{a}#{i}")
                for r in rounds_of_answers for i, a in enumerate(r)]
    starts = [sum(len(r) for r in rounds_of_answers[:k]) for k in range(len(rounds_of_answers))]
    draws = iter(starts)
    drawn = []

    def draw():
        k = len(drawn)
        drawn.append(rounds_of_answers[k])
        start = next(draws)
        return list(range(start, start + len(rounds_of_answers[k])))

    def generate(chosen):
        return engine.generate([p.prompt for p in chosen], G, SamplingConfig(max_new_tokens=2))

    got = collect_rollouts(draw, problems, generate, [RewardFunction("by_answer", by_answer)], dynamic=dynamic,
                           max_rounds=max_rounds, pad_id=0)
    assert got.drawn == list(range(sum(len(r) for r in drawn)))  # every drawn index, in order
    assert got.generate_seconds > 0 and got.score_seconds >= 0
    return got, drawn


def test_informative_groups_hand_values():
    # groups: [1,1], [0,1], [0.5,0.5], [-1,2] -> max > min only for groups 1 and 3
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, -1.0, 2.0])
    assert informative_groups(rewards, 2) == [1, 3]


def test_off_returns_the_single_draw(engine):
    got, drawn = _run(engine, [["all", "none", "mixed"]], dynamic=False)
    assert len(drawn) == 1 and got.batch.num_prompts == 3 and got.metrics == {}
    assert [p.answer for p in got.problems] == ["all#0", "none#1", "mixed#2"]


def test_refills_until_full(engine):
    got, drawn = _run(engine, [["mixed", "all", "none", "mixed"], ["all", "mixed", "none", "mixed"]])
    assert len(drawn) == 2
    # kept: round 1 groups 0 and 3, round 2 groups 1 and 3, in that order
    assert [p.answer for p in got.problems] == ["mixed#0", "mixed#3", "mixed#1", "mixed#3"]
    b = got.batch
    assert b.num_prompts == 4 and b.num_rows == 16
    assert b.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert got.scored.rewards.tolist() == PATTERN["mixed"] * 4
    # every row keeps its own tokens: the mask covers exactly its completion, padding is trimmed
    assert b.completion_ids.shape[1] == int(b.completion_lengths.max())
    assert got.metrics == {"rollout/dynamic_rounds": 2.0, "rollout/dynamic_kept_frac": 1.0,
                           "rollout/dynamic_informative_frac": 0.5}  # 4 kept of 8 generated


def test_rounds_run_out_with_a_partial_batch(engine):
    got, _ = _run(engine, [["all", "none"], ["mixed", "all"]], max_rounds=2)
    assert [p.answer for p in got.problems] == ["mixed#0"]
    assert got.metrics["rollout/dynamic_kept_frac"] == 0.5  # 1 of 2 wanted
    assert got.batch.num_rows == G


def test_no_informative_group_trains_on_last_draw(engine):
    got, _ = _run(engine, [["all", "none"], ["none", "none"]], max_rounds=2)
    assert [p.answer for p in got.problems] == ["none#0", "none#1"]
    assert got.metrics["rollout/dynamic_kept_frac"] == 0.0


def test_select_and_concat_keep_rows_intact(engine):
    a = engine.generate(["What is 1 + 1?", "What is 2 + 2?"], 2, SamplingConfig(max_new_tokens=5))
    b = engine.generate(["What is 3 + 3?"], 2, SamplingConfig(max_new_tokens=3))
    a.rewards, b.rewards = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([5.0, 6.0])
    one = a.select_groups([1])
    assert one.completion_texts == a.completion_texts[2:4] and one.rewards.tolist() == [3.0, 4.0]
    assert torch.equal(one.completion_ids, a.completion_ids[2:4, : one.completion_ids.shape[1]])
    both = RolloutBatch.concat([one, b], pad_id=0)
    assert both.prompt_texts == [a.prompt_texts[1], b.prompt_texts[0]]
    assert both.rewards.tolist() == [3.0, 4.0, 5.0, 6.0]
    assert both.group_ids.tolist() == [0, 0, 1, 1]
    for i, src in enumerate([(one, 0), (one, 1), (b, 0), (b, 1)]):
        batch, row = src
        n = int(batch.completion_lengths[row])
        assert both.completion_mask[i].sum() == n
        assert torch.equal(both.completion_ids[i, :n], batch.completion_ids[row, :n])
        assert torch.equal(both.engine_logprobs[i, :n], batch.engine_logprobs[row, :n])
