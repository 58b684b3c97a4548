"""``voxgate db migrate`` and ``voxgate db migrate-from-sqlite``, run as the real command."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from services import PostgresServer
from voxgate._native import crc32c
from voxgate.retention.runner import Retention
from voxgate.settings import Settings
from voxgate.store import blocks, migrations
from voxgate.store.base import Outcome, SessionState, Store, Tier, TranscriptIn
from voxgate.store.postgres import PostgresStore
from voxgate.store.sqlite import SqliteStore

from .conftest import frame, payload_of

_databases = 0


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> str:
    global _databases
    _databases += 1
    return postgres_server.create_database(f"transfer_{_databases}")


def voxgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxgate", *args]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    return subprocess.run(
        voxgate(*args), env=env, capture_output=True, text=True, timeout=300, check=False
    )


async def new_session(store: Store, **metadata: object) -> str:
    session = await store.create_session(
        codec="pcm_s16le",
        sample_rate=16000,
        channels=1,
        metadata=dict(metadata),
        tenant="acme",  # the copy keeps whose session it is
    )
    return session.id


async def snapshot(store: Store, ids: list[str]) -> dict[str, object]:
    """Everything a user can ask the store about these sessions."""
    seen: dict[str, object] = {}
    for sid in ids:
        seen[sid] = (
            await store.get_session(sid),
            await store.missing(sid),
            await store.frame_index(sid),
            [item async for item in store.read_payloads(sid)],
            await store.list_transcripts(sid, limit=1000),
            await store.last_transcript_id(sid),
        )
    seen["generations"] = await store.stream_generations(ids)
    seen["listed"] = [s.id for s in await store.list_sessions(limit=1000, after=None)]
    return seen


async def build_source(data_dir: Path) -> list[str]:
    """An embedded store with every kind of session."""
    store = SqliteStore(data_dir, segment_max_bytes=256 * 1024)
    await store.open()
    try:
        complete = await new_session(store, kind="complete", nested={"a": [1, 2]})
        payloads = [random.randbytes(random.randint(0, 900)) for _ in range(120)]
        order = list(range(120))
        random.shuffle(order)
        for i in range(0, 120, 25):
            await store.commit(
                [
                    frame(complete, s, payloads[s], end=s == 119, pts_us=s * 20_000)
                    for s in order[i : i + 25]
                ]
            )
        await store.claim_stream(complete)
        await store.claim_stream(complete)
        lines: list[tuple[str, bool, int | None, int | float | str]] = [
            ("hel", False, 0, 1.5),
            ("hello", True, 0, "2024-05-01T10:00:00Z"),
            ("one mo", False, None, 3),
        ]
        for text, final, seq, timestamp in lines:
            entry = TranscriptIn(
                role="user", text=text, is_final=final, timestamp=timestamp, seq=seq
            )
            await store.add_transcript(complete, entry)

        gappy = await new_session(store, kind="ended with gaps")
        await store.commit([frame(gappy, s, payload_of(gappy, s)) for s in (0, 1, 4, 7)])
        await store.commit([frame(gappy, 9, b"", end=True)])

        open_one = await new_session(store)
        await store.commit(
            [frame(open_one, s, payload_of(open_one, s, 300_000)) for s in range(3)]
            + [frame(open_one, 3, b"big pts", pts_us=(1 << 64) - 1)]
        )

        empty = await new_session(store)
        doomed = await new_session(store, secret="gone")
        await store.commit([frame(doomed, 0, b"doomed audio")])
        await store.add_transcript(
            doomed, TranscriptIn(role="user", text="doomed words", is_final=True, timestamp=0)
        )
        await store.delete_session(doomed)
        return [complete, gappy, open_one, empty, doomed]
    finally:
        await store.close()


async def test_migrate_applies_once(dsn: str) -> None:
    first = run("db", "migrate", "--database-url", dsn)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    again = run("db", "migrate", "--database-url", dsn)
    assert again.returncode == 0, again.stderr
    assert "applied" not in again.stdout
    assert f"schema at version {migrations.latest_version()}" in again.stdout


async def test_migrate_needs_a_reachable_database(postgres_server: PostgresServer) -> None:
    unused = run("db", "migrate")
    assert unused.returncode == 2
    assert "VOXGATE_DATABASE_URL" in unused.stderr
    down = run("db", "migrate", "--database-url", postgres_server.dsn("no_such_db"))
    assert down.returncode == 1
    assert "no_such_db" in down.stderr


async def test_copy_keeps_everything_and_a_rerun_copies_nothing_twice(
    tmp_path: Path, dsn: str
) -> None:
    data_dir = tmp_path / "data"
    ids = await build_source(data_dir)
    source = SqliteStore(data_dir)
    await source.open()
    try:
        expected = await snapshot(source, ids)
    finally:
        await source.close()

    result = run("db", "migrate-from-sqlite", str(data_dir), "--database-url", dsn)
    assert result.returncode == 0, result.stderr
    assert "sessions 5: 4 copied, 1 tombstones, 0 already copied, 0 failed" in result.stdout

    target = PostgresStore(dsn, migrate=False)
    await target.open()
    try:
        assert await snapshot(target, ids) == expected
        tomb = await target.get_session(ids[4])
        assert tomb is not None
        assert tomb.state is SessionState.DELETED
        # The copy is a working store: the gappy session completes when its gaps arrive.
        gappy = ids[1]
        fill = await target.commit([frame(gappy, s, payload_of(gappy, s)) for s in (2, 3, 5, 6, 8)])
        assert fill.outcomes == [Outcome.STORED] * 5
        stored = [p async for _, p in target.read_payloads(gappy)]
        assert fill.progress[gappy].stream_crc32c == crc32c(b"".join(stored))
    finally:
        await target.close()

    again = run("db", "migrate-from-sqlite", str(data_dir), "--database-url", dsn)
    assert again.returncode == 1
    assert "0 frames (0 bytes) inserted" in again.stdout
    # The gappy session moved on in PostgreSQL: the rerun reports it and leaves it be.
    assert "4 already copied, 1 failed" in again.stdout
    assert f"{ids[1]} not copied: PostgreSQL holds seq 2, which the source lacks" in again.stderr


async def test_a_conflicting_frame_leaves_only_that_session_alone(tmp_path: Path, dsn: str) -> None:
    data_dir = tmp_path / "data"
    ids = await build_source(data_dir)
    assert run("db", "migrate", "--database-url", dsn).returncode == 0
    conn = await asyncpg.connect(dsn)
    try:
        block = blocks.build(ids[1], [(0, 0, 0, crc32c(b"other"), b"other")])
        await conn.execute(
            "INSERT INTO blocks VALUES ($1, 0, 0, 5, $2, $3)", ids[1], block.crc32c, block.data
        )
    finally:
        await conn.close()
    result = run("db", "migrate-from-sqlite", str(data_dir), "--database-url", dsn)
    assert result.returncode == 1
    assert f"{ids[1]} not copied: seq 0 differs between source and PostgreSQL" in result.stderr
    assert "3 copied, 1 tombstones" in result.stdout
    target = PostgresStore(dsn)
    await target.open()
    try:
        assert await target.get_session(ids[1]) is None
        assert (await target.get_session(ids[0])) is not None
    finally:
        await target.close()


async def test_an_interrupted_copy_is_finished_by_running_it_again(
    tmp_path: Path, dsn: str
) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir, durability="process")
    await store.open()
    ids = []
    try:
        for n in range(12):
            sid = await new_session(store, n=n)
            ids.append(sid)
            for start in range(0, 400, 100):
                await store.commit(
                    [
                        frame(sid, s, payload_of(sid, s, 2000), end=s == 399)
                        for s in range(start, start + 100)
                    ]
                )
        expected = await snapshot(store, ids)
    finally:
        await store.close()
    assert run("db", "migrate", "--database-url", dsn).returncode == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    args = voxgate("db", "migrate-from-sqlite", str(data_dir), "--database-url", dsn)
    proc = await asyncio.create_subprocess_exec(
        *args,
        "--batch-frames",
        "20",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = await asyncpg.connect(dsn)
    try:
        # Kill it once some sessions are done and frames of the next are on their way.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.returncode is None:
            if await conn.fetchval("SELECT count(*) FROM sessions") >= 2:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        # A COMMIT already sent is still carried out by its backend: wait until it is gone.
        while await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        ):
            assert time.monotonic() < deadline + 30
            await asyncio.sleep(0.01)
        copied = await conn.fetchval("SELECT count(*) FROM sessions")
        frames = await conn.fetchval(
            "SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM blocks"
        )
    finally:
        await conn.close()
    assert proc.returncode == -signal.SIGKILL, "the copy finished before it could be interrupted"
    assert 2 <= copied < len(ids)
    assert frames < len(ids) * 400

    rerun = run("db", "migrate-from-sqlite", str(data_dir), "--database-url", dsn)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{copied} already copied, 0 failed" in rerun.stdout
    assert f"{len(ids) - copied} copied" in rerun.stdout
    assert f" {len(ids) * 400 - frames} frames (" in rerun.stdout, "nothing is inserted twice"

    target = PostgresStore(dsn, migrate=False)
    await target.open()
    try:
        assert await snapshot(target, ids) == expected
        for sid in ids:
            session = await target.get_session(sid)
            assert session is not None
            assert session.state is SessionState.COMPLETE
            joined = b"".join(payload_of(sid, s, 2000) for s in range(400))
            assert session.stream_crc32c == crc32c(joined)
    finally:
        await target.close()


async def test_warm_and_cold_sessions_keep_their_tier_gaps_and_archive(
    tmp_path: Path, dsn: str
) -> None:
    data_dir = tmp_path / "data"
    ids = await build_source(data_dir)
    settings = Settings(
        data_dir=str(data_dir), archive_dir=str(tmp_path / "archive"), retention_hot_days=0
    )
    source = SqliteStore(data_dir)
    await source.open()
    try:
        archived = await Retention(source, settings).run()
        assert archived is not None
        assert archived.archived == 2  # the complete and the gappy (ended) sessions
        warm = [s for s in await source.list_sessions(limit=10, after=None) if s.tier == "warm"]
        # One of them goes on to cold.
        assert await source.begin_move(warm[1].id, Tier.COLD, warm[1].updated_at)
        assert await source.finish_cold(warm[1].id)
        expected = {
            sid: (
                await source.get_session(sid),
                await source.missing(sid),
                await source.archive_record(sid),
            )
            for sid in ids[:4]
        }
    finally:
        await source.close()

    result = run("db", "migrate-from-sqlite", str(data_dir), "--database-url", dsn)
    assert result.returncode == 0, result.stderr
    target = PostgresStore(dsn, migrate=False)
    await target.open()
    try:
        for sid, (session, gaps, archive) in expected.items():
            assert await target.get_session(sid) == session
            assert await target.missing(sid) == gaps
            assert await target.archive_record(sid) == archive
        tiers = {sid: s.tier for sid, (s, _, _) in expected.items() if s is not None}
        assert sorted(tiers.values()) == ["cold", "hot", "hot", "warm"]
        late = await target.commit([frame(warm[0].id, 99, b"late")])
        assert late.outcomes == [Outcome.GONE]
    finally:
        await target.close()
