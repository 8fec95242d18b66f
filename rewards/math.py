"""Correctness rewards for math answers.

- `exact_number`: the last number in the completion equals the reference number. Fast, no
  parsing library; the right reward for the synthetic arithmetic task.
- `math_accuracy`: `math-verify` parses both sides (LaTeX, \\boxed{}, fractions, plain numbers)
  and checks equivalence; falls back to `exact_number` when the gold answer is a plain number
  that math-verify cannot find in the completion.
"""

from __future__ import annotations

import re

from rewards import register_reward

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in `text` (commas dropped), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "")


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a.strip() == b.strip()


@register_reward("exact_number")
def exact_number(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the completion's last number equals the reference answer, else 0.0."""
    out = []
    for completion, gold in zip(completions, answer, strict=True):
        pred = last_number(completion)
        out.append(1.0 if pred is not None and _same_number(pred, str(gold)) else 0.0)
    return out


@register_reward("math_accuracy")
def math_accuracy(prompts, completions, answer, **_) -> list[float | None]:
    """1.0 when math-verify judges the completion's answer equivalent to the reference."""
    from math_verify import parse, verify

    out: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_text = str(gold)
        gold_parsed = parse(gold_text if "$" in gold_text or "\\" in gold_text else f"${gold_text}$")
        if not gold_parsed:
            out.append(None)  # reference unparseable: no opinion, counted in the logs
            continue
        pred = parse(completion)
        ok = bool(pred) and verify(gold_parsed, pred)
        if not ok and not pred:
            # Nothing math-verify recognises as an answer (a bare "7" is common): fall back to
            # the last number. Only then: a wrong \boxed{8} followed by "... = 7" stays wrong.
            num = last_number(completion)
            ok = num is not None and _same_number(num, gold_text)
        out.append(1.0 if ok else 0.0)
    return out
