"""PostgreSQL transcripts: posts never wait for an ingest commit, nor outlive a delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services import PostgresServer
from voxgate.store.base import TranscriptIn, TranscriptOutcome
from voxgate.store.postgres import PostgresStore

from .conftest import frame

_databases = 0


@pytest.fixture
async def pg(postgres_server: PostgresServer) -> AsyncIterator[PostgresStore]:
    global _databases
    _databases += 1
    dsn = postgres_server.create_database(f"pgtranscripts_{_databases}")
    store = PostgresStore(dsn, pool_min=2, pool_max=6, timeout_s=10)
    await store.open()
    yield store
    await store.close()


def line(text: str, seq: int | None = None) -> TranscriptIn:
    return TranscriptIn(role="user", text=text, is_final=True, timestamp=0, seq=seq)


async def test_a_post_does_not_wait_for_a_commit_holding_the_session(pg: PostgresStore) -> None:
    session = await pg.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    conn = await asyncpg.connect(pg.dsn)
    try:
        # What an ingest commit holds while it runs: the session row, locked.
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session.id)
            result = await asyncio.wait_for(pg.add_transcript(session.id, line("meanwhile")), 10)
            assert result.outcome is TranscriptOutcome.STORED
    finally:
        await conn.close()
    stored = await pg.commit([frame(session.id, 0, b"after")])
    assert stored.progress[session.id].frames == 1


async def test_posts_racing_a_delete_leave_nothing(pg: PostgresStore) -> None:
    for _ in range(5):
        session = await pg.create_session(codec=None, sample_rate=None, channels=None, metadata={})
        posts = [pg.add_transcript(session.id, line(f"racing {i}", seq=i)) for i in range(20)]
        deleted, results = await asyncio.gather(
            pg.delete_session(session.id), asyncio.gather(*posts)
        )
        assert deleted is True
        outcomes = {result.outcome for result in results}
        assert outcomes <= {TranscriptOutcome.STORED, TranscriptOutcome.GONE}
        conn = await asyncpg.connect(pg.dsn)
        try:
            left = await conn.fetchval(
                "SELECT count(*) FROM transcripts WHERE session_id = $1", session.id
            )
        finally:
            await conn.close()
        assert left == 0, "a transcript outlived its session's delete"
