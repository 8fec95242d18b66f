"""Small hand-made inputs shared by the trainer unit tests (importable: `tests` is on pytest's path)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlkit.rollout.types import RolloutBatch
from rlkit.trainer.deepspeed import Policy

B, G, T = 2, 4, 6  # prompts, group size, completion length of `tiny_batch`


def tiny_batch(seed: int = 0, rewards: torch.Tensor | None = None) -> RolloutBatch:
    """2 prompts x 4 rows, completion lengths 6, 3, 1, 5, 2, 6, 4, 3, random ids."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([6, 3, 1, 5, 2, 6, 4, 3])
    mask = torch.arange(T)[None] < lens[:, None]  # [N, T]
    ids = torch.randint(5, 200, (B * G, T), generator=g) * mask
    return RolloutBatch(
        prompt_ids=[[1, 2, 3, 4], [5, 6, 7]], prompt_texts=["p0", "p1"], completion_ids=ids,
        completion_mask=mask, engine_logprobs=torch.zeros(B * G, T),
        group_ids=torch.arange(B).repeat_interleave(G), prompt_index=torch.arange(B).repeat_interleave(G),
        completion_texts=["7", "8", "seven", "7.", "x", "3", "4", "3"], finish_reason=["stop"] * 8,
        rewards=rewards,
    )


def tiny_llama() -> LlamaForCausalLM:
    """A 2-layer random Llama (vocab 256, hidden 32), seeded."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def sgd_policy(model: torch.nn.Module) -> Policy:
    """`model` behind plain SGD (lr 1) and a constant schedule, without DeepSpeed."""
    from accelerate import Accelerator

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return Policy(Accelerator(cpu=True), model, opt, sched, autocast_dtype=None, max_grad_norm=None)
