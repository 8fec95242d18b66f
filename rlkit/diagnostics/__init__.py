"""Run diagnostics: why is a run not learning? (docs/diagnostics.md)

- `metrics.step_metrics(DiagInputs)`: per-step tensors -> `diag/...` statistics.
- `alarms.AlarmMonitor`: detectors over the logged floats -> `Alarm`s with a suggested action.
- `report.write_report(run_dir)`: charts + self-contained HTML of a run (`rlkit report`).

Names are re-exported lazily so that `rlkit report` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DiagInputs": "metrics",
    "step_metrics": "metrics",
    "Alarm": "alarms",
    "AlarmMonitor": "alarms",
    "ALARM_NAMES": "alarms",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
