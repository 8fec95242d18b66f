"""reasoning-gym as a problem source (rlkit/data/reasoning_gym.py) and the `reasoning_gym` reward.

Real reasoning-gym tasks (the `tasks` extra), generated offline; scores checked by hand.
"""

from __future__ import annotations

import logging
import sys

import pytest
import reasoning_gym

from rewards import get_reward
from rewards.reasoning_gym import answer_candidates
from rlkit.config import ConfigError, DataConfig
from rlkit.data import load_problems
from rlkit.data.reasoning_gym import HELD_OUT_SEED_OFFSET, count_overlap, entry_to_problem

ONE_DIGIT_SUMS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _cfg(**kw) -> DataConfig:
    base = {"name": "reasoning_gym", "task": "chain_sum", "task_params": ONE_DIGIT_SUMS, "num_train": 50,
            "num_eval": 20, "seed": 3}
    return DataConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- loading


def test_train_and_held_out_are_the_tasks_own_items_from_two_seeds():
    train, held_out = load_problems(_cfg())
    assert len(train) == 50 and len(held_out) == 20
    own_train = reasoning_gym.create_dataset("chain_sum", size=50, seed=3, **ONE_DIGIT_SUMS)
    own_eval = reasoning_gym.create_dataset("chain_sum", size=20, seed=3 + HELD_OUT_SEED_OFFSET, **ONE_DIGIT_SUMS)
    assert HELD_OUT_SEED_OFFSET == 10_000_000
    assert [p.fields["entry"] for p in train] == [own_train[i] for i in range(50)]
    assert [p.fields["entry"] for p in held_out] == [own_eval[i] for i in range(20)]
    # the prompt is reasoning-gym's question, the reference its answer
    assert [(p.prompt, p.answer) for p in train] == [(e["question"], e["answer"]) for e in own_train]
    assert {p.fields["task"] for p in train} == {"chain_sum"} and train[0].fields["task_params"] == ONE_DIGIT_SUMS
    # another seed stream: the held-out list is not the training list's head
    assert [p.prompt for p in held_out] != [p.prompt for p in train[:20]]
    assert load_problems(_cfg()) == (train, held_out)  # deterministic


def test_task_params_reach_the_generator():
    params = {"min_terms": 3, "max_terms": 3, "min_digits": 2, "max_digits": 2}
    train, _ = load_problems(_cfg(task_params=params))
    for p in train:
        meta = p.fields["entry"]["metadata"]
        assert meta["num_terms"] == 3
        numbers = [tok for tok in meta["expression"].split() if tok not in "+-"]
        assert len(numbers) == 3 and all(10 <= int(n) <= 99 for n in numbers), meta["expression"]


def test_prompt_template_and_system_prompt():
    train, _ = load_problems(_cfg(prompt_template="{question} Answer with only the number.", system_prompt="Be brief."))
    entry = train[0].fields["entry"]
    assert train[0].prompt == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": entry["question"] + " Answer with only the number."}]
    with pytest.raises(ConfigError, match=r"^data.prompt_template: '\{q\}' does not format .* its one field is "
                                          r"\{question\}"):
        load_problems(_cfg(prompt_template="{q}"))


def test_overlap_is_counted_and_logged(caplog):
    def problem(question):
        return entry_to_problem({"question": question, "answer": "1", "metadata": {}}, "chain_sum", {}, None)

    assert count_overlap([problem("a"), problem("b")], [problem("b"), problem("c"), problem("b")]) == 2
    # 1-digit sums and differences: 10 x 10 x 2 = 200 questions, so 400 draws repeat many and
    # the held-out 100 mostly appear in training
    with caplog.at_level(logging.INFO, logger="rlkit.data.reasoning_gym"):
        train, held_out = load_problems(_cfg(num_train=400, num_eval=100))
    seen = {p.prompt for p in train}
    expected = sum(p.prompt in seen for p in held_out)
    assert 50 < expected <= 100
    assert (f"{len(seen)} distinct questions), 100 held-out; {expected} held-out questions ({expected:.1f}%) also "
            "appear in training") in caplog.text


# ----------------------------------------------------------------------------- config errors


def test_unknown_task_names_the_field_lists_tasks_and_suggests():
    with pytest.raises(ValueError) as info:
        _cfg(task="chain_sums")
    msg = str(info.value)
    assert "data.task: unknown reasoning-gym task 'chain_sums'; did you mean 'chain_sum'? Available tasks: " in msg
    assert "basic_arithmetic" in msg and "gcd" in msg and "leg_counting" in msg


def test_bad_params_carry_reasoning_gyms_message_and_the_options():
    with pytest.raises(ValueError) as info:
        _cfg(task_params={"min_terms": 5, "max_terms": 2})
    assert ("data.task_params: reasoning-gym refused {'min_terms': 5, 'max_terms': 2} for task 'chain_sum': "
            "max_terms must be >= min_terms. Options of 'chain_sum': min_terms, max_terms, min_digits, max_digits, "
            "allow_negation.") in str(info.value)
    with pytest.raises(ValueError, match=r"got an unexpected keyword argument 'min_term'"):
        _cfg(task_params={"min_term": 2})
    with pytest.raises(ValueError, match=r"data.task_params.seed: set by rlkit from data.seed"):
        _cfg(task_params={"seed": 1})


def test_task_fields_belong_to_reasoning_gym_only():
    with pytest.raises(ValueError, match=r"data.task is required when data.name is 'reasoning_gym'"):
        DataConfig(name="reasoning_gym")
    with pytest.raises(ValueError, match=r"data.task: applies to data.name reasoning_gym \(data.name is 'arithmetic'\)"):
        DataConfig(task="chain_sum")
    with pytest.raises(ValueError, match=r"data.answer_format: applies to dataset rows"):
        _cfg(answer_format="boxed")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # what `import` sees when it is not installed
    with pytest.raises(ValueError, match=r"install the `tasks` extra: pip install 'rlkit\[tasks\]'"):
        _cfg()


# ----------------------------------------------------------------------------- the reward


@pytest.mark.parametrize("completion, expected", [
    ("<answer> 7 </answer> or 8", ["7"]),                       # the tag wins, stripped
    ("<answer>1</answer> no, <answer>2</answer>", ["2"]),        # the last tag
    ("The sum is 12.", ["The sum is 12.", "12.", "12"]),
    ("Let me add.\n\n3 + 9 = 12\n", ["Let me add.\n\n3 + 9 = 12", "3 + 9 = 12", "12"]),
    ("12", ["12"]),
    ("  ", []),
])
def test_answer_candidates(completion, expected):
    assert answer_candidates(completion) == expected


def test_reward_scores_with_the_tasks_own_verifier():
    fn = get_reward("reasoning_gym")
    # chain_sum scores with compute_decimal_reward: 1.0 when the text is the number
    # (Decimal("-4.") == -4), else len(reference) / len(text) when the text contains it
    chain = {"question": "State the final answer to the following arithmetic problem: 0 - 4 =", "answer": "-4",
             "metadata": {}}
    completions = [
        "<answer>-4</answer>",               # 1.0
        "The answer is -4.",                 # last word "-4." -> Decimal -4: 1.0
        "I think 12 then\n-4 is wrong",      # whole: 2/27, last line "-4 is wrong": 2/11, "wrong": 0 -> 2/11
        "<answer>5</answer> it is -4",       # the tag only: 0.0
        "",                                  # nothing to score: 0.0
    ]
    # gcd keeps reasoning-gym's default verifier: exact string 1.0, else len(reference) /
    # len(text) when the text contains the reference
    gcd = {"question": "Find the GCD of 4, 16.", "answer": "4", "metadata": {}}
    completions += ["The GCD is 4.", "44"]   # "4" (punctuation stripped): 1.0; "44": 1/2
    entries = [chain] * 5 + [gcd] * 2
    tasks = ["chain_sum"] * 5 + ["gcd"] * 2
    scores = fn(prompts=[""] * 7, completions=completions, entry=entries, task=tasks, task_params=[{}] * 7,
                answer=[e["answer"] for e in entries])
    assert scores == pytest.approx([1.0, 1.0, 2 / 11, 0.0, 0.0, 1.0, 0.5])


def test_reward_scores_with_the_configured_task():
    # decimal_arithmetic accepts an answer within 10^-max_num_decimal_places of the reference:
    # 1.25 vs 1.2 is off by 0.05, within 10^-1 but not 10^-2
    fn = get_reward("reasoning_gym")
    entry = {"question": "?", "answer": "1.2", "metadata": {}}
    scores = [fn(prompts=[""], completions=["1.25"], entry=[entry], task=["decimal_arithmetic"],
                 task_params=[{"max_num_decimal_places": places}])[0] for places in (1, 2)]
    assert scores == [1.0, 0.0]
