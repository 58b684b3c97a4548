"""Transcripts and listener snapshots of the PostgreSQL store."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import msgspec

from voxgate.store.base import (
    ListenSnapshot,
    SessionState,
    TimestampValue,
    Transcript,
    TranscriptIn,
    TranscriptOutcome,
    TranscriptResult,
    after_final,
)
from voxgate.store.migrations import Connection
from voxgate.store.postgres.common import (
    I64_MAX,
    LOCK_TRANSCRIPT_HEAD,
    SESSION_COLUMNS,
    session_from_row,
    storable,
)
from voxgate.store.postgres.frames import Frames, gaps


class Transcripts(Frames):
    """Transcripts and what listeners read."""

    # -- transcripts and listeners -------------------------------------------------

    async def add_transcript(self, session_id: str, entry: TranscriptIn) -> TranscriptResult:
        if not storable(session_id):
            return TranscriptResult(TranscriptOutcome.GONE, None)
        timestamp = msgspec.json.encode(entry.timestamp).decode()

        async def op(conn: Connection) -> TranscriptResult:
            try:
                async with conn.transaction():
                    return await self._add_transcript(conn, session_id, entry, timestamp)
            except _Gone:
                return TranscriptResult(TranscriptOutcome.GONE, None)

        return await self._run(op)

    @staticmethod
    async def _add_transcript(
        conn: Connection, session_id: str, entry: TranscriptIn, timestamp: str
    ) -> TranscriptResult:
        # The head row serializes posts to one session (and orders them after a delete).
        last: int = await conn.fetchval(LOCK_TRANSCRIPT_HEAD, session_id)
        state = await conn.fetchval("SELECT state FROM sessions WHERE id = $1", session_id)
        if state is None or state == SessionState.DELETED.value:
            raise _Gone  # rolls back the head row of an unknown id
        if entry.seq is not None:
            current = await conn.fetchrow(
                f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts"
                " WHERE session_id = $1 AND role = $2 AND seq = $3",
                session_id,
                entry.role,
                entry.seq,
            )
        else:
            current = await conn.fetchrow(
                f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts"
                " WHERE session_id = $1 AND role = $2 AND seq IS NULL AND NOT is_final",
                session_id,
                entry.role,
            )
        if current is not None and current["is_final"]:
            return after_final(entry, _transcript_from_row(session_id, current))
        transcript = Transcript(
            id=last + 1,
            session_id=session_id,
            role=entry.role,
            text=entry.text,
            is_final=entry.is_final,
            timestamp=entry.timestamp,
            seq=entry.seq,
            supersedes=None if current is None else current["id"],
            received_at=datetime.now(UTC),
        )
        await conn.execute(
            "UPDATE transcript_heads SET last_id = $2 WHERE session_id = $1",
            session_id,
            transcript.id,
        )
        if current is not None:
            await conn.execute(
                "DELETE FROM transcripts WHERE session_id = $1 AND id = $2",
                session_id,
                current["id"],
            )
        await conn.execute(
            "INSERT INTO transcripts (session_id, id, role, seq, is_final, text,"
            " client_timestamp, supersedes, received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8, $9)",
            session_id,
            transcript.id,
            entry.role,
            entry.seq,
            entry.is_final,
            entry.text,
            timestamp,
            transcript.supersedes,
            transcript.received_at,
        )
        return TranscriptResult(TranscriptOutcome.STORED, transcript)

    async def list_transcripts(
        self, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Transcript]:
        if limit <= 0 or not storable(session_id):
            return []

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts WHERE session_id = $1"
                " AND id > $2 ORDER BY id LIMIT $3",
                session_id,
                min(after, I64_MAX),
                limit,
            )

        return [_transcript_from_row(session_id, row) for row in await self._run(op)]

    async def last_transcript_id(self, session_id: str) -> int:
        if not storable(session_id):
            return 0

        async def op(conn: Connection) -> int | None:
            value: int | None = await conn.fetchval(
                "SELECT last_id FROM transcript_heads WHERE session_id = $1", session_id
            )
            return value

        return await self._run(op) or 0

    async def listen_snapshot(self, session_id: str) -> ListenSnapshot:
        if not storable(session_id):
            return ListenSnapshot(None, [], 0)

        async def op(conn: Connection) -> ListenSnapshot:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
                )
                missing = await gaps(conn, session_id)
                last = await conn.fetchval(
                    "SELECT last_id FROM transcript_heads WHERE session_id = $1", session_id
                )
            return ListenSnapshot(
                None if row is None else session_from_row(row), missing, last or 0
            )

        return await self._run(op)


class _Gone(Exception):
    """Inside a transaction: the session is unknown or deleted (rolls the transaction back)."""


_TRANSCRIPT_COLUMNS = "id, role, seq, text, client_timestamp, is_final, supersedes, received_at"


def _transcript_from_row(session_id: str, row: asyncpg.Record) -> Transcript:
    return Transcript(
        id=row["id"],
        session_id=session_id,
        role=row["role"],
        seq=row["seq"],
        text=row["text"],
        timestamp=msgspec.json.decode(row["client_timestamp"], type=TimestampValue),
        is_final=row["is_final"],
        supersedes=row["supersedes"],
        received_at=row["received_at"],
    )
