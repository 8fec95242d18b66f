"""`reasoning_gym`: score a completion with the reasoning-gym task's own verifier.

For `data.name: reasoning_gym` (rlkit/data/reasoning_gym.py), whose problems carry `entry`
(reasoning-gym's item), `task` and `task_params`. The verifier is the task's
`score_answer(answer, entry)`, in [0, 1]; some tasks give partial credit (the default one:
len(reference) / len(answer) when the answer contains the reference), and only 1.0 counts as
correct in `rollout/accuracy` and `eval/accuracy`.

Which part of the completion is the answer: the content of the last `<answer>...</answer>`
pair when the completion has one (reasoning-gym's own prompt format); otherwise each of the
whole completion (stripped), its last non-empty line and its last word, that word also without
the punctuation around it, is scored, and the best score is the reward. A small model answers
"The GCD is 4." as often as "4": the bare last word catches the first (most tasks compare
strings exactly, so "4." alone scores 0.5 at best), the whole text the second, the last line a
final line after some working.
"""

from __future__ import annotations

import re

from rewards import register_reward

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_PUNCTUATION = ".,;:!?*\"'`()[]$"  # stripped from both ends of the last word ("4." -> "4"); never '-'


def answer_candidates(completion: str) -> list[str]:
    """The strings tried as the answer, in order (duplicates and empty ones removed)."""
    tagged = _ANSWER_TAG.findall(completion)
    if tagged:
        return [tagged[-1].strip()]
    text = completion.strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last_line = lines[-1] if lines else ""
    words = text.split()
    last_word = words[-1] if words else ""
    out: list[str] = []
    for cand in (text, last_line, last_word, last_word.strip(_PUNCTUATION)):
        if cand and cand not in out:
            out.append(cand)
    return out


@register_reward("reasoning_gym")
def reasoning_gym(prompts, completions, entry, task, task_params, **_) -> list[float]:
    """The best `score_answer` of the task over the completion's answer candidates; 0.0 when
    there is no candidate (an empty completion)."""
    from rlkit.data.reasoning_gym import score_answer

    out = []
    for completion, e, name, params in zip(completions, entry, task, task_params, strict=True):
        scores = [score_answer(c, e, name, params) for c in answer_candidates(completion)]
        out.append(max(scores, default=0.0))
    return out
