"""The webhook outbox of the PostgreSQL store (``voxgate.webhooks`` sends it)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import asyncpg

from voxgate.store.base import (
    EventType,
    OutboxEvent,
)
from voxgate.store.migrations import Connection
from voxgate.store.outbox import event_body
from voxgate.store.postgres.common import SESSION_COLUMNS, session_from_row, storable
from voxgate.store.postgres.plumbing import Plumbing


class Events(Plumbing):
    """Enqueue, claim and settle webhook events."""

    # -- webhook outbox --------------------------------------------------------------

    async def enqueue_event(self, session_id: str, kind: EventType) -> bool:
        if not storable(session_id):
            return False

        async def op(conn: Connection) -> bool:
            async with conn.transaction():
                return await enqueue(conn, [(session_id, kind)]) == 1

        return await self._run(op)

    async def claim_events(self, *, limit: int, lease_s: float) -> list[OutboxEvent]:
        if limit <= 0:
            return []
        claim = secrets.token_hex(8)

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(_CLAIM_EVENTS, limit, lease_s, claim)

        return [
            OutboxEvent(
                id=row["id"],
                type=EventType(row["type"]),
                session_id=row["session_id"],
                body=row["body"],
                created_at=row["created_at"],
                attempts=row["attempts"],
                claim=claim,
            )
            for row in sorted(await self._run(op), key=lambda row: int(row["seq"]))
        ]

    async def event_delivered(self, event_id: str, claim: str) -> bool:
        async def op(conn: Connection) -> str:
            return await conn.execute(
                "DELETE FROM webhook_outbox WHERE id = $1 AND claim = $2 AND status = 'pending'",
                event_id,
                claim,
            )

        return await self._run(op) == "DELETE 1"

    async def retry_event(self, event_id: str, claim: str, *, delay_s: float, error: str) -> bool:
        return await self._event_attempted(event_id, claim, "pending", delay_s, error)

    async def fail_event(self, event_id: str, claim: str, *, error: str) -> bool:
        return await self._event_attempted(event_id, claim, "failed", 0.0, error)

    async def _event_attempted(
        self, event_id: str, claim: str, status: str, delay_s: float, error: str
    ) -> bool:
        async def op(conn: Connection) -> str:
            return await conn.execute(
                "UPDATE webhook_outbox SET status = $3, attempts = attempts + 1, last_error = $5,"
                " due_at = clock_timestamp() + $4 * interval '1 second'"
                " WHERE id = $1 AND claim = $2 AND status = 'pending'",
                event_id,
                claim,
                status,
                delay_s,
                error,
            )

        return await self._run(op) == "UPDATE 1"

    async def event_counts(self) -> dict[str, int]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch("SELECT status, count(*) FROM webhook_outbox GROUP BY status")

        counts = {"pending": 0, "failed": 0}
        for status, count in await self._run(op):
            counts[status] = count
        return counts


# Lease up to $1 due pending events for $2 seconds under claim $3. SKIP LOCKED: claimers
# running at once take disjoint rows instead of waiting for each other.
_CLAIM_EVENTS = (
    "UPDATE webhook_outbox o SET due_at = clock_timestamp() + $2 * interval '1 second',"
    " claim = $3 FROM (SELECT seq FROM webhook_outbox"
    "  WHERE status = 'pending' AND due_at <= clock_timestamp()"
    "  ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) AS due"
    " WHERE o.seq = due.seq"
    " RETURNING o.seq, o.id, o.type, o.session_id, o.body, o.created_at, o.attempts"
)


async def enqueue(conn: Connection, events: list[tuple[str, EventType]]) -> int:
    """Inside a transaction: enqueue each event with the session as it is now."""
    now = datetime.now(UTC)
    added = 0
    for session_id, kind in events:
        row = await conn.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
        )
        if row is None:
            continue
        eid, body = event_body(kind, now, session_from_row(row))
        status = await conn.execute(
            "INSERT INTO webhook_outbox (id, type, session_id, body, created_at, due_at)"
            " VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
            eid,
            kind.value,
            session_id,
            body,
            now,
        )
        added += status == "INSERT 0 1"
    return added
