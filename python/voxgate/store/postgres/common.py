"""Names, constants and small helpers every part of the PostgreSQL store shares."""

from __future__ import annotations

import logging
import urllib.parse
from typing import TypeVar

import asyncpg
import msgspec

from voxgate.store.base import (
    Session,
    SessionState,
    Tier,
)

log = logging.getLogger("voxgate.store")

T = TypeVar("T")

# pg_try_advisory_lock key of the one retention runner ("voxret" in ASCII).
RETENTION_LOCK_KEY = 0x766F78726574
MAX_SEQ = (1 << 63) - 1
I64_MAX = (1 << 63) - 1

SESSION_COLUMNS = (
    "id, state, codec, sample_rate, channels, metadata, created_at, updated_at,"
    " next_seq, frames, bytes, end_seq, stream_crc32c, tier, tenant"
)

# The connection is gone or the server is going away: use a new connection.
BROKEN = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)
# Worth one more try: a broken connection, or a transaction PostgreSQL rolled back.
RETRY = (*BROKEN, asyncpg.exceptions.TransactionRollbackError)
# Anything else the driver or the server reports.
FAILURE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


def storable(session_id: str) -> bool:
    """Whether the id can name a stored session (ids are ASCII; PostgreSQL text holds no NUL)."""
    return session_id.isascii() and "\x00" not in session_id


def text_key(value: str) -> str:
    """``value`` as PostgreSQL text that sorts against ids as ``value`` does (for ``after``)."""
    # Ids are printable ASCII: whatever follows a NUL cannot change the order, and any
    # character above ASCII (a lone surrogate too) sorts after every id character.
    value = value.split("\x00", 1)[0]
    if value.isascii():
        return value
    return "".join("\ue000" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "<unparsable database URL>"
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def session_from_row(row: asyncpg.Record) -> Session:
    return Session(
        id=row["id"],
        state=SessionState(row["state"]),
        codec=row["codec"],
        sample_rate=row["sample_rate"],
        channels=row["channels"],
        metadata=msgspec.json.decode(row["metadata"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_seq=row["next_seq"],
        frames=row["frames"],
        bytes=row["bytes"],
        end_seq=row["end_seq"],
        stream_crc32c=row["stream_crc32c"],
        tier=Tier(row["tier"]),
        tenant=row["tenant"],
    )


SESSION_COLUMNS = (
    "id, state, codec, sample_rate, channels, metadata, created_at, updated_at,"
    " next_seq, frames, bytes, end_seq, stream_crc32c, tier, tenant"
)

# Create (if needed) and lock a session's transcript head row; answers its last id.
LOCK_TRANSCRIPT_HEAD = (
    "INSERT INTO transcript_heads (session_id, last_id) VALUES ($1, 0)"
    " ON CONFLICT (session_id) DO UPDATE SET last_id = transcript_heads.last_id"
    " RETURNING last_id"
)
