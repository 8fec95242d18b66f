"""`rlkit report RUN_DIR`: PNG charts and one self-contained HTML page for a run.

Reads what the training loop writes into the run directory:
    metrics.jsonl   {"step": int, "time": float, "<key>": float, ...} per line
    alarms.jsonl    one `Alarm` per line (name, step, message, action, value)
    samples.jsonl   {"step": int, "prompt": str, "completion": str, "reward": float}
    config.yaml     the resolved recipe config (shown verbatim)
and writes `<out_dir>/index.html` (images inlined as base64 data URIs, no network, no
scripts) plus one PNG per chart. Safe on a running run: a partially written last line is
skipped, records of the same step are merged (later wins), and the HTML is replaced
atomically. Alarms appear as labelled vertical lines on every chart and as rows with class
`alarm` in the alarm table. Metric meanings: docs/diagnostics.md.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHARTS", "ChartSpec", "plot_chart", "read_jsonl", "write_report"]


@dataclass(frozen=True)
class ChartSpec:
    """One chart: an id (used for the PNG name and the <img id="chart-<id>">), a title, and
    the (metric key, legend label) series it draws against the step axis."""

    id: str
    title: str
    series: tuple[tuple[str, str], ...]
    ylabel: str = ""
    log_y: bool = False
    zero_line: bool = False


CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec(
        "reward",
        "Reward and accuracy",
        (
            ("reward/mean", "reward (mean)"),
            ("rollout/accuracy", "rollout accuracy"),
            ("eval/accuracy", "eval accuracy"),
        ),
    ),
    ChartSpec(
        "entropy",
        "Token entropy (policy before the update)",
        (
            ("policy/entropy", "mean"),
            ("diag/entropy_p10", "p10"),
            ("diag/entropy_p50", "p50"),
            ("diag/entropy_p90", "p90"),
        ),
        ylabel="nats",
    ),
    ChartSpec(
        "zero_adv",
        "Zero-advantage groups",
        (
            ("diag/zero_adv_frac", "zero-variance groups"),
            ("diag/zero_adv_all_correct_frac", "all-correct groups"),
            ("diag/zero_adv_all_wrong_frac", "all-wrong groups"),
            ("diag/effective_batch_frac", "effective batch (rows with A != 0)"),
        ),
        ylabel="fraction",
    ),
    ChartSpec(
        "displacement",
        "Likelihood displacement: change of mean token logprob per update",
        (
            ("diag/logp_delta_pos", "positive responses (A > 0)"),
            ("diag/logp_delta_neg", "negative responses (A < 0)"),
        ),
        ylabel="nats / token",
        zero_line=True,
    ),
    ChartSpec("grad_norm", "Gradient norm", (("train/grad_norm", "grad norm"),), log_y=True),
)

_ALARM_COLORS = {
    "entropy_collapse": "#d62728",
    "zero_adv_saturation": "#ff7f0e",
    "lld_stagnation": "#bcbd22",
    "lld_decay": "#9467bd",
    "lld_collapse": "#8c564b",
    "grad_spike": "#e377c2",
}
_SAMPLE_STEPS = 3  # sample completions from the last k steps that have any
_SAMPLES_PER_STEP = 4
_SAMPLE_CHARS = 4000


def read_jsonl(path: Path) -> list[dict]:
    """JSON objects of a .jsonl file; [] if missing. Lines that do not parse (a line still
    being written, a torn write after a crash) and non-object lines are skipped."""
    if not path.is_file():
        return []
    out = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _merge_by_step(records: list[dict]) -> list[dict]:
    """One record per step, later fields overriding earlier ones, sorted by step."""
    merged: dict[int, dict] = {}
    for rec in records:
        step = rec.get("step")
        if isinstance(step, int | float) and not isinstance(step, bool):
            merged.setdefault(int(step), {}).update(rec)
    return [merged[s] for s in sorted(merged)]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in records:
        v = rec.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(int(rec["step"]))
            ys.append(float(v))
    return xs, ys


def plot_chart(spec: ChartSpec, records: list[dict], alarms: list[dict], path: Path) -> None:
    """Draw one chart to a PNG: series vs step, alarms as labelled vertical lines.
    A chart without data still renders (with a note) so the page layout is stable."""
    from matplotlib.figure import Figure  # Agg canvas, no global backend state

    fig = Figure(figsize=(9, 3.4), dpi=100)
    ax = fig.add_subplot()
    drawn = 0
    for key, label in spec.series:
        xs, ys = _series(records, key)
        if spec.log_y:  # log axis: non-positive values cannot be drawn
            keep = [i for i, y in enumerate(ys) if y > 0]
            xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
        if xs:
            sparse = len(xs) < 0.5 * max(len(records), 1)  # e.g. eval every k steps
            ax.plot(
                xs, ys, label=label, marker="o" if sparse or len(xs) < 30 else None, ms=3, lw=1.4
            )
            drawn += 1
    if spec.log_y and drawn:
        ax.set_yscale("log")
    if spec.zero_line and drawn:
        ax.axhline(0.0, color="black", lw=0.8, alpha=0.6)
    if not drawn:
        ax.text(
            0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="gray"
        )
    for alarm in alarms:
        color = _ALARM_COLORS.get(str(alarm.get("name")), "#444444")
        ax.axvline(alarm["step"], color=color, ls="--", lw=1.1, alpha=0.85)
        ax.annotate(  # label just left of the line, at the top of the axes
            str(alarm.get("name", "alarm")), xy=(alarm["step"], 1.0), xycoords=("data", "axes fraction"),
            xytext=(-2, -4), textcoords="offset points", rotation=90, va="top", ha="right",
            fontsize=7, color=color,
        )  # fmt: skip
    ax.set_title(spec.title, fontsize=10)
    ax.set_xlabel("step")
    if spec.ylabel:
        ax.set_ylabel(spec.ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")


def _valid_alarms(records: list[dict]) -> list[dict]:
    return [
        a
        for a in records
        if isinstance(a.get("step"), int | float) and not isinstance(a.get("step"), bool)
    ]


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;width:100%} td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
tr.alarm td.name{font-weight:600;white-space:nowrap} img.chart{display:block;max-width:100%;margin:8px 0 18px}
pre{white-space:pre-wrap;background:#f6f6f6;padding:8px;font-size:12px;margin:4px 0}
.sample{border:1px solid #ddd;padding:8px;margin:8px 0} .muted{color:#777}
"""


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _alarm_section(alarms: list[dict]) -> str:
    if not alarms:
        return '<p class="muted" id="no-alarms">No alarms.</p>'
    rows = [
        f'<tr class="alarm" data-name="{html.escape(str(a.get("name", "")))}" data-step="{int(a["step"])}">'
        f'<td>{int(a["step"])}</td><td class="name">{_fmt(a.get("name", ""))}</td>'
        f"<td>{_fmt(a.get('value', ''))}</td><td>{_fmt(a.get('message', ''))}</td>"
        f"<td>{_fmt(a.get('action', ''))}</td></tr>"
        for a in sorted(alarms, key=lambda a: a["step"])
    ]
    head = "<tr><th>step</th><th>alarm</th><th>value</th><th>what is happening</th><th>suggested action</th></tr>"
    return f'<table id="alarms">{head}{"".join(rows)}</table>'


def _samples_section(samples: list[dict]) -> str:
    by_step = _merge_samples(samples)
    if not by_step:
        return '<p class="muted">No samples written yet.</p>'
    parts = []
    for step in sorted(by_step)[-_SAMPLE_STEPS:]:
        for s in by_step[step][:_SAMPLES_PER_STEP]:
            completion = str(s.get("completion", ""))
            if len(completion) > _SAMPLE_CHARS:
                completion = completion[:_SAMPLE_CHARS] + " [...]"
            parts.append(
                f'<div class="sample" data-step="{step}"><div>step {step} · reward {_fmt(s.get("reward", ""))}</div>'
                f"<pre>{html.escape(str(s.get('prompt', '')))}</pre><pre>{html.escape(completion)}</pre></div>"
            )
    return "".join(parts)


def _merge_samples(samples: list[dict]) -> dict[int, list[dict]]:
    by_step: dict[int, list[dict]] = {}
    for s in samples:
        step = s.get("step")
        if isinstance(step, int | float) and not isinstance(step, bool):
            by_step.setdefault(int(step), []).append(s)
    return by_step


def _summary(run_dir: Path, records: list[dict], alarms: list[dict]) -> str:
    keys = (
        "reward/mean",
        "rollout/accuracy",
        "eval/accuracy",
        "policy/entropy",
        "diag/zero_adv_frac",
    )
    last = {k: _series(records, k) for k in keys}
    cells = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(ys[0]) if ys else '–'}</td><td>{_fmt(ys[-1]) if ys else '–'}</td></tr>"
        for k, (_, ys) in last.items()
    )
    steps = (
        f"{len(records)} steps logged, last step {records[-1]['step']}"
        if records
        else "no steps logged yet"
    )
    return (
        f"<p>{html.escape(str(run_dir))}: {steps}; {len(alarms)} alarm(s). "
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>"
        f"<table id='summary'><tr><th>metric</th><th>first</th><th>last</th></tr>{cells}</table>"
    )


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Write the report of `run_dir` to `out_dir` (default run_dir/"report"); returns index.html."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = _merge_by_step(read_jsonl(run_dir / "metrics.jsonl"))
    alarms = _valid_alarms(read_jsonl(run_dir / "alarms.jsonl"))
    samples = read_jsonl(run_dir / "samples.jsonl")
    config_path = run_dir / "config.yaml"
    config = (
        config_path.read_text(encoding="utf-8", errors="replace") if config_path.is_file() else ""
    )

    charts = []
    for spec in CHARTS:
        png = out_dir / f"{spec.id}.png"
        plot_chart(spec, records, alarms, png)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        charts.append(
            f'<img class="chart" id="chart-{spec.id}" alt="{html.escape(spec.title)}" '
            f'src="data:image/png;base64,{data}">'
        )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>rlkit report: '
        f"{html.escape(run_dir.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>rlkit run report: {html.escape(run_dir.name)}</h1>{_summary(run_dir, records, alarms)}"
        f"<h2>Alarms</h2>{_alarm_section(alarms)}<h2>Charts</h2>{''.join(charts)}"
        f"<h2>Sample completions (last {_SAMPLE_STEPS} sampled steps)</h2>{_samples_section(samples)}"
        f"<h2>Config</h2><pre id='config'>{html.escape(config) or 'config.yaml not found'}</pre>"
        "</body></html>"
    )
    index = out_dir / "index.html"
    tmp = out_dir / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)  # a reader never sees a half-written page
    return index
