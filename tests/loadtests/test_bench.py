"""The benchmark tools run: every server of the comparison, and the long-session tool.

Smoke runs only (2 streams, 1 s): they check the tools and the baseline servers
work and that voxgate's streams end complete with the right CRC, so the
documented benchmark commands keep working. They assert no speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "loadtests" / "ingest_bench.py"


def _bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT / "loadtests",
    )


@pytest.mark.e2e
def test_compare_runs_voxgate_and_every_baseline(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    servers = "voxgate,litestar,fastapi,picows"
    run = _bench(
        "compare", "--servers", servers, "--streams", "2", "--duration", "1",
        "--frames-per-message", "2", "--data-root", str(tmp_path), "--json", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == set(servers.split(","))
    for kind, result in report["results"].items():
        assert result["frames_acked"] > 0, kind
        assert not result["errors"], (kind, result["errors"])
    assert report["results"]["voxgate"]["streams_verified"] == 2
    assert report["ratios"]["voxgate/litestar"] is not None
    assert "(d) raw picows sink" in run.stdout


@pytest.mark.e2e
def test_capacity_ladder_climbs_while_servers_hold(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    run = _bench(
        "capacity", "--servers", "voxgate,picows", "--start", "2", "--max-streams", "4",
        "--duration", "1", "--p99-ms", "1000", "--data-root", str(tmp_path),
        "--json", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [rung["streams"] for rung in report["rungs"]] == [2, 4]
    # Two and four paced streams are far below any server's limit: both rungs hold.
    assert report["held"] == {"voxgate": 4, "picows": 4}
    assert "live-call capacity" in run.stdout


@pytest.mark.e2e
def test_session_tool_reports_every_chunk(tmp_path: Path) -> None:
    out = tmp_path / "session.json"
    run = _bench(
        "session", "--chunks", "3", "--chunk-seconds", "1", "--fast", "--streams", "2",
        "--sample-s", "0.5", "--no-progress", "--data-root", str(tmp_path), "--json", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    success = report["success"]
    assert (success["chunks_total"], success["chunks_acked"], success["rate"]) == (6, 6, 1.0)
    assert success["frames_acked"] == 2 * 3 * 50  # 50 frames of 20 ms per 1 s chunk
    assert success["streams_verified"] == 2
    assert report["throughput"]["frames_per_s"] > 0
    assert {"p50", "p95", "p99"} <= set(report["ack_latency_ms"])
    assert report["rss_snapshots"]
    assert report["peak_rss_mb"] > 0
    assert report["disk_usage_mb"] > 0
