"""Killed anywhere, resumed exactly: the kill harness.

A real recipe run (`accelerate launch recipes/grpo_math.py`, tiny random Llama, fp32 trainer,
DeepSpeed ZeRO-2 on CPU) is SIGKILLed at a chosen point, reached through the test-only
`RLKIT_KILL_AT=<point>@<step>` hook (rlkit/trainer/guard.py; no sleeps), then resumed with the
same command. The resumed run must equal an uninterrupted run of the same seed: final
parameters bit for bit, the sampler position and alarm state in the last checkpoint, and the
metrics of every step after the last checkpoint (timings aside), each logged once.

4 steps, a checkpoint every 2, small micro-batches (several backwards per step), greedy
evaluation at steps 0 and 4. The HF engine serves most points (fast start); the vLLM engine
the points that involve it (generation, weight sync).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import REPO, final_state, launch, ok, records
from safetensors.torch import load_file

from rlkit.assets import tiny_model_dir
from rlkit.trainer.checkpoint import latest_checkpoint
from rlkit.trainer.guard import KILL_POINTS

pytestmark = pytest.mark.slow


ENGINE = {"hf": ("rollout.engine=hf",), "vllm": ("rollout.engine=vllm",)}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted run per engine, the reference of every kill point."""
    runs = {}
    for name, extra in ENGINE.items():
        run = tmp_path_factory.mktemp(f"straight-{name}")
        ok(launch(run, *extra))
        runs[name] = run
    return runs


# (kill point, step, engine, the checkpoint the resume starts from)
CASES = [
    ("eval_step0", 0, "hf", None),
    ("generate", 3, "vllm", 2),
    ("backward", 3, "hf", 2),
    ("before_optimizer", 3, "hf", 2),
    ("weight_sync", 3, "vllm", 2),
    ("checkpoint_write", 4, "hf", 2),
    ("checkpoint_renamed", 2, "hf", 2),
    ("export", None, "hf", 4),
]


def test_every_kill_point_is_covered():
    assert sorted(c[0] for c in CASES) == sorted(KILL_POINTS)


@pytest.mark.parametrize(("point", "step", "engine", "resumes_from"), CASES, ids=[c[0] for c in CASES])
def test_killed_then_resumed_equals_uninterrupted(tmp_path, straight, point, step, engine, resumes_from):
    run = tmp_path / "run"
    killed = launch(run, *ENGINE[engine], kill_at=point if step is None else f"{point}@{step}")
    assert killed.returncode != 0 and f"RLKIT_KILL_AT={point}" in killed.stderr, killed.stderr[-3000:]
    # a half-written checkpoint is never the latest complete one
    latest = latest_checkpoint(run)
    assert (latest.name if latest else None) == (f"step-{resumes_from:06d}" if resumes_from else None)
    if point == "checkpoint_write":
        assert (run / "checkpoints/.tmp-step-000004").is_dir()  # the torn write is left aside, not used
    if point == "export":
        assert not (run / "final_model").exists() and (run / ".tmp-final_model").is_dir()

    ok(launch(run, *ENGINE[engine]))  # the same command resumes

    ref = straight[engine]
    a, b = load_file(ref / "final_model/model.safetensors"), load_file(run / "final_model/model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a), "parameters differ from the straight run"
    sa, sb = final_state(ref), final_state(run)
    assert sa["sampler"] == sb["sampler"] and sa["alarms"] == sb["alarms"]
    ra, rb = records(ref), records(run)
    assert [r["step"] for r in rb] == [r["step"] for r in ra] == [0, 1, 2, 3, 4]  # each step once
    after = resumes_from or 0
    assert [r for r in rb if r["step"] > after] == [r for r in ra if r["step"] > after]


def test_a_killed_launcher_takes_its_worker_with_it_and_a_second_run_is_refused(tmp_path):
    """SIGKILL to `accelerate launch`'s process group (what a job runner does) used to leave
    the training worker alive, in a session of its own, still writing the run directory. The
    worker now dies with its launcher. While the first run lives, a second into the same
    directory is refused, naming the holder; after it is gone, the lock is free again."""
    import time

    from rlkit.trainer.guard import RunLock

    run = tmp_path / "run"
    cmd_env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests/recipes'}"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(REPO / "launch/accelerate/zero2_single.yaml"),
           str(REPO / "recipes/grpo_math.py"), "--config", str(REPO / "recipes/configs/grpo_math_cpu.yaml"),
           f"model.name_or_path={tiny_model_dir()}", f"run.output_dir={run}", "rollout.engine=hf",
           "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
           "trainer.max_steps=500", "eval.enabled=false", "logging.progress=false", "logging.tensorboard=false",
           'rewards=[{name: "toy_rewards:char_parity"}]']
    first = subprocess.Popen(cmd, cwd=REPO, env=cmd_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:  # the worker is training
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.5)
        worker = RunLock(run).holder()["pid"]
        assert worker != first.pid  # the lock is held by the worker, a child of the launcher

        second = subprocess.run(cmd, cwd=REPO, env=cmd_env, capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        assert f"is in use by a live run (pid {worker} on host" in second.stderr + second.stdout

        os.killpg(first.pid, signal.SIGKILL)  # the launcher's whole group; the worker is not in it
        first.wait(timeout=30)
        deadline = time.time() + 10
        while _alive(worker) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its launcher"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    lock = RunLock(run).acquire()  # the dead run's lock is taken over
    try:
        assert RunLock(run).holder()["pid"] == os.getpid()
    finally:
        lock.release()


def _alive(pid: int) -> bool:
    """The process exists (a dead worker is reaped at once by init: its parent died first)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
