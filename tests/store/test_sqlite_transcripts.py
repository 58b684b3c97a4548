"""The embedded store's transcript table: schema upgrade from a database without it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from voxgate.store.base import TranscriptIn, TranscriptOutcome
from voxgate.store.sqlite import DB_NAME, MIGRATIONS, SqliteStore

from .conftest import frame


async def test_a_version_1_database_gains_transcripts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir, durability="process")
    await store.open()
    session = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    await store.commit([frame(session.id, 0, b"kept")])
    await store.close()
    # Turn it back into what a voxgate without transcripts left behind.
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        conn.execute("DROP TABLE transcripts")
        conn.execute("PRAGMA user_version = 1")

    store = SqliteStore(data_dir, durability="process")
    await store.open()
    try:
        result = await store.add_transcript(
            session.id, TranscriptIn(role="user", text="hi", is_final=True, timestamp=1)
        )
        assert result.outcome is TranscriptOutcome.STORED
        assert [t.text for t in await store.list_transcripts(session.id)] == ["hi"]
        assert [
            f.payload for f in await store.read_frames(session.id, 0, 0, max_frames=1, max_bytes=9)
        ] == [b"kept"]
    finally:
        await store.close()
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
