"""`trainer.offload: optimizer` on CPU, one process, ZeRO-2 (no GPU here, so this is the one
offload path that runs in this project's tests; ZeRO-3 `optimizer_and_params` does not run).

Runs `tests/recipes/offload_update.py` under `accelerate launch` twice: without offload (torch's
fused AdamW), and with it (DeepSpeedCPUAdam on the offloaded fp32 partition) after a discarded
step. The two updates must agree: the offload optimizer is AdamW with the recipe's settings
(decoupled weight decay, not the L2 Adam accelerate would build from a non-torch optimizer),
and a discarded step leaves nothing behind in ZeRO's CPU gradient buffers (before
`_discard_gradients` reset them, the update after a discarded step was 0.02 = 2 x lr off).
The first run in a fresh environment compiles DeepSpeed's cpu_adam op (~75 s on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(out: Path, *args: str) -> tuple[str, dict[str, torch.Tensor]]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "launch/accelerate/zero2_single.yaml"), str(REPO / "tests/recipes/offload_update.py"),
           str(out), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests/recipes")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout, torch.load(out)


def test_offloaded_adam_after_a_discarded_step_equals_a_plain_step(tmp_path):
    from safetensors.torch import load_file

    from rlkit.assets import tiny_model_dir

    log_plain, plain = _run(tmp_path / "plain.pt", "none")
    log_off, offload = _run(tmp_path / "offload.pt", "optimizer", "discard")
    assert "optimizer: AdamW cpu_offload=False" in log_plain
    assert "optimizer: DeepSpeedCPUAdam cpu_offload=True" in log_off
    start = load_file(tiny_model_dir() / "model.safetensors")
    moved = max(float((plain[k] - start[k]).abs().max()) for k in start if k in plain)
    assert moved > 1e-3, "no update to compare"
    for k in plain:
        torch.testing.assert_close(offload[k], plain[k], rtol=0, atol=1e-6, msg=k)
