"""Rewards for recipe tests on a random tiny model, whose completions are noise.

`char_parity` varies within every group (about half the rows score 1), so the
advantages are non-zero and every step really updates the model.
"""


def char_parity(prompts, completions, **_):
    return [float(len(c) % 2) for c in completions]


def constant(prompts, completions, **_):
    """Every row scores 1: every group is saturated, every advantage 0, so no gradient."""
    return [1.0] * len(completions)


def zero(prompts, completions, **_):
    """Every row scores 0: every group all wrong (zero advantages; every prompt is 'hard')."""
    return [0.0] * len(completions)
