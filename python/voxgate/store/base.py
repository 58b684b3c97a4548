"""The ``Store`` protocol: what the ingest path and the API need from persistence.

The embedded store (SQLite plus segment files) and the PostgreSQL store both
implement it; tests run the same suite against each.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Protocol

import msgspec


class SessionState(enum.StrEnum):
    OPEN = "open"  # accepting frames, END not stored yet
    ENDED = "ended"  # END frame stored, gaps remain below it
    COMPLETE = "complete"  # every seq from 0 to END is stored
    DELETED = "deleted"  # payloads removed; only a tombstone remains


class Session(msgspec.Struct, kw_only=True):
    """A session as the API shows it."""

    id: str
    state: SessionState
    created_at: datetime
    updated_at: datetime
    codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    next_seq: int = 0  # one past the highest stored seq
    frames: int = 0  # stored frames
    bytes: int = 0  # stored payload bytes
    end_seq: int | None = None  # seq of the stored END frame
    stream_crc32c: int | None = None  # CRC-32C of all payloads in seq order, once complete


class FrameIn(msgspec.Struct, array_like=True, gc=False):
    """One verified frame to store. ``payload`` may be a memoryview into the message.

    Not tracked by the cycle collector (it holds no containers): thousands are in
    flight under load, and scanning them made every collection slow.
    """

    session_id: str
    seq: int
    flags: int
    pts_us: int
    crc32c: int
    payload: bytes | memoryview


class Outcome(enum.IntEnum):
    STORED = 0  # newly durable: ack
    DUPLICATE = 1  # already stored with the same CRC (and length and flags): ack as duplicate
    CONFLICT = 2  # already stored with another CRC, length or END flag: nack "conflict"
    SEQUENCE = 3  # after the stored END (or an END below stored frames): nack "sequence"
    GONE = 4  # session unknown or deleted: the stream closes 4410


class Progress(msgspec.Struct, kw_only=True):
    """A session's counters right after a commit."""

    next_seq: int
    frames: int
    bytes: int
    end_seq: int | None
    complete: bool
    stream_crc32c: int | None


class CommitResult(msgspec.Struct):
    """``outcomes[i]`` answers ``frames[i]``; ``progress`` covers every session touched."""

    outcomes: list[Outcome]
    progress: dict[str, Progress]


class FrameEntry(msgspec.Struct, array_like=True):
    """One stored frame's index entry."""

    seq: int
    flags: int
    pts_us: int
    length: int
    crc32c: int


class StoreError(Exception):
    """The store cannot serve right now (I/O error, database down)."""


class Store(Protocol):
    """Durable sessions and frames. Every method may raise :class:`StoreError`."""

    async def open(self) -> None:
        """Create or migrate what is missing and get ready to serve."""

    async def close(self) -> None:
        """Flush and release files and connections."""

    async def create_session(
        self,
        *,
        codec: str | None,
        sample_rate: int | None,
        channels: int | None,
        metadata: dict[str, Any],
    ) -> Session:
        """Create an open session with a new time-ordered id."""

    async def get_session(self, session_id: str) -> Session | None:
        """The session, a DELETED tombstone, or None when the id was never created."""

    async def list_sessions(self, *, limit: int, after: str | None) -> list[Session]:
        """Up to ``limit`` sessions (tombstones excluded) with ids greater than ``after``, by id."""

    async def delete_session(self, session_id: str) -> bool:
        """Remove every frame and payload byte of the session, leaving a tombstone.

        The tombstone keeps id, codec, sample rate, channels and timestamps;
        metadata and counters are cleared. Returns False when the session does
        not exist or is already deleted.
        """

    async def missing(self, session_id: str) -> list[list[int]]:
        """Inclusive ``[first, last]`` gaps below the session's ``next_seq`` ([] if unknown)."""

    async def commit(self, frames: Sequence[FrameIn]) -> CommitResult:
        """Store ``frames`` (from any number of sessions) in one transaction.

        Durable per the configured durability before it returns: with ``fsync``
        payloads and index survive power loss, with ``process`` a killed process.
        A seq already stored is never overwritten (DUPLICATE or CONFLICT); the
        same seq twice in one batch is answered as if the batch came in order.
        Unknown sessions get GONE and no ``progress`` entry.
        When a session's last gap closes, it becomes COMPLETE and its
        ``stream_crc32c`` is computed in the same transaction.
        """

    async def frame_index(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> list[FrameEntry]:
        """Index entries of stored frames with ``first_seq <= seq <= last_seq``, by seq."""

    def read_payloads(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(seq, payload)`` of stored frames in seq order, in bounded memory."""

    async def claim_stream(self, session_id: str) -> int:
        """Take over the session's stream: bump and return its stream generation.

        A connection holding an older generation is superseded (close 4409),
        whichever process or instance holds it. Raises :class:`StoreError` for
        a session that was never created.
        """

    async def stream_generations(self, session_ids: Sequence[str]) -> dict[str, int]:
        """Current stream generation of each given session (missing ids are left out)."""
