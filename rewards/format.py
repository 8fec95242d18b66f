"""Format rewards: does the completion follow the requested shape?"""

from __future__ import annotations

import re

from rewards import register_reward

_BOXED = re.compile(r"\\boxed\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})+\}")  # braces nest 2 deep: \frac{\sqrt{2}}{2}
_THINK = re.compile(r"^\s*<think>.*?</think>\s*\S", re.DOTALL)


@register_reward("boxed_format")
def boxed_format(prompts, completions, **_) -> list[float]:
    """1.0 when the completion contains a `\\boxed{...}` answer."""
    return [1.0 if _BOXED.search(c) else 0.0 for c in completions]


@register_reward("think_format")
def think_format(prompts, completions, **_) -> list[float]:
    """1.0 when the completion opens with a `<think>...</think>` block followed by an answer."""
    return [1.0 if _THINK.match(c) else 0.0 for c in completions]


@register_reward("only_number")
def only_number(prompts, completions, **_) -> list[float]:
    """1.0 when the completion is a single number and nothing else (the arithmetic task's format)."""
    return [1.0 if re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*\.?\s*", c) else 0.0 for c in completions]
