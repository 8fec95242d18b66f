"""Numerical faults: a non-finite loss, reward or advantage skips its step (no optimizer step,
no weight sync), counted and logged; too many in a row stop the run with a resumable checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from harness import launch, ok, records
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def test_a_nan_loss_at_step_2_is_skipped_and_the_run_finishes(tmp_path):
    """RLKIT_TEST_NAN_LOSS=2 (test-only hook) makes step 2's first micro-batch loss NaN: the
    whole optimizer step is discarded, logged with its rows, and counted; steps 3-4 train."""
    run = tmp_path / "run"
    proc = launch(run, "rollout.engine=hf", env={"RLKIT_TEST_NAN_LOSS": "2"})
    ok(proc)
    assert "non-finite policy loss in a micro-batch (rows [" in proc.stderr
    skips = {r["step"]: r.get("train/nonfinite_skips") for r in records(run) if r["step"] > 0}
    assert skips == {1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0}
    assert (run / "final_model/model.safetensors").exists()


def test_three_nan_steps_in_a_row_stop_with_a_resumable_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = launch(run, "rollout.engine=hf", "trainer.max_steps=6", "trainer.checkpoint_every=0",
                  env={"RLKIT_TEST_NAN_LOSS": "2,3,4"})
    assert proc.returncode != 0, proc.stderr[-3000:]  # the worker exits 3; the launcher reports a failure
    assert "stopped at step 4: 3 consecutive steps with non-finite" in proc.stderr
    assert "trainer.max_nonfinite_streak=3" in proc.stderr
    state = json.loads((run / "checkpoints/step-000004/trainer_state.json").read_text())
    assert state["step"] == 4 and not (run / "final_model").exists()
    # the three discarded steps changed nothing: the checkpoint's weights are those after step 1
    resumed = launch(run, "rollout.engine=hf", "trainer.max_steps=6", "trainer.checkpoint_every=0")
    ok(resumed)  # the same command without the fault resumes and finishes
    assert [r["step"] for r in records(run)] == [0, 1, 2, 3, 4, 5, 6]


def test_a_discarded_step_leaves_weights_and_optimizer_untouched(tmp_path):
    """Two runs of 2 steps: in one, step 2's loss is NaN. Its weights after step 2 equal the
    other run's after step 1 (exported with max_steps=1): nothing moved, no Adam step taken."""
    nan_run, one_step = tmp_path / "nan", tmp_path / "one"
    ok(launch(nan_run, "rollout.engine=hf", "trainer.max_steps=2", "eval.enabled=false",
              env={"RLKIT_TEST_NAN_LOSS": "2"}))
    ok(launch(one_step, "rollout.engine=hf", "trainer.max_steps=1", "eval.enabled=false"))
    a = load_file(nan_run / "final_model/model.safetensors")
    b = load_file(one_step / "final_model/model.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)
