"""The weight-sync canary catches a sync that silently did not happen, within one step.

RLKIT_TEST_SKIP_SYNC=<step> (test-only hook) skips that step's weight sync without a trace: the
engine keeps serving the previous weights while the trainer moves on. The canary's probe then
scores differently on the two sides, the `weight_sync_drift` alarm fires at that very step and
the run stops with a resumable checkpoint. Without the fault, no alarm and the difference stays
at the floor.
"""

from __future__ import annotations

import json

import pytest
from harness import launch, ok, records

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_a_skipped_sync_raises_the_drift_alarm_at_that_step(tmp_path, engine):
    run = tmp_path / "run"
    proc = launch(run, f"rollout.engine={engine}", "eval.enabled=false", env={"RLKIT_TEST_SKIP_SYNC": "2"})
    assert proc.returncode != 0, proc.stderr[-3000:]  # the worker exits 3; the launcher reports a failure
    assert "stopped at step 2: the weight-sync canary saw drift" in proc.stderr
    alarms = [json.loads(line) for line in (run / "alarms.jsonl").read_text().splitlines()]
    drift = [a for a in alarms if a["name"] == "weight_sync_drift"]
    assert [a["step"] for a in drift] == [2]
    steps = {r["step"]: r for r in records(run)}
    # the engine did not move at all while the trainer did (a correct sync moves it as much)
    assert drift[0]["value"] == steps[2]["train/canary_moved_ratio"] == 0.0
    assert steps[1]["train/canary_moved_ratio"] == pytest.approx(1.0, abs=0.5)
    assert (run / "checkpoints/step-000002/trainer_state.json").exists()


def test_no_alarm_without_the_fault(tmp_path):
    run = tmp_path / "run"
    ok(launch(run, "rollout.engine=vllm", "eval.enabled=false", "trainer.max_steps=3"))
    assert not (run / "alarms.jsonl").exists() or "weight_sync_drift" not in (run / "alarms.jsonl").read_text()
    rows = [r for r in records(run) if r["step"] > 0]
    assert len(rows) == 3 and max(r["train/canary_diff"] for r in rows) < 1e-3  # fp32 on both sides
    assert min(r["train/canary_moved_ratio"] for r in rows) > 0.5
