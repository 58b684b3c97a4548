"""Transcripts and listener snapshots of the embedded store."""

from __future__ import annotations

import sqlite3
from typing import Any

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
from voxgate.store.sqlite.common import SESSION_COLUMNS, now_us, session_from_row, to_datetime
from voxgate.store.sqlite.frames import gaps
from voxgate.store.sqlite.plumbing import Plumbing


class Transcripts(Plumbing):
    """Transcripts, written on the store thread and read on the reader thread."""

    # -- transcripts and listeners -------------------------------------------------

    async def add_transcript(self, session_id: str, entry: TranscriptIn) -> TranscriptResult:
        timestamp = msgspec.json.encode(entry.timestamp).decode()
        return await self._call(self._add_transcript_sync, session_id, entry, timestamp)

    def _add_transcript_sync(
        self, session_id: str, entry: TranscriptIn, timestamp: str
    ) -> TranscriptResult:
        with self._write() as conn:
            row = conn.execute("SELECT state FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None or row[0] == SessionState.DELETED.value:
                return TranscriptResult(TranscriptOutcome.GONE, None)
            # The key's current entry: at most one per (role, seq), at most one open
            # (interim) unkeyed entry per role; finals without seq never match.
            if entry.seq is not None:
                current = conn.execute(
                    f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts"
                    " WHERE session_id = ? AND role = ? AND seq = ?",
                    (session_id, entry.role, entry.seq),
                ).fetchone()
            else:
                current = conn.execute(
                    f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts"
                    " WHERE session_id = ? AND role = ? AND seq IS NULL AND is_final = 0",
                    (session_id, entry.role),
                ).fetchone()
            if current is not None and current[5]:  # the key's final is stored
                return after_final(entry, _transcript_from_row(session_id, current))
            # The highest id is never superseded (only older ones are), so MAX + 1 never reuses one.
            last = conn.execute(
                "SELECT COALESCE(MAX(id), 0) FROM transcripts WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
            now = now_us()
            transcript = Transcript(
                id=last + 1,
                session_id=session_id,
                role=entry.role,
                text=entry.text,
                is_final=entry.is_final,
                timestamp=entry.timestamp,
                seq=entry.seq,
                supersedes=None if current is None else int(current[0]),
                received_at=to_datetime(now),
            )
            if current is not None:
                conn.execute(
                    "DELETE FROM transcripts WHERE session_id = ? AND id = ?",
                    (session_id, current[0]),
                )
            conn.execute(
                "INSERT INTO transcripts (session_id, id, role, seq, is_final, text, timestamp,"
                " supersedes, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    transcript.id,
                    entry.role,
                    entry.seq,
                    int(entry.is_final),
                    entry.text,
                    timestamp,
                    transcript.supersedes,
                    now,
                ),
            )
        return TranscriptResult(TranscriptOutcome.STORED, transcript)

    async def list_transcripts(
        self, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Transcript]:
        if limit <= 0:
            return []
        return await self._reads().call(_list_transcripts_sync, session_id, after, limit)

    async def last_transcript_id(self, session_id: str) -> int:
        return await self._reads().call(_last_transcript_id_sync, session_id)

    async def listen_snapshot(self, session_id: str) -> ListenSnapshot:
        return await self._reads().call(_listen_snapshot_sync, session_id)


_TRANSCRIPT_COLUMNS = "id, role, seq, text, timestamp, is_final, supersedes, received_at"


def _transcript_from_row(session_id: str, row: tuple[Any, ...]) -> Transcript:
    return Transcript(
        id=row[0],
        session_id=session_id,
        role=row[1],
        seq=row[2],
        text=row[3],
        timestamp=msgspec.json.decode(row[4], type=TimestampValue),
        is_final=bool(row[5]),
        supersedes=row[6],
        received_at=to_datetime(row[7]),
    )


def _list_transcripts_sync(
    conn: sqlite3.Connection, session_id: str, after: int, limit: int
) -> list[Transcript]:
    return [
        _transcript_from_row(session_id, row)
        for row in conn.execute(
            f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts WHERE session_id = ? AND id > ?"
            " ORDER BY id LIMIT ?",
            (session_id, after, limit),
        )
    ]


def _listen_snapshot_sync(conn: sqlite3.Connection, session_id: str) -> ListenSnapshot:
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return ListenSnapshot(
            None if row is None else session_from_row(row),
            gaps(conn, session_id),
            _last_transcript_id_sync(conn, session_id),
        )
    finally:
        conn.execute("COMMIT")


def _last_transcript_id_sync(conn: sqlite3.Connection, session_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(id), 0) FROM transcripts WHERE session_id = ?", (session_id,)
    ).fetchone()
    return int(row[0])
