"""diagnostics.report: a synthetic run dir -> self-contained HTML + PNGs; headless Chromium
renders every chart and shows the alarm markers."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from chromium_probe import render

from rlkit.diagnostics.report import CHARTS, read_jsonl, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_STEPS = 30


def _make_run(run_dir: Path, *, torn_last_line: bool = True) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for t in range(N_STEPS):
        rec = {
            "step": t,
            "time": 1000.0 + t,
            "reward/mean": 0.2 + 0.01 * t,
            "rollout/accuracy": 0.2 + 0.01 * t,
            "policy/entropy": 2.0 * 0.93**t,
            "diag/entropy_p10": 1.0 * 0.93**t,
            "diag/entropy_p50": 1.9 * 0.93**t,
            "diag/entropy_p90": 3.0 * 0.93**t,
            "diag/zero_adv_frac": min(0.3 + 0.03 * t, 1.0),
            "diag/zero_adv_all_correct_frac": 0.1,
            "diag/zero_adv_all_wrong_frac": 0.2,
            "diag/effective_batch_frac": 0.6,
            "diag/logp_delta_pos": 0.01 - 0.001 * t,
            "diag/logp_delta_neg": -0.01,
            "train/grad_norm": 50.0 if t == 20 else 1.0 + 0.05 * (t % 3),
            "train/loss": 0.1,
            "time/step": 2.0,
        }
        lines.append(json.dumps(rec))
        if t % 10 == 0:  # eval comes as a separate record of the same step
            lines.append(json.dumps({"step": t, "eval/accuracy": 0.25 + 0.01 * t}))
    text = "\n".join(lines) + "\n"
    if torn_last_line:
        text += '{"step": 30, "reward/me'  # the loop is mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    alarms = [
        {"name": "entropy_collapse", "step": 17, "message": "entropy < 30% of initial & <b>falling</b>",
         "action": "raise clip_high (DAPO clip-higher)", "value": 0.58},
        {"name": "grad_spike", "step": 20, "message": "grad norm z = 40", "action": "lower learning rate",
         "value": 40.0},
    ]  # fmt: skip
    (run_dir / "alarms.jsonl").write_text("".join(json.dumps(a) + "\n" for a in alarms))
    samples = [
        {"step": s, "prompt": f"What is {s}+1?", "completion": f"<script>alert({s})</script> {s + 1}",
         "reward": 1.0}
        for s in (5, 10, 15, 20, 25)
    ]  # fmt: skip
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    (run_dir / "config.yaml").write_text("model: tiny\noptim:\n  lr: 1.0e-6\n")


def test_read_jsonl_skips_torn_and_non_object_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 0}\n[1, 2]\n\n{"step": 1}\n{"step": 2, "x"')
    assert read_jsonl(p) == [{"step": 0}, {"step": 1}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_write_report_html_and_pngs(tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    index = write_report(run)
    assert index == run / "report" / "index.html"
    page = index.read_text()
    for spec in CHARTS:
        png = run / "report" / f"{spec.id}.png"
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, spec.id
        # the page embeds exactly this PNG
        m = re.search(rf'id="chart-{spec.id}" [^>]*src="data:image/png;base64,([^"]+)"', page)
        assert m and base64.b64decode(m.group(1)) == data
    # self-contained: no external resources, no scripts
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page
    # alarm rows, HTML-escaped messages
    rows = re.findall(r'<tr class="alarm" data-name="([a-z_]+)" data-step="(\d+)"', page)
    assert rows == [("entropy_collapse", "17"), ("grad_spike", "20")]
    assert "&lt;b&gt;falling&lt;/b&gt;" in page and "raise clip_high" in page
    # samples: last 3 sampled steps only, escaped
    assert re.findall(r'class="sample" data-step="(\d+)"', page) == ["15", "20", "25"]
    assert "&lt;script&gt;alert(25)&lt;/script&gt;" in page
    assert "lr: 1.0e-6" in page
    assert f"{N_STEPS} steps logged, last step {N_STEPS - 1}" in page  # torn line ignored


def test_write_report_empty_run_and_custom_out_dir(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    out = tmp_path / "elsewhere"
    index = write_report(run, out_dir=out)
    assert index == out / "index.html"
    page = index.read_text()
    assert "no steps logged yet" in page and 'id="no-alarms"' in page
    assert all((out / f"{s.id}.png").read_bytes().startswith(PNG_MAGIC) for s in CHARTS)


# ---- headless Chromium ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_report_renders_in_headless_chromium(tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    index = write_report(run)
    sizes, alarm_rows, dom = render(index, tmp_path)
    assert set(sizes) == {f"chart-{s.id}" for s in CHARTS}
    for chart_id, (w, h) in sizes.items():
        assert w > 0 and h > 0, f"{chart_id} did not render ({w}x{h})"
    assert alarm_rows == 2
    assert dom.count('class="alarm"') == 2
