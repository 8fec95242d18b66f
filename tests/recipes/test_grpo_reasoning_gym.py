"""The real entry point on recipes/configs/grpo_reasoning_gym_cpu.yaml: 2 steps with the
embedded SmolLM2-135M on the reasoning-gym task, scored by the task's own verifier.

The embedded model (not the tiny random one) so the reward sees real answers: about 6-8% of
its samples at temperature 1 score on the recipe's task (22.5% greedy), so some of the
2 x 4 x 8 completions score (all 64 missing: about 0.5% at 8%), which a reward that failed
or never matched an answer would not. Smaller than the recipe (4 prompts x 8 samples, 16 new
tokens, 8 held-out problems): about a minute on 2 idle cores, 3 on busy ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ok, records

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "recipes/configs/grpo_reasoning_gym_cpu.yaml"
pytestmark = pytest.mark.slow


def test_two_steps_on_the_reasoning_gym_recipe(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "launch/accelerate/zero2_single.yaml"),
        str(REPO / "recipes/grpo_math.py"), "--config", str(CONFIG),
        f"run.output_dir={run}", "trainer.max_steps=2", "rollout.prompts_per_step=4", "rollout.group_size=8",
        "rollout.max_new_tokens=16", "rollout.cpu_kvcache_gib=1", "data.num_train=64", "data.num_eval=8",
        "eval.max_new_tokens=16", "logging.progress=false", "logging.tensorboard=false",
    ]
    # the repository first: the recipe imports this checkout's rlkit and rewards
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests/recipes'}"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    ok(proc)

    steps = [r for r in records(run) if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["reward/reasoning_gym/failures"] == 0.0  # the verifier ran on every row
        assert 0.0 <= r["reward/reasoning_gym/mean"] <= 1.0
        assert r["train/grad_norm"] is not None
    assert max(r["reward/reasoning_gym/mean"] for r in steps) > 0  # some completion scored
    evals = {r["step"]: r["eval/accuracy"] for r in records(run) if "eval/accuracy" in r}
    assert 0 in evals and 0.0 <= evals[0] <= 1.0
    # the held-out overlap is counted and logged at start-up
    assert "reasoning_gym chain_sum: 64 training problems" in proc.stdout + proc.stderr
    assert (run / "final_model" / "model.safetensors").is_file()
