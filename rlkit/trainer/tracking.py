"""The one place metrics leave the process: JSONL always, TensorBoard by default, W&B/MLflow
through accelerate trackers when configured, and a rich progress bar.

Files in the run directory (the diagnostics report reads them):
- `metrics.jsonl`: one object per step, `{"step": s, "time": unix_seconds, "<key>": float}`
- `samples.jsonl`: `{"step", "prompt", "completion", "reward"}` every `sample_every` steps
- `alarms.jsonl`: one diagnostics alarm per line
Metric keys are namespaced: `reward/...`, `rollout/...`, `policy/...`, `train/...`,
`time/...`, `eval/...`, `diag/...`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _as_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


class RunLogger:
    """Write metrics from rank 0; a no-op on other ranks."""

    def __init__(self, run_dir: Path, *, accelerator=None, tensorboard: bool = True,
                 trackers: list[str] | None = None, total_steps: int = 0, progress: bool = True,
                 start_step: int = 0, config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.main = accelerator is None or accelerator.is_main_process
        self.accelerator = accelerator if trackers else None
        self._tb = None
        self._progress = None
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: on resume, events past the checkpoint (written by the run that died)
                # are hidden, so TensorBoard, like metrics.jsonl, holds each step once
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
        if self.accelerator is not None:
            self.accelerator.init_trackers(self.run_dir.name, config=config or {})
        if progress and total_steps:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, stats="")
            self._progress.start()

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step so the curves stay one history."""
        for name in ("metrics.jsonl", "samples.jsonl", "alarms.jsonl"):
            path = self.run_dir / name
            if not path.exists():
                continue
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash
            path.write_text("".join(x + "\n" for x in keep))

    def _append(self, name: str, record: dict) -> None:
        with open(self.run_dir / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log(self, step: int, metrics: dict) -> dict[str, float]:
        values = {k: _as_float(v) for k, v in metrics.items()}
        if not self.main:
            return values
        record = {"step": step, "time": time.time(),
                  **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        self._append("metrics.jsonl", record)
        if self._tb is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.accelerator is not None:
            self.accelerator.log(values, step=step)
        if self._progress is not None:
            stats = "  ".join(
                f"{label} {values[k]:.3f}" for label, k in (("reward", "reward/mean"), ("acc", "rollout/accuracy"),
                                                           ("entropy", "policy/entropy"), ("s/step", "time/step"))
                if k in values)
            self._progress.update(self._task, completed=step, stats=stats)
        else:
            log.info("step %d | %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())
                                                    if k.startswith(("reward/mean", "rollout/acc", "eval/", "time/step"))))
        return values

    def samples(self, step: int, rows: list[dict]) -> None:
        if self.main:
            for row in rows:
                self._append("samples.jsonl", {"step": step, **row})

    def alarm(self, record: dict) -> None:
        if self.main:
            self._append("alarms.jsonl", record)
            log.warning("ALARM %s at step %s: %s -> %s", record.get("name"), record.get("step"),
                        record.get("message"), record.get("action"))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self.accelerator is not None:
            self.accelerator.end_training()
