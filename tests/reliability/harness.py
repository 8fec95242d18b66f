"""Shared by the reliability tests: launch the real recipe on the tiny model, read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rlkit.assets import tiny_model_dir

REPO = Path(__file__).resolve().parents[2]


def launch(run_dir: Path, *overrides: str, kill_at: str | None = None, env: dict | None = None,
           timeout: int = 600, processes: int = 1, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """The recipe, 4 steps of 2 prompts x 4 samples, checkpoint every 2, fp32, greedy eval at 0 and 4.
    `processes` > 1: that many trainer ranks (zero2_multi.yaml). `wait=False`: the running
    process (stdout and stderr piped, text), for a test that acts while it runs."""
    layout = (["--config_file", str(REPO / "launch/accelerate/zero2_single.yaml")] if processes == 1 else
              ["--config_file", str(REPO / "launch/accelerate/zero2_multi.yaml"), "--num_processes", str(processes)])
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *layout,
        str(REPO / "recipes/grpo_math.py"), "--config", str(REPO / "recipes/configs/grpo_math_cpu.yaml"),
        f"model.name_or_path={tiny_model_dir()}", f"run.output_dir={run_dir}", "model.dtype=float32",
        "rollout.dtype=float32", "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "rollout.enforce_eager=true", "rollout.cpu_kvcache_gib=1", "trainer.max_steps=4",
        "trainer.checkpoint_every=2", "trainer.micro_batch_tokens=40", "trainer.learning_rate=1e-3",
        "eval.enabled=true", "data.num_eval=4", "eval.max_new_tokens=4", "logging.progress=false",
        "logging.tensorboard=false", 'rewards=[{name: "toy_rewards:char_parity"}]', *overrides,
    ]
    full = {k: v for k, v in os.environ.items() if not k.startswith(("RLKIT_KILL_AT", "RLKIT_TEST_"))}
    # the repository first: the recipe imports this checkout's rlkit, whatever is installed
    full.update({"PYTHONPATH": f"{REPO}:{REPO / 'tests/recipes'}", **(env or {})})
    if kill_at:
        full["RLKIT_KILL_AT"] = kill_at
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields (time, time/*, throughput)."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items()
                    if k != "time" and not k.startswith("time/") and k != "rollout/tokens_per_s"})
    return out


def final_state(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints/step-000004/trainer_state.json").read_text())
