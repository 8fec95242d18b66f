"""Reward functions: one registry, one calling convention.

Every reward is a plain function `fn(prompts, completions, **row_fields) -> list[float | None]`
(the signature TRL uses, so TRL reward functions work unchanged). `row_fields` carries the
dataset columns of each row as lists aligned with `completions` (e.g. `answer=[...]`).
`None` means "no opinion" (counted as 0 in the sum, and counted in the logs).

Register with `@register_reward("name")`; a recipe names it in YAML, or points at any
function with `pkg.module:function`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

RewardFn = Callable[..., list]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward '{name}' is already registered by {_REGISTRY[name].__module__}")
        _REGISTRY[name] = fn
        fn.reward_name = name  # type: ignore[attr-defined]
        return fn

    return deco


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """A registered reward by name, or any function by import path `pkg.module:function`."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"reward '{name}': cannot import module '{module_name}': {exc}") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"reward '{name}': module '{module_name}' has no function '{attr}'")
        return fn
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward '{name}'. Known rewards: {', '.join(available_rewards())}")
    return _REGISTRY[name]


from rewards import format, length, math  # noqa: E402,F401  (registers the built-ins)
