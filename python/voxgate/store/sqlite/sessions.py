"""Sessions of the embedded store: create, read, list, delete, stream ownership."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from voxgate.ids import new_session_id
from voxgate.store.base import (
    EventType,
    Session,
    SessionState,
    StoreError,
)
from voxgate.store.sqlite.common import (
    SESSION_COLUMNS,
    json_text,
    now_us,
    session_from_row,
    to_datetime,
)
from voxgate.store.sqlite.frames import Frames


class Sessions(Frames):
    """Session rows; deleting one drops its frames."""

    # -- sessions ------------------------------------------------------------------

    async def create_session(
        self,
        *,
        codec: str | None,
        sample_rate: int | None,
        channels: int | None,
        metadata: dict[str, Any],
        tenant: str | None = None,
    ) -> Session:
        now = now_us()
        session = Session(
            id=new_session_id(),
            state=SessionState.OPEN,
            created_at=to_datetime(now),
            updated_at=to_datetime(now),
            codec=codec,
            sample_rate=sample_rate,
            channels=channels,
            metadata=metadata,
            tenant=tenant,
        )
        encoded = msgspec.json.encode(metadata).decode()
        await self._call(self._create_session_sync, session, encoded, now)
        return session

    def _create_session_sync(self, session: Session, metadata: str, now: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sessions (id, state, codec, sample_rate, channels, metadata,"
                " created_at, updated_at, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.state.value,
                    session.codec,
                    session.sample_rate,
                    session.channels,
                    metadata,
                    now,
                    now,
                    session.tenant,
                ),
            )

    async def get_session(self, session_id: str) -> Session | None:
        return await self._call(self._get_session_sync, session_id)

    def _get_session_sync(self, session_id: str) -> Session | None:
        row = self._conn.execute(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return None if row is None else session_from_row(row)

    async def list_sessions(
        self, *, limit: int, after: str | None, tenant: str | None = None
    ) -> list[Session]:
        if limit <= 0:
            return []
        return await self._call(self._list_sessions_sync, limit, after or "", tenant)

    def _list_sessions_sync(self, limit: int, after: str, tenant: str | None) -> list[Session]:
        if tenant is None:
            rows = self._conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id > ? AND state != ?"
                " ORDER BY id LIMIT ?",
                (after, SessionState.DELETED.value, limit),
            ).fetchall()
        else:
            rows = self._conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = ? AND id > ?"
                " AND state != ? ORDER BY id LIMIT ?",
                (tenant, after, SessionState.DELETED.value, limit),
            ).fetchall()
        return [session_from_row(row) for row in rows]

    async def delete_session(self, session_id: str) -> bool:
        """Drop the session's frames and zero their payload bytes, leaving a tombstone.

        The tombstone keeps id, codec, sample rate, channels and timestamps;
        metadata and counters are cleared.
        """
        return await self._call(self._delete_session_sync, session_id)

    def _delete_session_sync(self, session_id: str) -> bool:
        with self._write() as conn:
            row = conn.execute("SELECT state FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None or row[0] == SessionState.DELETED.value:
                return False
            self._drop_frames(session_id)
            said = conn.execute(
                "DELETE FROM transcripts WHERE session_id = ?", (session_id,)
            ).rowcount
            conn.execute(
                "UPDATE sessions SET state = ?, metadata = '{}', next_seq = 0, frames = 0,"
                " bytes = 0, end_seq = NULL, stream_crc32c = NULL, prefix_seq = 0,"
                " prefix_crc32c = 0, updated_at = ? WHERE id = ?",
                (SessionState.DELETED.value, now_us(), session_id),
            )
            if self.events:
                self._enqueue_sync([(session_id, EventType.DELETED)])
        self._erase_dropped(session_id, checkpoint=bool(said))
        return True

    # -- stream ownership ----------------------------------------------------------

    async def claim_stream(self, session_id: str) -> int:
        """Bump and return the session's stream generation; StoreError for an unknown id."""
        return await self._call(self._claim_stream_sync, session_id)

    def _claim_stream_sync(self, session_id: str) -> int:
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE sessions SET stream_generation = stream_generation + 1 WHERE id = ?"
                " RETURNING stream_generation",
                (session_id,),
            ).fetchall()
        if not rows:
            raise StoreError(f"cannot claim the stream of unknown session {session_id}")
        return int(rows[0][0])

    async def stream_generations(self, session_ids: Sequence[str]) -> dict[str, int]:
        if not session_ids:
            return {}
        return await self._call(self._stream_generations_sync, list(session_ids))

    def _stream_generations_sync(self, session_ids: list[str]) -> dict[str, int]:
        return {
            session_id: generation
            for session_id, generation in self._conn.execute(
                "SELECT id, stream_generation FROM sessions"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (json_text(session_ids),),
            )
        }
