"""The rollout data contract: sampling settings in, one `RolloutBatch` out.

Every engine (vLLM, transformers, a remote server) returns the same `RolloutBatch`, so the
reward, advantage and loss stages never know which engine produced the rows. Shape letters
used in comments: B prompts, G group size, N = B*G rows, T = longest completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["SamplingConfig", "RolloutBatch", "FINISH_REASONS"]

FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class SamplingConfig:
    """How completions are sampled. Plain values: the recipe unpacks its pydantic config here.

    `temperature` also decides which distribution `engine_logprobs` describe: engines return
    the logprob of the sampled token under the *processed* distribution (logits / temperature,
    then top-k / top-p renormalisation), which is the distribution the token was drawn from.
    With `greedy=True` the temperature is 0 and the logprobs are those of the raw (T = 1)
    distribution, as no scaling is defined at T = 0.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = off
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # stop strings; the text is cut before them
    greedy: bool = False  # True = argmax decoding (temperature 0)
    # Keep sampling past EOS until max_new_tokens. For benchmarks (fixed-length rows); the
    # HF engine implements it by suppressing EOS, vLLM by not stopping on it.
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not self.greedy and self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 for sampling (got {self.temperature}); "
                "set greedy=True for argmax decoding"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def effective_temperature(self) -> float:
        """0.0 for greedy decoding, else `temperature`."""
        return 0.0 if self.greedy else self.temperature


@dataclass
class RolloutBatch:
    """N = B*G sampled completions, rows ordered group by group (b*G .. b*G+G-1 for prompt b)."""

    prompt_ids: list[list[int]]  # B templated prompt token ids
    prompt_texts: list[str]  # B templated prompt strings
    completion_ids: Tensor  # [N, T] long, right-padded with the pad id
    completion_mask: Tensor  # [N, T] bool, True = generated token (EOS included when it ended the row)
    engine_logprobs: Tensor  # [N, T] float32, logprob of the sampled token; 0 where mask is False
    group_ids: Tensor  # [N] long, b for every row of prompt b
    prompt_index: Tensor  # [N] long, index into prompt_ids
    completion_texts: list[str]  # N decoded completions (special tokens skipped, stop string cut)
    finish_reason: list[str]  # N of "stop" | "length" | "abort"
    rewards: Tensor | None = None  # [N], filled by the reward stage
    # The engine's weight version that sampled every row (0 = the weights it started with, +1
    # per weight sync); None for engines that do not count versions (the in-process ones).
    weight_version: int | None = None

    def __post_init__(self) -> None:
        n = self.completion_ids.shape[0]
        if self.completion_mask.shape != self.completion_ids.shape:
            raise ValueError("completion_mask must have the shape of completion_ids")
        if self.engine_logprobs.shape != self.completion_ids.shape:
            raise ValueError("engine_logprobs must have the shape of completion_ids")
        if not (len(self.completion_texts) == len(self.finish_reason) == n == self.group_ids.shape[0]):
            raise ValueError("per-row fields must all have N entries")
        if self.num_prompts and n % self.num_prompts:
            raise ValueError(f"N={n} rows is not a multiple of B={self.num_prompts} prompts")

    @property
    def num_prompts(self) -> int:
        """B."""
        return len(self.prompt_ids)

    @property
    def num_rows(self) -> int:
        """N = B*G."""
        return int(self.completion_ids.shape[0])

    @property
    def group_size(self) -> int:
        """G."""
        return self.num_rows // self.num_prompts if self.num_prompts else 0

    @property
    def completion_lengths(self) -> Tensor:
        """[N] long: generated tokens per row (EOS counted)."""
        return self.completion_mask.sum(-1)

    @classmethod
    def from_rows(
        cls,
        *,
        prompt_ids: list[list[int]],
        prompt_texts: list[str],
        group_size: int,
        token_ids: Sequence[Sequence[int]],
        logprobs: Sequence[Sequence[float]],
        texts: list[str],
        finish_reason: list[str],
        pad_id: int,
    ) -> RolloutBatch:
        """Pad per-row lists (N rows, ordered group by group) into the batch tensors.

        Every engine collects ragged rows; this is the one place they become [N, T] tensors,
        so padding and mask conventions cannot drift between engines.
        """
        n = len(prompt_ids) * group_size
        if not (len(token_ids) == len(logprobs) == len(texts) == len(finish_reason) == n):
            raise ValueError(f"expected {n} rows for B={len(prompt_ids)}, G={group_size}")
        t_max = max((len(r) for r in token_ids), default=0)
        ids = torch.full((n, t_max), pad_id, dtype=torch.long)  # [N, T]
        mask = torch.zeros((n, t_max), dtype=torch.bool)  # [N, T]
        lps = torch.zeros((n, t_max), dtype=torch.float32)  # [N, T]
        for i, (row, lp) in enumerate(zip(token_ids, logprobs, strict=True)):
            if len(row) != len(lp):
                raise ValueError(f"row {i}: {len(row)} tokens but {len(lp)} logprobs")
            k = len(row)
            if k:
                ids[i, :k] = torch.as_tensor(list(row), dtype=torch.long)
                lps[i, :k] = torch.as_tensor(list(lp), dtype=torch.float32)
                mask[i, :k] = True
        prompt_index = torch.arange(len(prompt_ids)).repeat_interleave(group_size)  # [N]
        return cls(
            prompt_ids=prompt_ids,
            prompt_texts=prompt_texts,
            completion_ids=ids,
            completion_mask=mask,
            engine_logprobs=lps,
            group_ids=prompt_index.clone(),
            prompt_index=prompt_index,
            completion_texts=texts,
            finish_reason=finish_reason,
        )

    def group_rows(self, groups: Sequence[int]) -> Tensor:
        """[k*G] long: the row indices of the given prompts, group by group, in the order given."""
        g = self.group_size
        return torch.tensor([b * g + j for b in groups for j in range(g)], dtype=torch.long)

    def select_groups(self, groups: Sequence[int]) -> RolloutBatch:
        """The rows of the given prompts (indices into this batch's B, in the order given),
        renumbered as prompts 0..k-1, padding trimmed to the longest kept row."""
        g = self.group_size
        rows = self.group_rows(groups)  # [k*G]
        t = int(self.completion_mask[rows].sum(-1).max()) if len(rows) else 0
        prompt_index = torch.arange(len(groups)).repeat_interleave(g)  # [k*G]
        return RolloutBatch(
            prompt_ids=[self.prompt_ids[b] for b in groups],
            prompt_texts=[self.prompt_texts[b] for b in groups],
            completion_ids=self.completion_ids[rows, :t],
            completion_mask=self.completion_mask[rows, :t],
            engine_logprobs=self.engine_logprobs[rows, :t],
            group_ids=prompt_index.clone(),
            prompt_index=prompt_index,
            completion_texts=[self.completion_texts[i] for i in rows.tolist()],
            finish_reason=[self.finish_reason[i] for i in rows.tolist()],
            rewards=None if self.rewards is None else self.rewards[rows],
            weight_version=self.weight_version,
        )

    @classmethod
    def concat(cls, batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
        """One batch of all prompts of `batches` (same group size), in order, re-padded to the
        longest row; prompts are renumbered 0..B-1. Its `weight_version` is the oldest of the
        batches' (None when any has none)."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        g = {b.group_size for b in batches if b.num_prompts}
        if len(g) > 1:
            raise ValueError(f"cannot concatenate batches of different group sizes {sorted(g)}")
        t = max(b.completion_ids.shape[1] for b in batches)

        def pad(x: Tensor, value) -> Tensor:
            return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

        n_prompts = sum(b.num_prompts for b in batches)
        prompt_index = torch.arange(n_prompts).repeat_interleave(g.pop() if g else 0)
        rewards = [b.rewards for b in batches]
        return cls(
            prompt_ids=[p for b in batches for p in b.prompt_ids],
            prompt_texts=[p for b in batches for p in b.prompt_texts],
            completion_ids=torch.cat([pad(b.completion_ids, pad_id) for b in batches]),
            completion_mask=torch.cat([pad(b.completion_mask, False) for b in batches]),
            engine_logprobs=torch.cat([pad(b.engine_logprobs, 0.0) for b in batches]),
            group_ids=prompt_index.clone(),
            prompt_index=prompt_index,
            completion_texts=[c for b in batches for c in b.completion_texts],
            finish_reason=[f for b in batches for f in b.finish_reason],
            rewards=None if any(r is None for r in rewards) else torch.cat(rewards),
            weight_version=_oldest_version(batches),
        )


def _oldest_version(batches: Sequence[RolloutBatch]) -> int | None:
    """The smallest weight version of `batches`, None when any batch has none."""
    versions = [b.weight_version for b in batches]
    return None if any(v is None for v in versions) else min(versions)
