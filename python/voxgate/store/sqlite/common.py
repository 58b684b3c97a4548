"""Names, constants and small helpers every part of the embedded store shares."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson

from voxgate.store.base import (
    Session,
    SessionState,
    Tier,
)

log = logging.getLogger("voxgate.store")
T = TypeVar("T")

DB_NAME = "voxgate.db"
# Every open store holds a shared flock on it; ``voxgate db restore`` needs it exclusively.
DATA_LOCK = "voxgate.lock"
RETENTION_LOCK = "retention.lock"
SEGMENTS_DIR = "segments"
SEGMENT_SUFFIX = ".seg"

# Bytes of blocks read per hop to the store thread by ``read_payloads`` (at least one block).
READ_BATCH_BYTES = 4 * 1024 * 1024
ZEROS = bytes(1024 * 1024)
MAX_SEQ = (1 << 63) - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# CommitPlan.progress(): session_id, next_seq, frames, bytes, end_seq, complete, stream CRC.
Counters = tuple[str, int, int, int, int | None, bool, int | None]
datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

SESSION_COLUMNS = (
    "id, state, codec, sample_rate, channels, metadata, created_at, updated_at,"
    " next_seq, frames, bytes, end_seq, stream_crc32c, tier, tenant"
)


def json_text(value: Any) -> str:
    """``value`` as JSON text, for SQLite's JSON functions (which read text, not bytes)."""
    return orjson.dumps(value).decode()


def now_us() -> int:
    return time.time_ns() // 1000


def to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def session_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Session:
    return Session(
        id=row[0],
        state=SessionState(row[1]),
        codec=row[2],
        sample_rate=row[3],
        channels=row[4],
        metadata=orjson.loads(row[5]),
        created_at=to_datetime(row[6]),
        updated_at=to_datetime(row[7]),
        next_seq=row[8],
        frames=row[9],
        bytes=row[10],
        end_seq=row[11],
        stream_crc32c=row[12],
        tier=Tier(row[13]),
        tenant=row[14],
    )


def us(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


class Segment:
    """This process's open segment: the only file it appends to."""

    __slots__ = ("fd", "id", "name", "offset")

    def __init__(self, segment_id: int, name: str, fd: int) -> None:
        self.id = segment_id
        self.name = name
        self.fd = fd  # holds the flock that marks the segment as being written
        self.offset = 0
