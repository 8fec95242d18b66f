"""Helper script of test_offload.py: one ZeRO-2 policy update of a fixed rollout batch, built
the way the recipe builds it (`build_accelerator`, `build_policy`) with the given
`trainer.offload`; with `discard`, first a step whose last micro-batch loss is NaN (discarded
after the earlier micro-batches were accumulated). Saves the parameters after the update.

    accelerate launch ... offload_update.py OUT_FILE OFFLOAD [discard]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from rank_update import B, G, T, full_batch

from rlkit.algorithms.losses import build_loss
from rlkit.assets import tiny_model_dir
from rlkit.config import load_config
from rlkit.trainer.deepspeed import build_accelerator, build_policy
from rlkit.trainer.update import ForwardSettings, policy_update


def main(out: Path, offload: str, discard: bool) -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "recipes/configs/grpo_math_cpu.yaml",
                      [f"model.name_or_path={tiny_model_dir()}", "model.dtype=float32", f"trainer.offload={offload}",
                       "trainer.learning_rate=1e-2", "trainer.weight_decay=0.1"])  # decay: AdamW, not L2 Adam
    accelerator = build_accelerator(cfg.trainer, cfg.model, [], str(out.parent))
    torch.manual_seed(0)
    policy = build_policy(accelerator, str(tiny_model_dir()), cfg.model, cfg.trainer)
    zero = policy.model.optimizer
    print(f"optimizer: {type(zero.optimizer).__name__} cpu_offload={zero.cpu_offload}", flush=True)
    batch = full_batch()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -1.5, -1.0, 1.0])
    fs = ForwardSettings(temperature=1.0, chunk_size=16, pad_id=0, shared_prefix=True, micro_batch_tokens=12,
                         gen_budget=T)
    loss = build_loss("grpo")
    if discard:
        bad = adv.clone()
        bad[B * G - 1] = float("nan")  # the last row: the earlier micro-batches accumulate first
        res = policy_update(policy, loss, batch, bad, old_logprobs=None, fs=fs, num_iterations=1, mini_batches=1)
        assert res.applied_steps == 0, res.applied_steps
    res = policy_update(policy, loss, batch, adv, old_logprobs=None, fs=fs, num_iterations=1, mini_batches=1)
    assert res.applied_steps == 1, res.applied_steps
    torch.save({k: v.detach().cpu().clone() for k, v in policy.unwrapped().state_dict().items()}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["discard"])
