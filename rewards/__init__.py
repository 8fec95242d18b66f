"""Reward functions: one registry, one calling convention.

Every reward is a plain function `fn(prompts, completions, **row_fields) -> list[float | None]`,
called with keyword arguments only, as TRL's GRPOTrainer calls its reward functions, so a TRL
reward (`fn(completions, **kwargs)` or `fn(prompts, completions, **kwargs)`) runs unchanged.
Each argument is a list with one entry per completion (`rlkit.trainer.collect.reward_inputs`):

- `prompts`, `completions`: text by default (the templated prompt the engine saw, the
  completion's text); with `conversational: true` in the reward's YAML entry, TRL's
  conversational form: message lists, and `[{"role": "assistant", "content": text}]` per
  completion;
- `completion_ids` (generated token ids), `completion_lengths`, `answer` (the reference,
  read with data.answer_format) and every other dataset column of the row.

`None` means "no opinion" (counted as 0 in the sum, and counted in the logs). TRL's
`trainer_state`, `log_extra` and `log_metric` are not passed (docs/from_trl.md).

Register with `@register_reward("name")`; a recipe names it in YAML, or points at any
function with `pkg.module:function`.
"""

from __future__ import annotations

from collections.abc import Callable

from rlkit.registry import Registry

RewardFn = Callable[..., list]

# Params of a reward are its named parameters other than `prompts, completions`: settings
# (keyword-only, e.g. overlong_penalty's max_len) and, in principle, dataset columns. The
# `**_` every reward takes for the other columns does not make any setting acceptable.
REWARDS: Registry[RewardFn] = Registry("reward", name_attr="reward_name", fixed=("prompts", "completions"))


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    return REWARDS.register(name)


def available_rewards() -> list[str]:
    return REWARDS.names()


def get_reward(name: str) -> RewardFn:
    """A registered reward by name, or any function by import path `pkg.module:function`."""
    return REWARDS.get(name)


from rewards import format, length, math, reasoning_gym  # noqa: E402,F401  (registers the built-ins)
