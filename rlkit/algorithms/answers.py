"""Answer extractors: completion text -> a canonical final-answer key, or None.

Estimators that compare *what* the responses answered, not only whether they were right
(COPO's answer-cluster entropy), declare `needs_answers=True` and receive `answers` [N] long
cluster ids, built here by `answer_ids` from the completions and an extractor named in
`advantage.answer_extractor`:

    fn(text: str) -> str | None      # None: no answer found (the row gets a cluster of its own)

Two completions answer alike when their keys are equal strings, so an extractor normalises
what it can ("7.0" and "7" -> "7"). Clustering is by key, not by mathematical equivalence
("1/2" and "0.5" stay two clusters). Register with `@register_answer_extractor("name")`, or
name any function by import path `pkg.module:function`.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import torch
from torch import Tensor

from rewards.math import last_number as _last_number
from rlkit.registry import Registry, UnknownNameError

__all__ = [
    "ANSWER_EXTRACTORS",
    "UnknownNameError",
    "answer_ids",
    "available_answer_extractors",
    "get_answer_extractor",
    "last_number_answer",
    "math_verify_answer",
    "register_answer_extractor",
]

Extractor = Callable[[str], "str | None"]

ANSWER_EXTRACTORS: Registry[Extractor] = Registry("answer extractor", name_attr="extractor_name")


def register_answer_extractor(name: str) -> Callable[[Extractor], Extractor]:
    return ANSWER_EXTRACTORS.register(name)


def available_answer_extractors() -> list[str]:
    return ANSWER_EXTRACTORS.names()


def get_answer_extractor(name_or_path: str) -> Extractor:
    """A registered extractor, or any function by import path `pkg.module:function`."""
    return ANSWER_EXTRACTORS.get(name_or_path)


def _number_key(text: str) -> str:
    """A decimal number in one spelling ("7.0", "07", "7" -> "7"; "0.50" -> "0.5");
    anything else unchanged."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return text
    if not value.is_finite():
        return text
    if value == value.to_integral_value():
        return str(int(value))  # also turns "-0" into "0"
    return format(value.normalize(), "f")


@register_answer_extractor("last_number")
def last_number_answer(text: str) -> str | None:
    """The last number written in the text (commas dropped, as the `exact_number` reward reads
    it), normalised so that "7.0" and "7" are one key; None when there is no number."""
    found = _last_number(text)
    return None if found is None else _number_key(found)


@register_answer_extractor("math_verify")
def math_verify_answer(text: str) -> str | None:
    """math-verify's reading of the completion (LaTeX, \\boxed{}, plain expressions), as the
    `math_accuracy` reward parses it: the string of the first parsed item, numbers normalised
    as by `last_number`; None when nothing parses."""
    from math_verify import parse

    parsed = parse(text)
    if not parsed:
        return None
    return _number_key(str(parsed[0]))


def answer_ids(completions: list[str], group_ids: Tensor, extractor: str | Extractor) -> Tensor:
    """Answer-cluster ids [N] long for `completions` (one per row, aligned with group_ids [N]).

    Rows of one group whose extracted keys are equal share an id; rows of different groups
    never do; a row whose answer does not parse (None) gets an id no other row has.
    `extractor` is a registered name, an import path, or the function itself.
    """
    fn = get_answer_extractor(extractor) if isinstance(extractor, str) else extractor
    groups = group_ids.tolist()
    if len(completions) != len(groups):
        raise ValueError(f"answer_ids: {len(completions)} completions but {len(groups)} group ids")
    seen: dict[tuple[int, str], int] = {}
    out: list[int] = []
    for text, group in zip(completions, groups, strict=True):
        key = fn(text)
        if key is not None and (group, key) in seen:
            out.append(seen[(group, key)])
            continue
        new_id = len(out)  # the row's own index: no earlier row can hold it
        if key is not None:
            seen[(group, key)] = new_id
        out.append(new_id)
    return torch.tensor(out, dtype=torch.long, device=group_ids.device)
