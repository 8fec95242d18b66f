"""Render an rlkit HTML report in headless Chromium and read back what the browser saw.

The report ships no scripts; a copy of the page gets a small probe that, after load, records
each chart's decoded size and the number of alarm rows as attributes `--dump-dom` prints.
Chromium comes from Debian (`chromium`), installed by the CI script (.ci/run), never by a test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"

_PROBE = """<script>
window.addEventListener('load', function () {
  var r = [];
  document.querySelectorAll('img.chart').forEach(function (i) {
    r.push(i.id + ':' + (i.complete ? i.naturalWidth : 0) + 'x' + i.naturalHeight);
  });
  document.body.setAttribute('data-charts', r.join(' '));
  document.body.setAttribute('data-alarms', document.querySelectorAll('tr.alarm').length);
});
</script></body>"""


def ensure_chromium() -> None:
    """Chromium comes from the CI script (.ci/run installs it); the tests never install
    packages. Without it the browser check is skipped, with the reason."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing; .ci/run installs it (apt-get install chromium)")


def render(index: Path, tmp_path: Path) -> tuple[dict[str, tuple[int, int]], int, str]:
    """(chart id -> (naturalWidth, naturalHeight), number of alarm rows, the DOM)."""
    ensure_chromium()
    probe = tmp_path / "probe.html"
    probe.write_text(index.read_text().replace("</body>", _PROBE))
    profile = tmp_path / "chromium-profile"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    shutil.rmtree(profile, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    charts = re.search(r'data-charts="([^"]*)"', dom)
    alarms = re.search(r'data-alarms="(\d+)"', dom)
    assert charts and alarms, f"probe did not run; stderr: {res.stderr[-1000:]}"
    sizes = {}
    for item in charts.group(1).split():
        chart_id, wh = item.split(":")
        w, h = (int(v) for v in wh.split("x"))
        sizes[chart_id] = (w, h)
    return sizes, int(alarms.group(1)), dom
