"""Prompt datasets for RL: problems with reference answers, and resumable prompt samplers."""

from rlkit.data.datasets import Problem, PromptSampler, drop_long_prompts, load_problems
from rlkit.data.samplers import (
    SAMPLERS,
    Sampler,
    UniformSampler,
    VADESampler,
    build_sampler,
    register_sampler,
)

__all__ = [
    "SAMPLERS",
    "Problem",
    "PromptSampler",
    "Sampler",
    "UniformSampler",
    "VADESampler",
    "build_sampler",
    "drop_long_prompts",
    "load_problems",
    "register_sampler",
]
