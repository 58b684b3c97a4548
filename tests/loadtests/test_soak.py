"""The short soak: real-time streams for 40 s; no memory, descriptor or task leak.

A resource-leak check, not a speed test: ``loadtests/soak.py`` samples the
server every second and passes when resident memory grows by less than 5 MB
after a 15 s warm-up, descriptors and tasks stay flat, every stream completes
with the right CRC, and closed streams leave nothing behind. The full soak
(15 minutes) is the documented command in docs/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_short_soak_keeps_memory_descriptors_and_tasks_flat(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtests" / "soak.py"),
            "--duration",
            "40",
            "--warmup",
            "15",
            "--streams",
            "40",
            "--sample-s",
            "1",
            "--data-root",
            str(tmp_path),
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT / "loadtests",
    )
    log = (run.stdout + run.stderr)[-4000:]
    report = json.loads(report_path.read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, f"failed checks {failed}\n{log}"
    assert run.returncode == 0, log
    assert report["rss_growth_after_warmup_mb"] < 5.0
    assert len(report["samples"]) >= 30  # sampled through the whole run
    assert report["load"]["frames_acked"] > 40 * 50 * 30  # 40 streams x 50 frames/s, 30 s+
