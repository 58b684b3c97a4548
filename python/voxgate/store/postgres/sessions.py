"""Sessions of the PostgreSQL store: create, read, list, delete, stream ownership."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from voxgate.ids import new_session_id
from voxgate.store.base import (
    EventType,
    Session,
    SessionState,
    StoreError,
)
from voxgate.store.migrations import Connection
from voxgate.store.postgres.common import (
    LOCK_TRANSCRIPT_HEAD,
    SESSION_COLUMNS,
    session_from_row,
    storable,
    text_key,
)
from voxgate.store.postgres.events import enqueue
from voxgate.store.postgres.frames import Frames


class Sessions(Frames):
    """Session rows; deleting one drops its blocks."""

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
        now = datetime.now(UTC)
        session = Session(
            id=new_session_id(),
            state=SessionState.OPEN,
            created_at=now,
            updated_at=now,
            codec=codec,
            sample_rate=sample_rate,
            channels=channels,
            metadata=metadata,
            tenant=tenant,
        )
        encoded = msgspec.json.encode(metadata).decode()

        async def op(conn: Connection) -> None:
            # ON CONFLICT: a retry after a commit whose answer was lost must not fail.
            await conn.execute(
                "INSERT INTO sessions (id, state, codec, sample_rate, channels, metadata,"
                " created_at, updated_at, tenant)"
                " VALUES ($1, $2, $3, $4, $5, $6::json, $7, $7, $8) ON CONFLICT (id) DO NOTHING",
                session.id,
                session.state.value,
                codec,
                sample_rate,
                channels,
                encoded,
                now,
                tenant,
            )

        await self._run(op)
        return session

    async def get_session(self, session_id: str) -> Session | None:
        if not storable(session_id):
            return None

        async def op(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
            )

        row = await self._run(op)
        return None if row is None else session_from_row(row)

    async def list_sessions(
        self, *, limit: int, after: str | None, tenant: str | None = None
    ) -> list[Session]:
        if limit <= 0:
            return []
        key = text_key(after or "")

        async def op(conn: Connection) -> list[asyncpg.Record]:
            if tenant is None:
                return await conn.fetch(
                    f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id > $1"
                    " AND state <> 'deleted' ORDER BY id LIMIT $2",
                    key,
                    limit,
                )
            return await conn.fetch(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $3 AND id > $1"
                " AND state <> 'deleted' ORDER BY id LIMIT $2",
                key,
                limit,
                tenant,
            )

        return [session_from_row(row) for row in await self._run(op)]

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session's frames (payloads included) in one transaction, keep a tombstone.

        The rows are gone for every reader at once; PostgreSQL reclaims their
        space when (auto)vacuum runs.
        """
        if not storable(session_id):
            return False

        async def op(conn: Connection) -> bool:
            async with conn.transaction():
                state = await conn.fetchval(
                    "SELECT state FROM sessions WHERE id = $1 FOR UPDATE", session_id
                )
                if state is None or state == SessionState.DELETED.value:
                    return False
                await conn.execute("DELETE FROM blocks WHERE session_id = $1", session_id)
                # Wait for transcript posts in flight; later ones find the tombstone.
                await conn.execute(LOCK_TRANSCRIPT_HEAD, session_id)
                await conn.execute("DELETE FROM transcripts WHERE session_id = $1", session_id)
                await conn.execute(
                    "UPDATE sessions SET state = 'deleted', metadata = '{}', next_seq = 0,"
                    " frames = 0, bytes = 0, end_seq = NULL, stream_crc32c = NULL,"
                    " prefix_seq = 0, prefix_crc32c = 0, updated_at = $2 WHERE id = $1",
                    session_id,
                    datetime.now(UTC),
                )
                if self.events:
                    await enqueue(conn, [(session_id, EventType.DELETED)])
                return True

        return await self._run(op)

    # -- stream ownership ----------------------------------------------------------

    async def claim_stream(self, session_id: str) -> int:
        """Bump and return the session's stream generation; StoreError for an unknown id."""
        generation: int | None = None
        if storable(session_id):

            async def op(conn: Connection) -> int | None:
                value: int | None = await conn.fetchval(
                    "UPDATE sessions SET stream_generation = stream_generation + 1"
                    " WHERE id = $1 RETURNING stream_generation",
                    session_id,
                )
                return value

            generation = await self._run(op)
        if generation is None:
            raise StoreError(f"cannot claim the stream of unknown session {session_id}")
        return generation

    async def stream_generations(self, session_ids: Sequence[str]) -> dict[str, int]:
        ids = [sid for sid in session_ids if storable(sid)]
        if not ids:
            return {}

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT id, stream_generation FROM sessions WHERE id = ANY($1::text[])", ids
            )

        return {sid: generation for sid, generation in await self._run(op)}
