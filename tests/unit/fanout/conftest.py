"""A real hub on a real embedded store, with the in-process bus, for fan-out unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voxgate._native import FLAG_END, crc32c
from voxgate.fanout.bus import LocalBus
from voxgate.fanout.hub import Hub
from voxgate.ingest.stream import StreamRegistry
from voxgate.settings import Settings
from voxgate.store.base import FrameIn
from voxgate.store.sqlite import SqliteStore

# Small limits, so that the slow-listener policies engage within a few events.
SETTINGS = Settings(listen_buffer_events=8, listen_max_lag_frames=10)


def frame(session_id: str, seq: int, payload: bytes = b"pcm", *, end: bool = False) -> FrameIn:
    return FrameIn(session_id, seq, FLAG_END if end else 0, seq * 10, crc32c(payload), payload)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "data", durability="process")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def hub(store: SqliteStore) -> AsyncIterator[Hub]:
    running = Hub(SETTINGS, store, LocalBus(), StreamRegistry().window_of)
    await running.start()
    yield running
    await running.stop(1.0)


async def new_session(store: SqliteStore) -> str:
    session = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    return session.id
