"""`accelerate launch --num_processes 2 recipes/grpo_math.py`: data-parallel ranks on CPU.

Two DeepSpeed ZeRO-2 ranks (gloo) on a tiny random Llama, each with its own rollout engine:
transformers, or in-process vLLM with vLLM's `external_launcher` backend (the two vLLM CPU
engines share this machine's cores, fine for a tiny model). What must hold:
the ranks split each step's prompts instead of duplicating them, metrics are combined over
ranks, the sharded eval runs, a checkpoint is written, and a prompt count that cannot be split
stops the launch with a message naming the field.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlkit.assets import tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _launch(run_dir: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "launch/accelerate/zero2_multi.yaml"), "--num_processes", "2",
        str(REPO / "recipes/grpo_math.py"), "--config", str(REPO / "recipes/configs/grpo_math_cpu.yaml"),
        f"model.name_or_path={tiny_model_dir()}", f"run.output_dir={run_dir}", "rollout.cpu_kvcache_gib=1",
        "rollout.prompts_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=6",
        "data.num_eval=6", "eval.every=0", "eval.max_new_tokens=4",
        "logging.progress=false", "logging.tensorboard=false", "trainer.learning_rate=1e-3",
        "trainer.max_steps=2", "trainer.checkpoint_every=2",
        'rewards=[{name: "toy_rewards:char_parity"}]', *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests/recipes")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("engine", "sampler"), [("hf", "uniform"), ("vllm", "uniform"), ("hf", "vade")])
def test_two_ranks_split_prompts_and_train(tmp_path, engine, sampler):
    """With the VADE sampler every rank updates its posteriors from the outcomes of all ranks;
    the recipe checks each step that both ranks hold the same sampler state (it raises if not),
    and identical states are what keep the 4 prompts distinct across ranks."""
    run = tmp_path / "run"
    proc = _launch(run, f"rollout.engine={engine}", f"data.sampler={{name: {sampler}}}", "data.num_train=16")
    assert proc.returncode == 0, f"recipe failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        # 4 prompts per step, 2 per rank: together the ranks saw 4 different prompts, not 2 twice
        assert r["rollout/distinct_prompts"] == 4
        assert 0.0 <= r["reward/mean"] <= 1.0 and r.get("train/grad_norm") is not None
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2]  # the sharded eval (3 problems per rank) ran

    state = json.loads((run / "checkpoints/step-000002/trainer_state.json").read_text())
    if sampler == "uniform":
        assert state["sampler"]["cursor"] == 8  # one sampler, advanced by the global 4 prompts per step
    else:  # 2 steps x 4 prompts x 2 rows observed (on both ranks), decayed toward the prior
        seen = sum(state["sampler"]["alpha"]) + sum(state["sampler"]["beta"]) - 2 * 16
        assert 8 < seen <= 16
    before = load_file(tiny_model_dir() / "model.safetensors")
    after = load_file(run / "final_model" / "model.safetensors")
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_prompt_count_must_split_over_ranks(tmp_path):
    proc = _launch(tmp_path / "run", "rollout.engine=hf", "rollout.prompts_per_step=3")
    assert proc.returncode != 0
    assert "rollout.prompts_per_step: 3 prompts cannot be split evenly over 2 processes" in proc.stderr
