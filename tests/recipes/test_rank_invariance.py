"""One rollout batch, 1 rank vs 2 DeepSpeed ranks holding unequal numbers of tokens: same update.

Each rank averages its micro-batch losses over the *global* token (or row) count of the
mini-batch, and DeepSpeed averages gradients over ranks; a per-rank mean (what rlkit did
before) would weight rank 1's 6 tokens like rank 0's 26. Runs `tests/recipes/rank_update.py`
under `accelerate launch` (ZeRO-2, CPU, gloo).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rank_update import LOSSES

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(out: Path, processes: int) -> dict[str, dict[str, torch.Tensor]]:
    out.mkdir()
    cfg = "zero2_multi.yaml" if processes > 1 else "zero2_single.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/accelerate" / cfg),
           "--num_processes", str(processes), str(REPO / "tests/recipes/rank_update.py"), str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests/recipes")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{processes} ranks failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return {name: torch.load(out / f"after_{name}.pt") for name in LOSSES}


def test_one_rank_and_two_ranks_give_the_same_update(tmp_path):
    from safetensors.torch import load_file

    from rlkit.assets import tiny_model_dir

    one, two = _run(tmp_path / "one", 1), _run(tmp_path / "two", 2)
    start = load_file(tiny_model_dir() / "model.safetensors")
    previous = {k: v for k, v in start.items()}
    for name in LOSSES:  # updates applied in sequence: compare each step's change
        d1 = {k: one[name][k] - previous.get(k, one[name][k]) for k in one[name]}
        d2 = {k: two[name][k] - previous.get(k, two[name][k]) for k in two[name]}
        assert max(float(v.abs().max()) for v in d1.values()) > 1e-3, f"{name}: no update to compare"
        for k in d1:
            torch.testing.assert_close(d2[k], d1[k], rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
        previous = one[name]
