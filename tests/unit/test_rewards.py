"""Reward functions against hand-checked values, and the registry's errors."""

from __future__ import annotations

import pytest

import rewards
from rewards import available_rewards, get_reward, register_reward
from rewards.math import last_number


def _call(name: str, completions: list[str], **fields) -> list:
    return get_reward(name)([""] * len(completions), completions, **fields)


# ----------------------------------------------------------------------------- exact_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 4 = 7", "7"),  # last number, not the first
        ("The total is 1,234 apples.", "1234"),  # thousands separators dropped
        ("It drops to -5 degrees", "-5"),
        ("pi is about 3.14", "3.14"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_exact_number_hand_values():
    completions = ["3 + 4 = 7", "The answer is 1,234.", "-5", "seven", "7.0", "77", "8"]
    answers = ["7", "1234", "-5", "7", "7", "7", 8]  # gold may be an int column
    # 7==7; 1234==1234 after comma removal; -5==-5; no number; 7.0==7 numerically; 77!=7; "8"==8
    assert _call("exact_number", completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_exact_number_rejects_misaligned_answers():
    with pytest.raises(ValueError):
        _call("exact_number", ["1", "2"], answer=["1"])


# ----------------------------------------------------------------------------- math_accuracy


def test_math_accuracy_hand_values():
    completions = [
        "so the answer is \\boxed{42}.",  # boxed, right
        "\\boxed{41}",  # boxed, wrong
        "3 + 4 = 7",  # plain number at the end (the last_number fallback)
        "The answer is 0.5",  # 1/2 == 0.5: math-verify checks equivalence
        "$\\frac{2}{4}$",  # 2/4 == 1/2
        "\\boxed{\\frac{1}{2}}",  # a boxed fraction against a decimal gold
        "I don't know",  # no answer at all
        "The total is 1,234",  # thousands separator against a plain gold
    ]
    answers = ["42", "42", "7", "1/2", "\\frac{1}{2}", "0.5", "3", "1234"]
    assert _call("math_accuracy", completions, answer=answers) == [
        1.0,
        0.0,
        1.0,
        1.0,
        1.0,
        1.0,
        0.0,
        1.0,
    ]


def test_math_accuracy_unparseable_gold_is_no_opinion():
    # An empty reference cannot be judged: None ("no opinion"), not a 0 that punishes the policy.
    assert _call("math_accuracy", ["\\boxed{3}"], answer=[""]) == [None]


def test_math_accuracy_wrong_boxed_answer_is_not_rescued_by_a_later_number():
    assert _call("math_accuracy", ["\\boxed{8}. Check: 3 + 4 = 7"], answer=["7"]) == [0.0]


# ----------------------------------------------------------------------------- format rewards


def test_boxed_format():
    completions = [
        "answer: \\boxed{7}",
        "\\boxed{\\frac{1}{2}}",  # one level of nested braces
        "\\boxed{\\frac{\\sqrt{2}}{2}}",  # two levels
        "\\boxed{}",  # empty box
        "boxed{7}",  # no backslash
        "\\boxed{7",  # unclosed
        "7",
    ]
    assert _call("boxed_format", completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_think_format():
    completions = [
        "<think>3 + 4</think> 7",
        "  <think>\nmulti\nline\n</think>\nThe answer is 7",  # leading space, newlines inside
        "<think>3 + 4</think>",  # no answer after the block
        "7 <think>late</think> 7",  # block not at the start
        "<think>unclosed 7",
        "7",
    ]
    assert _call("think_format", completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_only_number():
    completions = ["7", " -12 ", "3.5", "7.", "7\n", "The answer is 7", "7 apples", "", "1,234"]
    assert _call("only_number", completions) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- overlong_penalty


def test_overlong_penalty_dapo_ramp():
    # DAPO eq. 13 with L_max = 10, L_cache = 4: free up to 10 - 4 = 6 tokens, then
    # (6 - n) / 4 down to -1 at 10 tokens, -1 beyond.
    #   n=0,6 -> 0;  n=7 -> (6-7)/4 = -0.25;  n=8 -> -0.5;  n=9 -> -0.75;  n=10 -> -1;  n=50 -> -1
    lengths = [0, 6, 7, 8, 9, 10, 50]
    out = get_reward("overlong_penalty")(
        [""] * 7, [""] * 7, completion_lengths=lengths, max_len=10, cache_len=4
    )
    assert out == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0]


def test_overlong_penalty_cache_equal_to_max_len():
    # L_cache = L_max = 4: the ramp starts at 0 tokens: n=1 -> -1/4, n=2 -> -2/4.
    out = get_reward("overlong_penalty")(
        [""] * 3, [""] * 3, completion_lengths=[0, 1, 2], max_len=4, cache_len=4
    )
    assert out == [0.0, -0.25, -0.5]


@pytest.mark.parametrize("cache_len", [0, -1, 11])
def test_overlong_penalty_bad_params(cache_len):
    with pytest.raises(
        ValueError, match=f"need 0 < cache_len <= max_len, got cache_len={cache_len}, max_len=10"
    ):
        get_reward("overlong_penalty")(
            [""], [""], completion_lengths=[3], max_len=10, cache_len=cache_len
        )


# ----------------------------------------------------------------------------- registry


def test_builtins_are_registered():
    assert set(available_rewards()) >= {
        "exact_number",
        "math_accuracy",
        "boxed_format",
        "think_format",
        "only_number",
        "overlong_penalty",
    }
    assert get_reward("exact_number").reward_name == "exact_number"


def test_unknown_reward_lists_known_ones():
    with pytest.raises(ValueError) as info:
        get_reward("exact_numbr")
    msg = str(info.value)
    assert msg.startswith("unknown reward 'exact_numbr'; did you mean 'exact_number'? Registered: ")
    assert "exact_number" in msg and "math_accuracy" in msg and "overlong_penalty" in msg


def test_import_path():
    from rewards.math import exact_number

    assert get_reward("rewards.math:exact_number") is exact_number
    assert get_reward("rewards.format:only_number")([""], ["12"]) == [1.0]


def test_import_path_bad_module():
    with pytest.raises(
        ValueError, match=r"reward 'no_such_pkg\.mod:fn': cannot import module 'no_such_pkg\.mod'"
    ):
        get_reward("no_such_pkg.mod:fn")


def test_import_path_bad_function():
    with pytest.raises(
        ValueError,
        match=r"reward 'rewards\.math:nope': module 'rewards\.math' has no attribute 'nope'",
    ):
        get_reward("rewards.math:nope")
    # A non-callable attribute is no reward either.
    with pytest.raises(TypeError, match="reward 'rewards.math:_NUMBER' is re.compile.*, not a function"):
        get_reward("rewards.math:_NUMBER")


def test_register_and_duplicate_name(monkeypatch):
    monkeypatch.setattr(rewards.REWARDS, "_entries", dict(rewards.REWARDS._entries))

    @register_reward("unit_test_const")
    def const(prompts, completions, **_):
        return [0.5] * len(completions)

    assert "unit_test_const" in available_rewards()
    assert get_reward("unit_test_const")([""], ["x"]) == [0.5]
    register_reward("unit_test_const")(const)  # the same function again is fine (re-import)

    with pytest.raises(ValueError, match="reward 'unit_test_const' is already registered by"):

        @register_reward("unit_test_const")
        def other(prompts, completions, **_):
            return [0.0] * len(completions)
