"""Rollout: sample groups of completions with their logprobs, and sync trainer weights in.

Light imports only: the engines import vLLM / transformers when constructed.
"""

from rlkit.rollout.engine import RolloutEngine, build_engine, render_prompts, vllm_available
from rlkit.rollout.types import RolloutBatch, SamplingConfig
from rlkit.rollout.weight_sync import trainer_weights_for_engine

__all__ = [
    "RolloutBatch",
    "RolloutEngine",
    "SamplingConfig",
    "build_engine",
    "render_prompts",
    "trainer_weights_for_engine",
    "vllm_available",
]
