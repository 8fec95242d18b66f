"""Problem sources (arithmetic, local jsonl/parquet through `datasets`) and the resumable sampler."""

from __future__ import annotations

import json

import pytest
from datafiles import write_jsonl

from rlkit.config import DataConfig
from rlkit.data.datasets import (
    ARITHMETIC_TEMPLATE,
    PromptSampler,
    arithmetic_problems,
    gsm8k_answer,
    load_problems,
)

# ----------------------------------------------------------------------------- arithmetic


def test_arithmetic_answers_are_sums_within_range():
    problems = arithmetic_problems(200, seed=3, lo=2, hi=5)
    for p in problems:
        a, b = p.fields["a"], p.fields["b"]
        assert 2 <= a <= 5 and 2 <= b <= 5
        assert p.answer == str(a + b)
        assert p.prompt == ARITHMETIC_TEMPLATE.format(a=a, b=b)
    # Both ends of the range are drawn (randint is inclusive).
    assert {p.fields["a"] for p in problems} == {2, 3, 4, 5}


def test_arithmetic_is_deterministic_per_seed():
    assert arithmetic_problems(50, seed=1) == arithmetic_problems(50, seed=1)
    assert arithmetic_problems(50, seed=1) != arithmetic_problems(50, seed=2)
    # A longer draw extends a shorter one (same stream), so num_train changes nothing before it.
    assert arithmetic_problems(80, seed=1)[:50] == arithmetic_problems(50, seed=1)


def test_arithmetic_train_and_eval_use_different_streams():
    cfg = DataConfig(name="arithmetic", num_train=40, num_eval=40, seed=7, max_operand=99)
    train, evals = load_problems(cfg)
    assert len(train) == 40 and len(evals) == 40
    assert train == arithmetic_problems(40, seed=7, lo=0, hi=99)
    assert evals != train[: len(evals)]
    # Same config twice -> same split.
    assert load_problems(cfg) == (train, evals)


# ----------------------------------------------------------------------------- local files




def test_jsonl_through_datasets(isolated_hf_cache):
    rows = [{"q": f"{i} + 1", "sol": i + 1, "level": i % 2} for i in range(10)]
    path = write_jsonl(isolated_hf_cache / "train.jsonl", rows)
    cfg = DataConfig(
        name="jsonl",
        path=str(path),
        prompt_field="q",
        answer_field="sol",
        prompt_template="Compute {q}. Level {level}.",
        num_eval=3,
    )
    train, evals = load_problems(cfg)
    # One local file: its last num_eval rows are held out, in file order.
    assert [p.prompt for p in train] == [f"Compute {i} + 1. Level {i % 2}." for i in range(7)]
    assert [p.prompt for p in evals] == [f"Compute {i} + 1. Level {i % 2}." for i in range(7, 10)]
    assert [p.answer for p in train + evals] == [str(i + 1) for i in range(10)]  # text, from `sol`
    assert train[0].fields == {"q": "0 + 1", "sol": 1, "level": 0}  # columns go to rewards


def test_jsonl_without_template_uses_prompt_field_and_caps_num_train(isolated_hf_cache):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    path = write_jsonl(isolated_hf_cache / "t.jsonl", rows)
    train, evals = load_problems(DataConfig(name="jsonl", path=str(path), num_eval=0, num_train=4))
    assert [p.prompt for p in train] == ["q0", "q1", "q2", "q3"]
    assert [p.answer for p in train] == ["a0", "a1", "a2", "a3"]
    assert evals == []


def test_parquet_through_datasets(isolated_hf_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = isolated_hf_cache / "t.parquet"
    pq.write_table(pa.table({"question": ["a", "b", "c"], "answer": ["1", "2", "3"]}), path)
    train, evals = load_problems(DataConfig(name="parquet", path=str(path), num_eval=1))
    assert [(p.prompt, p.answer) for p in train] == [("a", "1"), ("b", "2")]
    assert [(p.prompt, p.answer) for p in evals] == [("c", "3")]


def test_missing_column_names_the_config_field(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "t.jsonl", [{"problem": "1+1", "answer": "2"}])
    with pytest.raises(KeyError) as info:
        load_problems(DataConfig(name="jsonl", path=str(path), num_eval=0))
    msg = str(info.value)
    assert msg.startswith("data.prompt_field: the rows have no column 'question'; ")
    assert "dataset rows have columns ['answer', 'problem']; set data.prompt_field to one of them" in msg


def test_file_smaller_than_holdout_is_an_error(isolated_hf_cache):
    path = write_jsonl(isolated_hf_cache / "t.jsonl", [{"question": "x", "answer": "1"}] * 2)
    with pytest.raises(ValueError, match="produced no training problems"):
        load_problems(DataConfig(name="jsonl", path=str(path), num_eval=5))


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("The total is 1,234 dollars.\n#### 1,234", "1234"),
        ("#### -3", "-3"),
        ("####  5 ", "5"),
    ],
)
def test_gsm8k_answer_extraction(solution, expected):
    assert gsm8k_answer(solution) == expected


# ----------------------------------------------------------------------------- sampler


def test_sampler_epochs_cover_every_item_once():
    s = PromptSampler(10, seed=0)
    epochs = [s.next_indices(10) for _ in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(10))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    assert s.state_dict() == {"epoch": 2, "cursor": 10, "num_items": 10, "seed": 0}


def test_sampler_batches_straddle_epochs():
    s = PromptSampler(5, seed=1)
    flat = s.next_indices(3) + s.next_indices(3) + s.next_indices(4)  # 10 = two full epochs
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:]) == list(range(5))


def test_sampler_is_deterministic_per_seed():
    assert PromptSampler(20, seed=4).next_indices(30) == PromptSampler(20, seed=4).next_indices(30)
    assert PromptSampler(20, seed=4).next_indices(20) != PromptSampler(20, seed=5).next_indices(20)


@pytest.mark.parametrize("consumed", [0, 3, 7, 12])  # start, mid-epoch, epoch end, 2nd epoch
def test_sampler_resume_is_exact(consumed):
    reference = PromptSampler(7, seed=9)
    before = reference.next_indices(consumed) if consumed else []
    expected = reference.next_indices(16)

    first = PromptSampler(7, seed=9)
    assert (first.next_indices(consumed) if consumed else []) == before
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = PromptSampler(7, seed=9)
    resumed.load_state_dict(state)
    assert resumed.next_indices(16) == expected


@pytest.mark.parametrize(("num_items", "seed"), [(8, 9), (7, 1)])
def test_sampler_rejects_state_of_another_config(num_items, seed):
    state = PromptSampler(7, seed=9).state_dict()
    with pytest.raises(ValueError, match="the data config changed since the checkpoint"):
        PromptSampler(num_items, seed=seed).load_state_dict(state)


def test_sampler_needs_items():
    with pytest.raises(ValueError, match="at least one item"):
        PromptSampler(0, seed=0)


# ----------------------------------------------------------------------------- harder arithmetic

import re  # noqa: E402  (this section was appended; its imports stay with it)

from rlkit.config import ConfigError, config_from_dict  # noqa: E402
from rlkit.data.datasets import Problem, expression_value  # noqa: E402

# The first problems of the default config (seed 0), recorded before num_terms/operations
# existed: the defaults must keep giving exactly these.
DEFAULT_FIRST_TRAIN = [(6, 6), (0, 4), (8, 7), (6, 4), (7, 5)]
DEFAULT_FIRST_EVAL = [(9, 4), (0, 1), (0, 0), (4, 8), (5, 2)]


def test_default_config_problems_are_unchanged():
    train, evals = load_problems(DataConfig(num_train=5, num_eval=5))
    assert [(p.fields["a"], p.fields["b"]) for p in train] == DEFAULT_FIRST_TRAIN
    assert [(p.fields["a"], p.fields["b"]) for p in evals] == DEFAULT_FIRST_EVAL
    for p in train + evals:
        a, b = p.fields["a"], p.fields["b"]
        assert p == Problem(ARITHMETIC_TEMPLATE.format(a=a, b=b), str(a + b), {"a": a, "b": b, "demo": str(a + b)})


@pytest.mark.parametrize(
    ("terms", "ops", "value"),
    [
        ([23, 7, 4], ["+", "*"], 51),                # 23 + 28
        ([2, 3, 4, 5, 1], ["*", "-", "*", "+"], -13),  # 6 - 20 + 1
        ([10, 2, 3], ["-", "-"], 5),                  # left to right: (10 - 2) - 3
        ([2, 3, 4], ["*", "*"], 24),
        ([7, 0], ["*"], 0),
        ([4, 9], ["-"], -5),
    ],
)
def test_expression_value_hand_values(terms, ops, value):
    assert expression_value(terms, ops) == value


def test_harder_arithmetic_prompts_and_answers():
    problems = arithmetic_problems(300, seed=5, lo=1, hi=12, num_terms=3, operations=["+", "-", "*"])
    pattern = re.compile(r"What is (\d+) ([-+*]) (\d+) ([-+*]) (\d+)\? Answer with only the number\.")
    seen_ops = set()
    for p in problems:
        m = pattern.fullmatch(p.prompt)
        assert m, p.prompt
        a, op1, b, op2, c = m.groups()
        seen_ops |= {op1, op2}
        assert p.fields == {"a": int(a), "b": int(b), "c": int(c), "demo": p.answer}  # demo: the answer
        assert all(1 <= p.fields[k] <= 12 for k in "abc")
        assert p.answer == str(eval(f"{a} {op1} {b} {op2} {c}"))  # Python's own precedence as reference
    assert seen_ops == {"+", "-", "*"}
    assert any(int(p.answer) < 0 for p in problems)  # '-' can go below zero


def test_one_operation_is_never_drawn():
    # a single operation draws no operator, so operands are the default stream's
    products = arithmetic_problems(20, seed=3, operations=["*"])
    sums = arithmetic_problems(20, seed=3)
    assert [(p.fields["a"], p.fields["b"]) for p in products] == [(p.fields["a"], p.fields["b"]) for p in sums]
    assert products[0].prompt == f"What is {products[0].fields['a']} * {products[0].fields['b']}? Answer with only the number."


def test_load_problems_passes_the_task_settings():
    cfg = DataConfig(num_train=30, num_eval=10, seed=2, num_terms=4, operations=["-", "*"], min_operand=3, max_operand=7)
    train, evals = load_problems(cfg)
    assert train == arithmetic_problems(30, seed=2, lo=3, hi=7, num_terms=4, operations=["-", "*"])
    assert evals == arithmetic_problems(10, seed=10_002, lo=3, hi=7, num_terms=4, operations=["-", "*"])
    assert all(p.prompt.count(" - ") + p.prompt.count(" * ") == 3 for p in train)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_terms": 1}, "config error at data.num_terms: got 1; set it between 2 (a + b) and 26 (operands a to z)"),
        ({"num_terms": 27}, "config error at data.num_terms: got 27; set it between 2"),
        ({"operations": []}, "config error at data.operations: got [] (it is empty); set a non-empty subset of '+', '-', '*'"),
        ({"operations": ["+", "/"]}, "config error at data.operations: got ['+', '/'] (unknown ['/']); set a non-empty subset"),
        ({"operations": ["+", "+"]}, "config error at data.operations: got ['+', '+'] (an operator is listed twice)"),
    ],
)
def test_arithmetic_settings_are_validated(data, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"name_or_path": "smollm2-135m"}, "data": data})
    assert message in str(info.value)
