"""The webhook outbox of the embedded store (``voxgate.webhooks`` sends it)."""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

from voxgate.store.base import (
    EventType,
    OutboxEvent,
)
from voxgate.store.outbox import commit_events, event_body
from voxgate.store.sqlite.common import (
    SESSION_COLUMNS,
    Counters,
    now_us,
    session_from_row,
    to_datetime,
)
from voxgate.store.sqlite.plumbing import Plumbing


class Events(Plumbing):
    """Enqueue, claim and settle webhook events, in the same transactions as the changes."""

    # -- webhook outbox --------------------------------------------------------------

    def _enqueue_transitions(self, before: list[list[Any]], counters: list[Counters]) -> None:
        """Inside a commit: enqueue what the commit made of its sessions (usually nothing).

        ``before`` holds the commit's session rows as read (end_seq at 4; the stream
        CRC, set once complete, at 5); ``counters`` the plan's progress, in the same
        order. Costs a comparison per session: transitions are rare.
        """
        due: list[tuple[str, EventType]] = []
        for row, (sid, _, _, _, end_seq, complete, _) in zip(before, counters, strict=True):
            if end_seq is None or row[5] is not None or (row[4] is not None and not complete):
                continue  # not ended yet, complete before, or ended before and still gaps
            assert row[0] == sid, "CommitPlan.progress() lost the order of its sessions"
            due.extend((sid, kind) for kind in commit_events(row[4] is not None, complete))
        if due:
            self._enqueue_sync(due)

    def _enqueue_sync(self, events: list[tuple[str, EventType]]) -> int:
        """Inside a write transaction: enqueue each event with the session as it is now."""
        conn = self._conn
        now = now_us()
        added = 0
        for session_id, kind in events:
            row = conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                continue
            eid, body = event_body(kind, to_datetime(now), session_from_row(row))
            added += conn.execute(
                "INSERT INTO webhook_outbox (id, type, session_id, body, created_at, due_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (eid, kind.value, session_id, body, now, now),
            ).rowcount
        return added

    async def enqueue_event(self, session_id: str, kind: EventType) -> bool:
        return await self._call(self._enqueue_event_sync, session_id, kind)

    def _enqueue_event_sync(self, session_id: str, kind: EventType) -> bool:
        with self._write():
            return self._enqueue_sync([(session_id, kind)]) == 1

    async def claim_events(self, *, limit: int, lease_s: float) -> list[OutboxEvent]:
        if limit <= 0:
            return []
        # Asked first on the reader thread: an idle poll neither queues behind commits
        # nor takes the write lock.
        if not await self._reads().call(_events_due_sync, now_us()):
            return []
        return await self._call(self._claim_events_sync, limit, lease_s)

    def _claim_events_sync(self, limit: int, lease_s: float) -> list[OutboxEvent]:
        now = now_us()
        claim = secrets.token_hex(8)
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE webhook_outbox SET due_at = ?, claim = ? WHERE seq IN ("
                " SELECT seq FROM webhook_outbox WHERE status = 'pending' AND due_at <= ?"
                " ORDER BY seq LIMIT ?)"
                " RETURNING seq, id, type, session_id, body, created_at, attempts",
                (now + int(lease_s * 1_000_000), claim, now, limit),
            ).fetchall()
        rows.sort()
        return [
            OutboxEvent(
                id=eid,
                type=EventType(kind),
                session_id=session_id,
                body=bytes(body),
                created_at=to_datetime(created_at),
                attempts=attempts,
                claim=claim,
            )
            for _, eid, kind, session_id, body, created_at, attempts in rows
        ]

    async def event_delivered(self, event_id: str, claim: str) -> bool:
        return await self._call(self._event_delivered_sync, event_id, claim)

    def _event_delivered_sync(self, event_id: str, claim: str) -> bool:
        with self._write() as conn:
            return (
                conn.execute(
                    "DELETE FROM webhook_outbox WHERE id = ? AND claim = ? AND status = 'pending'",
                    (event_id, claim),
                ).rowcount
                == 1
            )

    async def retry_event(self, event_id: str, claim: str, *, delay_s: float, error: str) -> bool:
        due = now_us() + int(delay_s * 1_000_000)
        return await self._call(self._event_attempted_sync, event_id, claim, "pending", due, error)

    async def fail_event(self, event_id: str, claim: str, *, error: str) -> bool:
        return await self._call(
            self._event_attempted_sync, event_id, claim, "failed", now_us(), error
        )

    def _event_attempted_sync(
        self, event_id: str, claim: str, status: str, due: int, error: str
    ) -> bool:
        with self._write() as conn:
            return (
                conn.execute(
                    "UPDATE webhook_outbox SET status = ?, due_at = ?, attempts = attempts + 1,"
                    " last_error = ? WHERE id = ? AND claim = ? AND status = 'pending'",
                    (status, due, error, event_id, claim),
                ).rowcount
                == 1
            )

    async def event_counts(self) -> dict[str, int]:
        return await self._reads().call(_event_counts_sync)


def _events_due_sync(conn: sqlite3.Connection, now: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM webhook_outbox WHERE status = 'pending' AND due_at <= ? LIMIT 1", (now,)
    ).fetchone()
    return row is not None


def _event_counts_sync(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {"pending": 0, "failed": 0}
    for status, count in conn.execute(
        "SELECT status, COUNT(*) FROM webhook_outbox GROUP BY status"
    ):
        counts[status] = count
    return counts
