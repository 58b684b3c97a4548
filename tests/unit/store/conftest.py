"""Store fixtures: the same tests run against every backend kind."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from voxgate._native import FLAG_END, crc32c
from voxgate.store import migrations
from voxgate.store.base import FrameIn, Store
from voxgate.store.postgres import PostgresStore
from voxgate.store.sqlite import SqliteStore

# Backend kinds the suite runs against.
KINDS = ["sqlite", "postgres"]


def frame(
    session_id: str, seq: int, payload: bytes, *, end: bool = False, pts_us: int = 0
) -> FrameIn:
    """A frame as the ingest path hands it over: verified, with its CRC-32C."""
    return FrameIn(session_id, seq, FLAG_END if end else 0, pts_us, crc32c(payload), payload)


def payload_of(session_id: str, seq: int, size: int = 64) -> bytes:
    """Distinctive, reproducible payload bytes for one frame."""
    unit = f"<{session_id}#{seq}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


class Backend:
    """Opens stores of one kind over the same persistent state, and looks at their raw bytes."""

    kind: str
    events = False  # stores enqueue webhook events (Store block "webhook outbox")

    def new_store(self) -> Store:
        """A new, unopened store instance over this backend's state (like another process)."""
        raise NotImplementedError

    async def holds_bytes(self, needle: bytes) -> bool:
        """Whether ``needle`` appears anywhere the backend keeps sessions and payloads."""
        raise NotImplementedError

    async def open_store(self) -> Store:
        store = self.new_store()
        await store.open()
        return store


class SqliteBackend(Backend):
    kind = "sqlite"

    def __init__(self, data_dir: Path, *, segment_max_bytes: int = 64 * 1024) -> None:
        self.data_dir = data_dir
        self.segment_max_bytes = segment_max_bytes

    def new_store(self) -> SqliteStore:
        return SqliteStore(
            self.data_dir,
            durability="fsync",
            segment_max_bytes=self.segment_max_bytes,
            events=self.events,
        )

    async def holds_bytes(self, needle: bytes) -> bool:
        for root, _, files in os.walk(self.data_dir):
            for name in files:
                if needle in (Path(root) / name).read_bytes():
                    return True
        return False


class PostgresBackend(Backend):
    """One database shared by the suite, emptied before each test."""

    kind = "postgres"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def new_store(self) -> PostgresStore:
        return PostgresStore(self.dsn, pool_min=1, pool_max=4, events=self.events)

    async def reset(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await migrations.apply(conn)
            await conn.execute(
                "TRUNCATE sessions, blocks, transcripts, transcript_heads, retention_runs,"
                " webhook_outbox"
            )
        finally:
            await conn.close()

    async def holds_bytes(self, needle: bytes) -> bool:
        # What any reader of the database sees: frame payloads, session and transcript rows.
        conn = await asyncpg.connect(self.dsn)
        try:
            found: bool = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM blocks WHERE position($1::bytea IN data) > 0)"
                " OR EXISTS (SELECT 1 FROM sessions"
                " WHERE position($1::bytea IN convert_to(sessions::text, 'UTF8')) > 0)"
                " OR EXISTS (SELECT 1 FROM transcripts"
                " WHERE position($1::bytea IN convert_to(transcripts::text, 'UTF8')) > 0)",
                needle,
            )
            return found
        finally:
            await conn.close()


@pytest.fixture(params=KINDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind = request.param
    if kind == "sqlite":
        return SqliteBackend(tmp_path / "data")
    if kind == "postgres":
        # Asked for here, so that a run of the sqlite cases alone starts no PostgreSQL.
        pg = PostgresBackend(request.getfixturevalue("store_database"))
        await pg.reset()
        return pg
    raise AssertionError(f"unknown store kind {kind}")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    opened = await backend.open_store()
    yield opened
    await opened.close()
