"""Answer extractors and answer-cluster ids, on hand-made completions."""

import pytest
import torch

from rlkit.algorithms.advantages import copo
from rlkit.algorithms.answers import (
    ANSWER_EXTRACTORS,
    UnknownNameError,
    answer_ids,
    available_answer_extractors,
    get_answer_extractor,
    last_number_answer,
    math_verify_answer,
)


def ids(x):
    return torch.tensor(x, dtype=torch.long)


def test_builtins_are_registered():
    assert available_answer_extractors() == ["last_number", "math_verify"]
    assert get_answer_extractor("last_number") is last_number_answer
    assert get_answer_extractor("math_verify").extractor_name == "math_verify"
    assert get_answer_extractor("rlkit.algorithms.answers:last_number_answer") is last_number_answer


def test_unknown_extractor_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="unknown answer extractor 'last_numbr'; did you mean 'last_number'"):
        ANSWER_EXTRACTORS.get("last_numbr")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 4 = 7", "7"),
        ("3 + 4 = 7.0", "7"),  # one key for 7.0 and 7
        ("The answer is 007.", "7"),
        ("about 0.50 of it", "0.5"),
        ("-0.0", "0"),
        ("a total of 1,234 apples", "1234"),
        ("first 3, then -12.25", "-12.25"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text, expected):
    assert last_number_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{7}", "7"),
        ("so the answer is \\boxed{7.0}", "7"),
        ("The answer is $\\frac{1}{2}$", "1/2"),
        ("I am not sure.", None),
    ],
)
def test_math_verify(text, expected):
    assert math_verify_answer(text) == expected


def test_answer_ids_share_within_a_group_only():
    completions = [
        "7", "it is 7.0", "no idea", "8",  # group 0: 7, 7, None, 8
        "7", "hmm", "hmm", "so 7",  # group 1: 7, None, None, 7
    ]
    got = answer_ids(completions, ids([0, 0, 0, 0, 1, 1, 1, 1]), "last_number")
    # Row 1 joins row 0; the unparseable rows 2, 5, 6 each keep their own id; row 4's "7" is a
    # new cluster (another prompt) and row 7 joins it.
    assert got.tolist() == [0, 0, 2, 3, 4, 5, 6, 4]
    assert got.dtype == torch.long
    # A function works as well as a name; arbitrary group ids are fine.
    assert answer_ids(completions, ids([5] * 4 + [2] * 4), last_number_answer).tolist() == got.tolist()


def test_answer_ids_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="3 completions but 2 group ids"):
        answer_ids(["1", "2", "3"], ids([0, 0]), "last_number")


def test_answer_ids_feed_copo():
    # Four distinct answers in group 0 (H = ln 4), one shared answer in group 1 (H = 0).
    completions = ["1", "2", "3", "4", "5", "5.0", "five is 5", "5"]
    group_ids = ids([0] * 4 + [1] * 4)
    answers = answer_ids(completions, group_ids, "last_number")
    assert answers.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1])
    assert copo(rewards, group_ids, answers=answers).shape == (8,)
