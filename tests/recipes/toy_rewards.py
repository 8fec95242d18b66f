"""Rewards for recipe tests on a random tiny model, whose completions are noise.

`first_token_parity` varies within every group (about half the rows score 1), so the
advantages are non-zero and every step really updates the model.
"""


def char_parity(prompts, completions, **_):
    return [float(len(c) % 2) for c in completions]
