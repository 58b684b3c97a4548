"""Retention through a real server: warm audio from the archive, export, storage, cold 410."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from e2e.wire import Api, assert_problem, frame, payload_for
from servers import Server, start_server
from services import PostgresServer
from voxgate.retention.archive import verify_archive

POLICY = {
    "VOXGATE_RETENTION_HOT_DAYS": "0",  # ended sessions move at the next run
    "VOXGATE_RETENTION_IDLE_HOURS": "1000",  # open ones stay hot
    "VOXGATE_RETENTION_AT": "off",
}


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server on each store kind; archives go under its data dir either way."""
    env = dict(POLICY)
    if request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        env["VOXGATE_DATABASE_URL"] = postgres.create_database(f"ret_{uuid.uuid4().hex[:12]}")
    with start_server(tmp_path, env=env) as running:
        yield running


def retention_run(server: Server, **extra: str) -> dict[str, Any]:
    """``voxgate retention run`` beside the running server, on its data dir."""
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", "retention", "run"],
        env={**server.environment(), **extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def verify_cli(path: Path) -> subprocess.CompletedProcess[str]:
    """``voxgate retention verify FILE``, as a user checks a download."""
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "retention", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def streamed(api: Api, payloads: dict[int, bytes], end: int | None, **body: Any) -> str:
    sid = await api.new_session(**body)
    stream = await api.stream(sid)
    batch: dict[int, bytes] = {}
    for seq, payload in payloads.items():
        batch[seq] = payload
        if sum(map(len, batch.values())) >= 256 * 1024 or seq == max(payloads):
            answers = await api.send_all(stream, batch, end_seq=end)  # within the window
            assert answers.acked == set(batch)
            batch = {}
    await stream.close()
    return sid


def archive_members(data: bytes) -> dict[str, bytes]:
    tar_bytes = (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    )
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


async def test_a_warm_session_serves_its_audio_from_the_archive(
    server: Server, api: Api, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    payloads = {seq: payload_for("warm", seq, 3000 + seq) for seq in range(40)}
    sid = await streamed(api, payloads, 39, codec="pcm_s16le", sample_rate=8000)
    gappy = await streamed(api, {0: b"a" * 10, 2: b"c" * 10}, 2)
    live = await streamed(api, {seq: payload_for("live", seq) for seq in range(3)}, None)
    before = {
        "raw": (await api.audio(sid)).content,
        "wav": (await api.audio(sid, {"format": "wav"})).content,
        "range": (await api.audio(sid, headers={"Range": "bytes=5000-70000"})).content,
        "missing": await api.missing(sid),
        "gappy": await api.audio_bytes(gappy, allow_gaps=True),
    }

    report = retention_run(server)
    assert (report["outcome"], report["archived"], report["failed"]) == ("ok", 2, 0)

    session = await api.get_session(sid)
    assert session["tier"] == "warm"
    assert session["state"] == "complete"
    assert (await api.get_session(live))["tier"] == "hot"
    assert (await api.audio(sid)).content == before["raw"] == b"".join(payloads.values())
    wav = await api.audio(sid, {"format": "wav"})
    assert wav.headers["content-type"] == "audio/wav"
    assert wav.content == before["wav"]
    ranged = await api.audio(sid, headers={"Range": "bytes=5000-70000"})
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 5000-70000/{len(before['raw'])}"
    assert ranged.content == before["range"]
    assert await api.missing(sid) == before["missing"]
    assert_problem(await api.audio(gappy), 409)
    assert await api.audio_bytes(gappy, allow_gaps=True) == before["gappy"]

    # The stored archive downloads as it is, and holds the same audio.
    exported = await http.get(f"/v1/sessions/{sid}/archive")
    assert exported.status_code == 200
    assert exported.headers["voxgate-archive"] == "stored"
    assert exported.headers["content-disposition"] == f'attachment; filename="{sid}.tar.zst"'
    stored = list((server.data_dir / "archive").rglob(f"{sid}.tar.zst"))
    assert len(stored) == 1
    assert exported.content == stored[0].read_bytes()
    assert archive_members(exported.content)["audio.bin"] == before["raw"]
    part = await http.get(f"/v1/sessions/{sid}/archive", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == exported.content[10:20]

    # A warm session takes no frames.
    stream = await api.connect(sid)
    await stream.expect_close(4410)
    upload = await api.upload(sid, frame(40, b"late"))
    assert_problem(upload, 410)


async def test_a_hot_session_exports_an_archive_built_on_the_fly(
    api: Api, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    payloads = {seq: os.urandom(200_000) for seq in range(8)}  # more than one block
    sid = await streamed(api, payloads, None, codec="opus", metadata={"room": "7"})
    exported = await http.get(f"/v1/sessions/{sid}/archive")
    assert exported.status_code == 200
    assert exported.headers["voxgate-archive"] == "built"
    path = tmp_path / "export.tar.zst"
    path.write_bytes(exported.content)
    summary = verify_archive(path, session_id=sid)
    assert summary.manifest.frames == 8
    # What a user does with a download: voxgate retention verify.
    checked = verify_cli(path)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["session_id"] == sid
    damaged = bytearray(exported.content)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    refused = verify_cli(path)
    assert refused.returncode == 1
    assert "unsound" in refused.stderr
    assert summary.manifest.session["metadata"] == {"room": "7"}
    assert archive_members(exported.content)["audio.bin"] == b"".join(payloads.values())
    assert (await api.get_session(sid))["tier"] == "hot"


async def test_cold_sessions_keep_metadata_and_answer_410_for_audio(
    server: Server, api: Api, http: httpx.AsyncClient
) -> None:
    sid = await streamed(api, {0: b"x" * 100, 1: b"y" * 100}, 1, metadata={"keep": True})
    assert retention_run(server)["archived"] == 1
    report = retention_run(server, VOXGATE_RETENTION_WARM_DAYS="0")
    assert (report["expired"], report["outcome"]) == (1, "ok")

    session = await api.get_session(sid)
    assert (session["tier"], session["metadata"], session["frames"]) == ("cold", {"keep": True}, 2)
    problem = assert_problem(await api.audio(sid), 410)
    assert problem["type"] == "urn:voxgate:error:audio_expired"
    assert "cold" in problem["detail"]
    assert_problem(await http.get(f"/v1/sessions/{sid}/archive"), 410)
    assert list((server.data_dir / "archive").rglob("*.tar.zst")) == []


async def test_deleting_a_warm_session_removes_its_archive(
    server: Server, api: Api, http: httpx.AsyncClient
) -> None:
    sid = await streamed(api, {0: b"z" * 100}, 0)
    retention_run(server)
    assert list((server.data_dir / "archive").rglob(f"{sid}.tar.zst"))
    assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
    assert list((server.data_dir / "archive").rglob("*.tar.zst")) == []
    assert_problem(await api.audio(sid), 410)


async def test_storage_reports_tiers_and_the_last_run(
    server: Server, api: Api, http: httpx.AsyncClient
) -> None:
    empty = (await http.get("/v1/storage")).json()
    assert empty["last_run"] is None
    assert {t: v["sessions"] for t, v in empty["tiers"].items()} == {"hot": 0, "warm": 0, "cold": 0}
    assert empty["policy"] == {
        "hot_days": 0.0,
        "warm_days": 30.0,
        "idle_hours": 1000.0,
        "runs_at": "off",
    }

    first = await streamed(api, {0: b"a" * 500}, 0)
    await streamed(api, {0: b"b" * 700}, None)
    second = await streamed(api, {0: b"c" * 900}, 0)
    retention_run(server)
    report = (await http.get("/v1/storage")).json()
    hot, warm, cold = (report["tiers"][t] for t in ("hot", "warm", "cold"))
    assert (hot["sessions"], hot["bytes"], hot["audio_bytes"]) == (1, 700, 700)
    assert (warm["sessions"], warm["audio_bytes"]) == (2, 1400)
    archives = list((server.data_dir / "archive").rglob("*.tar.zst"))
    assert warm["bytes"] == sum(p.stat().st_size for p in archives)
    assert warm["oldest"]["id"] == first != second
    assert cold == {"sessions": 0, "bytes": 0, "audio_bytes": 0, "oldest": None}
    last = report["last_run"]
    assert (last["outcome"], last["archived"], last["failed"]) == ("ok", 2, 0)
    assert datetime.fromisoformat(last["finished_at"]) <= datetime.now(UTC)

    # The same figures as Prometheus gauges, read from the store at each scrape.
    scraped = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families((await http.get("/metrics")).text)
        for sample in family.samples
    }
    for tier, figures in report["tiers"].items():
        assert scraped[("voxgate_storage_sessions", (("tier", tier),))] == figures["sessions"]
        assert scraped[("voxgate_storage_bytes", (("tier", tier),))] == figures["bytes"]
        assert scraped[("voxgate_storage_audio_bytes", (("tier", tier),))] == figures["audio_bytes"]
    assert scraped[("voxgate_retention_last_run_ok", ())] == 1
    assert scraped[("voxgate_retention_last_run_sessions", (("result", "archived"),))] == 2
    assert scraped[("voxgate_retention_last_run_finished_seconds", ())] == pytest.approx(
        datetime.fromisoformat(last["finished_at"]).timestamp()
    )

    assert (
        await http.get("/v1/storage", headers={"Authorization": "Bearer nope"})
    ).status_code == 401


@pytest.fixture
async def scheduled(tmp_path: Path) -> AsyncIterator[Server]:
    # Due a while after start: a time already past when the server comes up means tomorrow.
    at = (datetime.now(UTC) + timedelta(seconds=12)).strftime("%H:%M:%S")
    env = {**POLICY, "VOXGATE_RETENTION_AT": at}
    with start_server(tmp_path, env=env) as running:
        yield running


async def test_the_server_runs_retention_at_the_configured_time(scheduled: Server) -> None:
    async with httpx.AsyncClient(
        base_url=scheduled.base_url, headers={"Authorization": f"Bearer {scheduled.api_key}"}
    ) as http:
        api = Api(scheduled, http)
        sid = await streamed(api, {0: b"q" * 100}, 0)
        try:
            for _ in range(450):  # the run is due 12 s after start; allow a slow machine 90 s
                if (await http.get("/v1/storage")).json()["last_run"] is not None:
                    break
                await asyncio.sleep(0.2)
        finally:
            await api.close_streams()
        assert (await api.get_session(sid))["tier"] == "warm"
        assert (await http.get("/v1/storage")).json()["last_run"]["archived"] == 1
