"""A real 2-step run of the recipe on the embedded SmolLM2-135M prints a console a person can
read, and the log file holds what the console leaves out (docs/training.md, "Console and logs").
"""

from __future__ import annotations

import re

import pytest
from test_grpo_math import _launch

pytestmark = pytest.mark.slow

# Measured 2026-12-01 (2-core Xeon, AVX512-BF16, bf16 engine): 13 console lines for this run
# (the 3-step `make train` measurement before/after is in docs/training.md: 574 -> 25).
MAX_CONSOLE_LINES = 30
_BAR = re.compile(r"━|\d+%\|")  # rich's bar (the recipe's progress), tqdm's (transformers' loading)


def _console_lines(out: str, err: str) -> list[str]:
    """Console lines a person reads: progress-bar redraws (carriage returns, bar glyphs) aside."""
    return [line for line in (out + err).splitlines() if line.strip() and "\r" not in line and not _BAR.search(line)]


def test_two_step_run_console_is_short_and_the_log_file_has_the_rest(tmp_path):
    run = tmp_path / "run"
    proc = _launch(run, "model.name_or_path=smollm2-135m", "logging.progress=true", "trainer.max_steps=2",
                   "trainer.sync_canary=false", "trainer.export_final=false")  # both only cost time here
    lines = _console_lines(proc.stdout, proc.stderr)
    shown = "\n".join(lines)
    assert len(lines) < MAX_CONSOLE_LINES, f"{len(lines)} console lines:\n{shown}"
    assert f"run directory: {run} (full log: {run / 'logs' / 'rank0.log'})" in shown
    assert "INFO rlkit.rollout.vllm_engine: vLLM engine ready in" in shown  # rlkit's own INFO lines stay
    assert "weight sync #" not in shown  # per step and in the metrics (time/sync): DEBUG
    assert "Attempted to load weight" not in shown
    assert not re.search(r"INFO.* vllm\.|\) INFO ", shown), "a vLLM INFO line reached the console"

    log = (run / "logs" / "rank0.log").read_text()
    assert re.search(r"INFO vllm\.\S+: Initializing a V1 LLM engine", log)  # vLLM's INFO, in the file
    assert "INFO rlkit.trainer.checkpoint: checkpoint saved" in log  # rlkit's lines are in the file too
    # Weight syncs are cast to the engine's dtype, so the only dtype warnings left are the ones
    # of the initial load (fp32 checkpoint, bf16 engine): each weight name at most once.
    names = re.findall(r"Attempted to load weight (\S+) with dtype", log)
    assert len(names) == len(set(names)), "a weight sync logged vLLM's dtype warning"
