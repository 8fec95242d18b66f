"""The one place metrics leave the process: JSONL always, TensorBoard by default, W&B/MLflow
through accelerate trackers when configured, and a rich progress bar.

Files in the run directory (the diagnostics report reads them):
- `metrics.jsonl`: one object per step, `{"step": s, "time": unix_seconds, "<key>": float}`
- `samples.jsonl`: `{"step", "prompt", "completion", "reward"}` every `sample_every` steps
- `alarms.jsonl`: one diagnostics alarm per line
Metric keys are namespaced: `reward/...`, `rollout/...`, `policy/...`, `train/...`,
`time/...`, `eval/...`, `diag/...`.

Trackers (`logging.trackers`, docs/tracking.md) get the resolved config flattened to dotted
keys (`trainer.learning_rate`), the same per-step metrics, and each alarm as the metric
`alarm/<name>` = 1 at its step plus alarms.jsonl as a file of the tracker run. W&B writes under
the run directory; MLflow to MLFLOW_TRACKING_URI, else a file store in `<run_dir>/mlruns`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _as_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def flatten_config(tree, prefix: str = "") -> dict[str, object]:
    """A nested config as one level of dotted keys, as trackers want their params:
    `{"trainer": {"lr": 1e-5}, "rewards": [{"name": "x"}]}` -> `{"trainer.lr": 1e-5, "rewards.0.name": "x"}`.
    Lists of scalars and empty containers become their JSON text, so W&B and MLflow (which keeps
    every param as a string) store the same value."""
    if isinstance(tree, dict) and tree:
        items = tree.items()
    elif isinstance(tree, list) and tree and any(isinstance(v, dict | list) for v in tree):
        items = ((str(i), v) for i, v in enumerate(tree))
    elif isinstance(tree, dict | list):
        return {prefix: json.dumps(tree)}
    else:
        return {prefix: tree}
    out: dict[str, object] = {}
    for key, value in items:
        out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def tracker_init_kwargs(trackers: list[str], run_dir: Path, run_name: str) -> dict[str, dict]:
    """accelerate's `init_trackers(init_kwargs=...)`: each tracker's run is named `run_name`; W&B
    writes under the run directory and leaves the terminal alone (its console capture would record
    the progress bar; rlkit's own files hold the logs)."""
    kwargs: dict[str, dict] = {}
    if "wandb" in trackers:
        kwargs["wandb"] = {"name": run_name, "dir": str(run_dir), "settings": {"console": "off"}}
    if "mlflow" in trackers:
        kwargs["mlflow"] = {"run_name": run_name}
    return kwargs


def _prepare_tracker_env(trackers: list[str], run_dir: Path, offline: bool) -> None:
    """Environment the tracker packages read when they start (so before they are imported).

    Offline: W&B's mode comes from WANDB_MODE (an init argument alone still lets its analytics
    exporter contact the server: seen with wandb 0.31), MLflow's usage telemetry is turned off.
    MLflow without MLFLOW_TRACKING_URI: a file store in the run directory (MLflow 3 refuses file
    stores unless MLFLOW_ALLOW_FILE_STORE is set; its default, a SQLite database, needs the full
    `mlflow` package)."""
    if offline:
        os.environ["WANDB_MODE"] = "offline"
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if "mlflow" in trackers:
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)


class RunLogger:
    """Write metrics from rank 0; a no-op on other ranks."""

    def __init__(self, run_dir: Path, *, accelerator=None, tensorboard: bool = True,
                 trackers: list[str] | None = None, total_steps: int = 0, progress: bool = True,
                 start_step: int = 0, config: dict | None = None, project: str = "rlkit",
                 run_name: str | None = None, offline: bool = False):
        self.run_dir = Path(run_dir)
        self.main = accelerator is None or accelerator.is_main_process
        self.accelerator = accelerator if trackers else None
        self._tb = None
        self._progress = None
        self._alarm_file_attached = False
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
            _prepare_tracker_env(trackers, self.run_dir, offline)
            self.accelerator.init_trackers(project, config=flatten_config(config or {}),
                                           init_kwargs=tracker_init_kwargs(trackers, self.run_dir,
                                                                           run_name or self.run_dir.name))
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
            held_out = {k: v for k, v in values.items() if k.startswith("eval/")}
            if held_out:  # the bar shows training stats only; an evaluation gets its own line
                log.info("eval at step %d | %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(held_out.items())))
        else:
            log.info("step %d | %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items())
                                                    if k.startswith(("reward/mean", "rollout/acc", "eval/", "time/step"))))
        return values

    def samples(self, step: int, rows: list[dict]) -> None:
        if self.main:
            for row in rows:
                self._append("samples.jsonl", {"step": step, **row})

    def alarm(self, record: dict) -> None:
        if not self.main:
            return
        self._append("alarms.jsonl", record)
        log.warning("ALARM %s at step %s: %s -> %s", record.get("name"), record.get("step"),
                    record.get("message"), record.get("action"))
        if self.accelerator is not None:
            # A marker on the tracker's charts at the alarm's step (the step's metrics were logged
            # just before, so W&B's monotonic step accepts it), and the messages as a file.
            self.accelerator.log({f"alarm/{record['name']}": 1.0}, step=record["step"])
            self._attach_alarms_file()

    def _attach_alarms_file(self) -> None:
        """alarms.jsonl as a file of each tracker run: W&B links it once and picks up every change
        (policy "live"); MLflow copies it, so it is copied again after each alarm."""
        path = self.run_dir / "alarms.jsonl"
        for tracker in self.accelerator.trackers:
            if tracker.name == "wandb" and not self._alarm_file_attached:
                tracker.tracker.save(str(path), base_path=str(self.run_dir), policy="live")
            elif tracker.name == "mlflow":
                import mlflow

                mlflow.log_artifact(str(path))
        self._alarm_file_attached = True

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self.accelerator is not None:
            self.accelerator.end_training()
