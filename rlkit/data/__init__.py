"""Prompt datasets for RL: problems with reference answers, and a resumable sampler."""

from rlkit.data.datasets import Problem, PromptSampler, load_problems

__all__ = ["Problem", "PromptSampler", "load_problems"]
