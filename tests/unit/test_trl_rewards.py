"""Reward functions written for TRL's GRPOTrainer run unchanged through rlkit's reward path.

The functions below are in the forms TRL documents ("Using a custom reward function" in
docs/source/grpo_trainer.md of huggingface/trl, and its quick start's `reward_len`):
`fn(completions, **kwargs)` and `fn(prompts, completions, **kwargs)`, reading
`completion[0]["content"]` for conversational data. TRL calls them with keyword arguments only
(`trl/trainer/grpo_trainer.py`, `_calculate_rewards`), and so does rlkit's `score_rollouts`.

The rows come from a jsonl file in TRL's conversational layout (a `prompt` column holding
messages, a `ground_truth` column) through `load_problems`; the batch is built by
`RolloutBatch.from_rows` with SmolLM2's real tokenizer; the reward functions are named in a
recipe config by import path, as a user would.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from rlkit.config import config_from_dict
from rlkit.data.datasets import load_problems
from rlkit.rollout.engine import render_prompts
from rlkit.rollout.types import RolloutBatch
from rlkit.trainer.collect import RewardFunction, reward_inputs, score_rollouts

# ----------------------------------------------------------------------------- TRL-style rewards


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def reward_func(completions, ground_truth, **kwargs):
    # Regular expression to capture content inside \boxed{}
    matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
    contents = [match.group(1) if match else "" for match in matches]
    # Reward 1 if the content is the same as the ground truth, 0 otherwise
    return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]  # noqa: B905 (as documented)


def turns_seen(prompts, completions, **kwargs):
    """Messages in each prompt, plus 0.5 if the completion repeats the last user question's number."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        numbers = re.findall(r"\d+", prompt[-1]["content"])
        out.append(len(prompt) + (0.5 if numbers and numbers[0] in completion[0]["content"] else 0.0))
    return out


def token_count(completions, completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


def shaped_by_step(completions, trainer_state, **kwargs):
    return [min(1.0, trainer_state.global_step / 100)] * len(completions)


# ----------------------------------------------------------------------------- the batch


ROWS = [
    {"prompt": [{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": "What is 3 + 4?"}],
     "ground_truth": "7"},
    {"prompt": [{"role": "user", "content": "What is 2 * 5?"}], "ground_truth": "10"},
]
# G = 2 completions per prompt; rows 0-1 answer prompt 0, rows 2-3 prompt 1
COMPLETIONS = [
    "<think>3 + 4 = 7</think><answer>\\boxed{7}</answer>",  # 50 chars: 7 + 9 + 8 + 8 + 9 + 9
    "The answer is \\boxed{8}.",                              # 24 chars: 14 + 9 + 1
    "<think>2 * 5</think><answer>\\boxed{10}</answer>",      # 47 chars: 7 + 5 + 8 + 8 + 10 + 9
    "<think>guess</think> \\boxed{10}",                       # 31 chars: 7 + 5 + 8 + 1 + 10
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from rlkit.assets import tiny_model_dir

    return AutoTokenizer.from_pretrained(tiny_model_dir())


@pytest.fixture
def problems(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    path = tmp_path / "trl_conversational.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = config_from_dict({"model": {"name_or_path": "smollm2-135m"},
                            "data": {"name": "jsonl", "path": str(path), "messages_field": "prompt",
                                     "answer_field": "ground_truth", "num_eval": 0}})
    train, _ = load_problems(cfg.data)
    return train


@pytest.fixture
def batch(problems, tokenizer):
    texts, ids = render_prompts(tokenizer, [p.prompt for p in problems], chat_template=True)
    tokens = [tokenizer(c, add_special_tokens=False).input_ids for c in COMPLETIONS]
    return RolloutBatch.from_rows(prompt_ids=ids, prompt_texts=texts, group_size=2, token_ids=tokens,
                                  logprobs=[[0.0] * len(t) for t in tokens], texts=list(COMPLETIONS),
                                  finish_reason=["stop"] * 4, pad_id=0)


def _functions(*entries: dict) -> list[RewardFunction]:
    """Reward functions as the recipe builds them from a validated config's `rewards` list."""
    import rewards as reward_registry

    cfg = config_from_dict({"model": {"name_or_path": "smollm2-135m"}, "rewards": list(entries)})
    return [RewardFunction(s.name, reward_registry.get_reward(s.name), s.weight, dict(s.params),
                           conversational=s.conversational) for s in cfg.rewards]


# ----------------------------------------------------------------------------- tests


def test_standard_format_rewards_get_text(problems, batch):
    fns = _functions({"name": "test_trl_rewards:reward_len"}, {"name": "test_trl_rewards:reward_func"})
    scored = score_rollouts(batch, problems, fns)
    # reward_len = -|20 - len|: lengths 50, 24, 47, 31 -> -30, -4, -27, -11
    assert scored.columns["test_trl_rewards:reward_len"].tolist() == [-30.0, -4.0, -27.0, -11.0]
    # \boxed{7} vs 7, \boxed{8} vs 7, \boxed{10} vs 10, \boxed{10} vs 10 (the lazy regex stops at the first '}')
    assert scored.columns["test_trl_rewards:reward_func"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert scored.rewards.tolist() == [-29.0, -4.0, -26.0, -10.0]  # weights 1 + 1
    assert scored.failures == {"test_trl_rewards:reward_len": 0, "test_trl_rewards:reward_func": 0}


def test_conversational_rewards_get_messages(problems, batch):
    fns = _functions({"name": "test_trl_rewards:format_reward_func", "conversational": True},
                     {"name": "test_trl_rewards:turns_seen", "conversational": True, "weight": 0.5})
    scored = score_rollouts(batch, problems, fns)
    # rows 0 and 2 are <think>..</think><answer>..</answer> from start to end; row 1 has no tags,
    # row 3 no <answer>
    assert scored.columns["test_trl_rewards:format_reward_func"].tolist() == [1.0, 0.0, 1.0, 0.0]
    # prompt 0 is [system, user] (2 messages), prompt 1 [user] (1); +0.5 where the completion holds
    # the question's first number: "3" in row 0 only ("3 + 4 = 7"); "2" in row 2 only ("2 * 5")
    assert scored.columns["test_trl_rewards:turns_seen"].tolist() == [2.5, 2.0, 1.5, 1.0]
    # total = format + 0.5 * turns: 1 + 1.25, 0 + 1.0, 1 + 0.75, 0 + 0.5
    assert scored.rewards.tolist() == [2.25, 1.0, 1.75, 0.5]


def test_text_and_conversational_rewards_mix_in_one_call(problems, batch):
    fns = _functions({"name": "test_trl_rewards:reward_func"},
                     {"name": "test_trl_rewards:format_reward_func", "conversational": True, "weight": 2.0})
    scored = score_rollouts(batch, problems, fns)
    # accuracy [1, 0, 1, 1] + 2 * format [1, 0, 1, 0]
    assert scored.rewards.tolist() == [3.0, 0.0, 3.0, 1.0]
    assert scored.correct.tolist() == [True, False, True, True]  # the first function is the accuracy


def test_trl_own_reward_functions_by_import_path(problems, batch):
    """`trl.rewards` as installed, named in the config like any user function. accuracy_reward
    reads a `solution` column (here a copy of ground_truth) and math-verify."""
    problems = [type(p)(p.prompt, p.answer, {**p.fields, "solution": p.fields["ground_truth"]}) for p in problems]
    fns = _functions({"name": "trl.rewards:accuracy_reward", "conversational": True},
                     {"name": "trl.rewards:think_format_reward", "conversational": True, "weight": 0.5})
    scored = score_rollouts(batch, problems, fns)
    # \boxed{7} vs 7, \boxed{8} vs 7, \boxed{10} vs 10, \boxed{10} vs 10
    assert scored.columns["trl.rewards:accuracy_reward"].tolist() == [1.0, 0.0, 1.0, 1.0]
    # starts with <think>...</think>: rows 0, 2, 3; row 1 has no tag
    assert scored.columns["trl.rewards:think_format_reward"].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert scored.rewards.tolist() == [1.5, 0.0, 1.5, 1.5]
    assert scored.failures == {"trl.rewards:accuracy_reward": 0, "trl.rewards:think_format_reward": 0}


def test_what_a_reward_receives(problems, batch, tokenizer):
    text = reward_inputs(batch, problems, conversational=False)
    chat = reward_inputs(batch, problems, conversational=True)
    # text: the templated prompt the engine conditioned on, repeated per completion
    assert text["prompts"] == [batch.prompt_texts[0]] * 2 + [batch.prompt_texts[1]] * 2
    assert text["prompts"][0].startswith("<|im_start|>system\nThink, then answer.<|im_end|>")
    assert text["completions"] == COMPLETIONS
    # conversational: TRL's shapes
    assert chat["prompts"][0] == ROWS[0]["prompt"] and chat["prompts"][3] == ROWS[1]["prompt"]
    assert chat["completions"][1] == [{"role": "assistant", "content": "The answer is \\boxed{8}."}]
    # both: token ids of each completion, its length, the reference and every column of the row
    for form in (text, chat):
        assert form["completion_ids"] == [tokenizer(c, add_special_tokens=False).input_ids for c in COMPLETIONS]
        assert form["completion_lengths"] == [len(i) for i in form["completion_ids"]]
        assert form["answer"] == ["7", "7", "10", "10"] and form["ground_truth"] == ["7", "7", "10", "10"]
        assert form["prompt"][0] == ROWS[0]["prompt"]  # the messages column itself, as a row field


def test_completion_ids_are_passed(problems, batch, tokenizer):
    scored = score_rollouts(batch, problems, _functions({"name": "test_trl_rewards:token_count"}))
    expected = [float(len(tokenizer(c, add_special_tokens=False).input_ids)) for c in COMPLETIONS]
    assert scored.rewards.tolist() == expected and min(expected) > 5


def test_trainer_state_is_not_passed_and_says_so(problems, batch, caplog):
    """Documented in docs/from_trl.md: rlkit passes no `trainer_state`; a reward requiring it
    fails on every call, counted and logged with Python's own message, and scores 0."""
    with caplog.at_level(logging.WARNING):
        scored = score_rollouts(batch, problems, _functions({"name": "test_trl_rewards:shaped_by_step"}))
    assert scored.failures == {"test_trl_rewards:shaped_by_step": 1} and scored.rewards.tolist() == [0.0] * 4
    assert "missing 1 required positional argument: 'trainer_state'" in caplog.text


def test_a_reward_cannot_change_the_next_ones_inputs(problems, batch):
    def greedy(completions, **kwargs):
        completions.clear()  # a careless reward emptying its list in place
        return [0.0] * 4

    second = RewardFunction("len", reward_len)
    scored = score_rollouts(batch, problems, [RewardFunction("greedy", greedy), second])
    assert scored.columns["len"].tolist() == [-30.0, -4.0, -27.0, -11.0]


# ----------------------------------------------------------------------------- docs/from_trl.md


DOC = Path(__file__).resolve().parents[2] / "docs/from_trl.md"


def test_from_trl_config_validates(tmp_path):
    """The page's "after" config is a valid recipe (its data file written here; the model is a hub id,
    checked only when it loads)."""
    text = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    raw = yaml.safe_load(text)
    raw["data"]["path"] = str(tmp_path / raw["data"]["path"])
    Path(raw["data"]["path"]).write_text(json.dumps(ROWS[0]) + "\n")
    cfg = config_from_dict(raw)
    assert cfg.rollout.prompts_per_step * cfg.rollout.group_size == 16 * 1 * 4  # TRL's 64 completions
    assert [(r.name, r.weight, r.conversational) for r in cfg.rewards] == [
        ("trl.rewards:accuracy_reward", 1.0, True), ("trl.rewards:think_format_reward", 0.2, True)]


def test_from_trl_table_names_real_grpo_config_fields():
    """Every TRL field in the mapping table's first column is a field of the installed GRPOConfig,
    except `max_prompt_length`, which the page says TRL 1.16 no longer has."""
    import dataclasses

    from trl import GRPOConfig

    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    table = DOC.read_text().split("## GRPOConfig fields", 1)[1].split("\n## ", 1)[0]
    named = {name for line in table.splitlines() if line.startswith("| `")
             for name in re.findall(r"(?<!\()`([a-z_0-9]+)`", line.split("|")[1])}  # not "(`default`)"
    assert len(named) > 60
    assert named - fields == {"max_prompt_length"}
