"""The short headless locust run: API and streaming users against a real server.

Bounded: ``USERS`` users for ``RUN_S`` seconds on 127.0.0.1. CSV and HTML
reports go to ``results/locust/`` (``VOXGATE_RESULTS_DIR`` overrides). It fails
on any failed request and when the p95 frame-to-ack latency passes
``P95_BOUND_MS``, the bound docs/performance.md documents. The bound is loose on
purpose: this checks that the server keeps real-time streams flowing under a
mixed load on a shared 2-core machine, not how fast it is (the benchmarks do that).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from servers import start_server

ROOT = Path(__file__).resolve().parents[2]
USERS = 24
SPAWN_RATE = 12
RUN_S = 20
P95_BOUND_MS = 250.0


def _results_dir() -> Path:
    path = Path(os.environ.get("VOXGATE_RESULTS_DIR", ROOT / "results")) / "locust"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _summary_row(output: str, name: str) -> tuple[int, int] | None:
    """(requests, failures) of ``name`` in locust's printed summary table."""
    for line in output.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[1] == name and "(" in fields[3]:
            return int(fields[2]), int(fields[3].split("(")[0])
    return None


@pytest.mark.e2e
def test_short_headless_locust_run_has_no_failures(tmp_path: Path) -> None:
    out = _results_dir()
    for stale in out.glob("voxgate*"):
        stale.unlink()
    prefix = out / "voxgate"
    locust = Path(sys.executable).with_name("locust")
    with start_server(tmp_path) as server:
        env = {**os.environ, "VOXGATE_API_KEY": server.api_key}
        run = subprocess.run(
            [
                str(locust),
                "-f",
                str(ROOT / "loadtests" / "locustfile.py"),
                "--headless",
                "--host",
                server.base_url,
                "--users",
                str(USERS),
                "--spawn-rate",
                str(SPAWN_RATE),
                "--run-time",
                f"{RUN_S}s",
                "--stop-timeout",
                "20",
                "--csv",
                str(prefix),
                "--html",
                str(out / "voxgate.html"),
                "--only-summary",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_S + 120,
            cwd=ROOT,
        )
    log = (run.stdout + run.stderr)[-4000:]
    with (out / "voxgate_stats.csv").open() as stats_file:
        rows = {row["Name"]: row for row in csv.DictReader(stats_file)}
    total = rows["Aggregated"]
    assert int(total["Failure Count"]) == 0, log
    assert run.returncode == 0, log
    frames = rows["frame->ack"]
    assert int(frames["Request Count"]) > USERS * 10, log  # the streams really streamed
    p95 = float(frames["95%"])
    assert p95 <= P95_BOUND_MS, f"frame->ack p95 {p95} ms above {P95_BOUND_MS} ms\n{log}"
    for name in ("/v1/sessions", "/v1/sessions/[id]/tokens", "/v1/sessions/[id]/missing"):
        assert int(rows[name]["Request Count"]) > 0, (name, log)
    # Streams END when their user stops, after the CSV is written: the printed summary has them.
    ended = _summary_row(run.stdout + run.stderr, "end->complete")
    assert ended is not None, log
    assert ended[0] > 0, log
    assert ended[1] == 0, f"{ended[1]} streams did not complete with the right CRC\n{log}"
    assert (out / "voxgate.html").stat().st_size > 0
