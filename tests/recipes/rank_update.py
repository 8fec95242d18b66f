"""Helper script of test_rank_invariance.py: one `policy_update` of a fixed rollout batch under
`accelerate launch` with 1 or 2 DeepSpeed ZeRO-2 ranks, parameters saved after each update.

Each rank keeps its share of the prompts (`rank_shard`, as the recipe does). Plain SGD (lr 1)
so the saved update *is* the averaged gradient: Adam's first step is ~lr * sign(g) and would
hide a wrong normaliser.

    accelerate launch ... rank_update.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlkit.algorithms.losses import build_loss
from rlkit.assets import tiny_model_dir
from rlkit.config import load_config
from rlkit.rollout.types import RolloutBatch
from rlkit.trainer.deepspeed import Policy, build_accelerator, load_causal_lm
from rlkit.trainer.distributed import rank_shard
from rlkit.trainer.update import ForwardSettings, policy_update

LOSSES = ("dapo", "grpo", "dr_grpo")  # token_mean, seq_mean_token_mean, seq_mean_token_sum_norm
B, G, T = 4, 2, 8


def full_batch() -> RolloutBatch:
    """4 prompts x 2 rows. Prompts 0 and 2 (rank 0 of 2) have long completions, 1 and 3 short:
    the ranks hold 26 and 6 completion tokens."""
    lens = torch.tensor([8, 7, 1, 2, 6, 5, 1, 2])
    mask = torch.arange(T)[None] < lens[:, None]  # [N, T]
    ids = torch.randint(5, 200, (B * G, T), generator=torch.Generator().manual_seed(0)) * mask
    return RolloutBatch(
        prompt_ids=[[1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]], prompt_texts=["p0", "p1", "p2", "p3"],
        completion_ids=ids, completion_mask=mask, engine_logprobs=torch.zeros(B * G, T),
        group_ids=torch.arange(B).repeat_interleave(G), prompt_index=torch.arange(B).repeat_interleave(G),
        completion_texts=[""] * (B * G), finish_reason=["stop"] * (B * G),
    )


def main(out: Path) -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes/configs/grpo_math_cpu.yaml",
                      [f"model.name_or_path={tiny_model_dir()}", "trainer.max_grad_norm=null", "model.dtype=float32"])
    accelerator = build_accelerator(cfg.trainer, cfg.model, [], str(out))
    torch.manual_seed(0)
    model = load_causal_lm(str(tiny_model_dir()))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    policy = Policy(accelerator, model, opt, sched, autocast_dtype=None)

    full = full_batch()
    groups = rank_shard(list(range(B)), accelerator.process_index, accelerator.num_processes)
    batch = full.select_groups(groups)
    adv_full = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -1.5, -1.0, 1.0])
    adv = adv_full[full.group_rows(groups)]
    fs = ForwardSettings(temperature=1.0, chunk_size=16, pad_id=0, shared_prefix=True, micro_batch_tokens=12,
                         gen_budget=T)
    for name in LOSSES:
        policy_update(policy, build_loss(name), batch, adv, old_logprobs=None, fs=fs, num_iterations=1,
                      mini_batches=1)
        if accelerator.is_main_process:
            state = {k: v.detach().cpu().clone() for k, v in policy.unwrapped().state_dict().items()}
            torch.save(state, out / f"after_{name}.pt")
        accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
