"""The embedded store's transcripts and listener reads: schema upgrade, segments, corruption."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from voxgate.store.base import StoreError, TranscriptIn, TranscriptOutcome
from voxgate.store.sqlite import DB_NAME, MIGRATIONS, SEGMENTS_DIR, SqliteStore

from .conftest import frame


async def test_a_version_1_database_gains_transcripts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir, durability="process")
    await store.open()
    session = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    await store.close()
    # Turn it back into what a voxgate without transcripts left behind (the move of
    # frames to blocks, migration 6, is tested on a data dir written by schema 5).
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        conn.execute("DROP VIEW all_extents")
        conn.execute("DROP TABLE recent_extents")
        conn.execute("DROP TABLE extents")
        conn.execute(
            "CREATE TABLE frames (session_id TEXT NOT NULL, seq INTEGER NOT NULL,"
            " flags INTEGER NOT NULL, pts_us INTEGER NOT NULL, length INTEGER NOT NULL,"
            " crc32c INTEGER NOT NULL, segment INTEGER NOT NULL, offset INTEGER NOT NULL,"
            " PRIMARY KEY (session_id, seq)) WITHOUT ROWID"
        )
        conn.execute("DROP TABLE transcripts")
        # and what the migrations after it added (retention, webhook outbox, tenants)
        conn.execute("DROP TABLE webhook_outbox")
        conn.execute("DROP TABLE retention_runs")
        conn.execute("DROP INDEX sessions_by_tier")
        conn.execute("DROP INDEX sessions_by_tenant")
        for column in (
            "tenant",
            "tier",
            "tier_target",
            "tier_changed_at",
            "kept_missing",
            "archive_path",
            "archive_bytes",
            "archive_crc32c",
            "archived_at",
        ):
            conn.execute(f"ALTER TABLE sessions DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 1")

    store = SqliteStore(data_dir, durability="process")
    await store.open()
    try:
        result = await store.add_transcript(
            session.id, TranscriptIn(role="user", text="hi", is_final=True, timestamp=1)
        )
        assert result.outcome is TranscriptOutcome.STORED
        assert [t.text for t in await store.list_transcripts(session.id)] == ["hi"]
        await store.commit([frame(session.id, 0, b"kept")])
        assert [
            f.payload for f in await store.read_frames(session.id, 0, 0, max_frames=1, max_bytes=9)
        ] == [b"kept"]
    finally:
        await store.close()
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "frames" not in tables
        assert "extents" in tables


async def test_read_frames_across_segments_and_messages(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data", durability="process", segment_max_bytes=700)
    await store.open()
    try:
        sid = (
            await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
        ).id
        other = (
            await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
        ).id
        payloads = {seq: bytes([seq]) * (50 + seq) for seq in range(40)}
        # Interleaved with another session and spread over several small segments.
        for start in range(0, 40, 5):
            batch = []
            for seq in range(start, start + 5):
                batch += [frame(sid, seq, payloads[seq]), frame(other, seq, b"x" * 30)]
            await store.commit(batch)
        assert len(list((tmp_path / "data" / SEGMENTS_DIR).iterdir())) > 1
        got = await store.read_frames(sid, 0, 39, max_frames=1000, max_bytes=1 << 20)
        assert [(f.seq, f.payload) for f in got] == sorted(payloads.items())
    finally:
        await store.close()


async def test_read_frames_refuses_a_corrupt_payload(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir, durability="process")
    await store.open()
    try:
        sid = (
            await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
        ).id
        await store.commit([frame(sid, 0, b"GOOD-PAYLOAD"), frame(sid, 1, b"NEXT-PAYLOAD")])
        for path in (data_dir / SEGMENTS_DIR).iterdir():
            path.write_bytes(path.read_bytes().replace(b"NEXT-PAYLOAD", b"EVIL-PAYLOAD"))
        with pytest.raises(StoreError, match="corrupt"):
            await store.read_frames(sid, 0, 1, max_frames=10, max_bytes=1000)
    finally:
        await store.close()
