"""Retention bookkeeping of the PostgreSQL store: tier moves, archives, run records."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from voxgate.store.base import (
    ArchiveRecord,
    EventType,
    OldestSession,
    RetentionRun,
    Tier,
    TierMove,
    TierStats,
)
from voxgate.store.migrations import Connection
from voxgate.store.postgres.common import FAILURE, RETENTION_LOCK_KEY, storable
from voxgate.store.postgres.events import enqueue
from voxgate.store.postgres.frames import MISSING, Frames


class Retention(Frames):
    """Moves sessions down the tiers; a move out of hot drops the blocks."""

    # -- retention -----------------------------------------------------------------

    async def retention_moves(
        self, *, hot_before: datetime, warm_before: datetime, idle_before: datetime
    ) -> list[TierMove]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT id, tier, tier_target, updated_at FROM sessions WHERE state <> 'deleted'"
                " AND (tier_target IS NOT NULL"
                "  OR (tier = 'hot' AND updated_at < $1"
                "      AND (end_seq IS NOT NULL OR updated_at < $3))"
                "  OR (tier = 'warm' AND updated_at < $2))"
                " ORDER BY tier_target IS NULL, updated_at, id",
                hot_before,
                warm_before,
                idle_before,
            )

        moves = []
        for session_id, tier, target, updated_at in await self._run(op):
            resumed = target is not None
            if target is None:
                target = Tier.COLD if updated_at < warm_before else Tier.WARM
            moves.append(
                TierMove(
                    session_id=session_id,
                    tier=Tier(tier),
                    target=Tier(target),
                    last_activity_at=updated_at,
                    resumed=resumed,
                )
            )
        return moves

    async def begin_move(self, session_id: str, target: Tier, seen_activity: datetime) -> bool:
        if not storable(session_id):
            return False
        sources = ["hot"] if target is Tier.WARM else ["hot", "warm"]

        async def op(conn: Connection) -> str:
            return await conn.execute(
                "UPDATE sessions SET tier_target = $2 WHERE id = $1 AND state <> 'deleted'"
                " AND tier_target IS NULL AND updated_at = $3 AND tier = ANY($4::text[])",
                session_id,
                target.value,
                seen_activity,
                sources,
            )

        return await self._run(op) == "UPDATE 1"

    async def cancel_move(self, session_id: str) -> None:
        if not storable(session_id):
            return

        async def op(conn: Connection) -> None:
            await conn.execute("UPDATE sessions SET tier_target = NULL WHERE id = $1", session_id)

        await self._run(op)

    async def finish_archive(self, session_id: str, archive: ArchiveRecord) -> bool:
        return await self._finish_move(session_id, Tier.WARM, archive)

    async def finish_cold(self, session_id: str) -> bool:
        return await self._finish_move(session_id, Tier.COLD, None)

    async def _finish_move(
        self, session_id: str, target: Tier, archive: ArchiveRecord | None
    ) -> bool:
        if not storable(session_id):
            return False

        async def op(conn: Connection) -> bool:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT tier, kept_missing FROM sessions WHERE id = $1"
                    " AND state <> 'deleted' AND tier_target = $2 FOR UPDATE",
                    session_id,
                    target.value,
                )
                if row is None:
                    return False
                kept = row["kept_missing"]
                if row["tier"] == Tier.HOT.value:
                    gaps = [[a, b] for a, b in await conn.fetch(MISSING, session_id)]
                    kept = msgspec.json.encode(gaps).decode()
                    await conn.execute("DELETE FROM blocks WHERE session_id = $1", session_id)
                await conn.execute(
                    "UPDATE sessions SET tier = $2, tier_target = NULL, tier_changed_at = $3,"
                    " kept_missing = $4::json WHERE id = $1",
                    session_id,
                    target.value,
                    datetime.now(UTC),
                    kept,
                )
                if archive is not None:
                    await conn.execute(
                        "UPDATE sessions SET archive_path = $2, archive_bytes = $3,"
                        " archive_crc32c = $4, archived_at = $5 WHERE id = $1",
                        session_id,
                        archive.path,
                        archive.bytes,
                        archive.payload_crc32c,
                        archive.created_at,
                    )
                if self.events:
                    kind = EventType.ARCHIVED if target is Tier.WARM else EventType.EXPIRED
                    await enqueue(conn, [(session_id, kind)])
                return True

        return await self._run(op)

    async def archive_record(self, session_id: str) -> ArchiveRecord | None:
        if not storable(session_id):
            return None

        async def op(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT archive_path, archive_bytes, archive_crc32c, archived_at FROM sessions"
                " WHERE id = $1 AND archive_path IS NOT NULL",
                session_id,
            )

        row = await self._run(op)
        return None if row is None else _archive_from_row(tuple(row))

    async def archives_to_discard(self) -> list[tuple[str, ArchiveRecord]]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT id, archive_path, archive_bytes, archive_crc32c, archived_at FROM sessions"
                " WHERE archive_path IS NOT NULL AND (tier = 'cold' OR state = 'deleted')"
                " ORDER BY id"
            )

        return [(row[0], _archive_from_row(tuple(row)[1:])) for row in await self._run(op)]

    async def forget_archive(self, session_id: str) -> None:
        if not storable(session_id):
            return

        async def op(conn: Connection) -> None:
            await conn.execute(
                "UPDATE sessions SET archive_path = NULL, archive_bytes = NULL,"
                " archive_crc32c = NULL, archived_at = NULL WHERE id = $1",
                session_id,
            )

        await self._run(op)

    async def storage_stats(self) -> dict[Tier, TierStats]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "WITH t AS (SELECT tier, count(*) AS n, coalesce(sum(bytes), 0)::bigint AS audio,"
                "  coalesce(sum(archive_bytes), 0)::bigint AS archived, min(id) AS oldest"
                "  FROM sessions WHERE state <> 'deleted' GROUP BY tier)"
                " SELECT t.tier, t.n, t.audio, t.archived, t.oldest, s.created_at, s.updated_at"
                " FROM t JOIN sessions s ON s.id = t.oldest"
            )

        stats = {tier: TierStats() for tier in Tier}
        for tier, sessions, audio, archived, oldest, created_at, updated_at in await self._run(op):
            kind = Tier(tier)
            stats[kind] = TierStats(
                sessions=sessions,
                bytes={Tier.HOT: audio, Tier.WARM: archived, Tier.COLD: 0}[kind],
                audio_bytes=audio,
                oldest=OldestSession(id=oldest, created_at=created_at, last_activity_at=updated_at),
            )
        return stats

    async def record_retention_run(self, run: RetentionRun) -> RetentionRun:
        async def op(conn: Connection) -> RetentionRun:
            async with conn.transaction():
                run_id = await conn.fetchval(
                    "INSERT INTO retention_runs (started_at, finished_at, outcome, report)"
                    " VALUES ($1, $2, $3, '{}') RETURNING id",
                    run.started_at,
                    run.finished_at,
                    run.outcome,
                )
                recorded = msgspec.structs.replace(run, id=run_id)
                await conn.execute(
                    "UPDATE retention_runs SET report = $2::json WHERE id = $1",
                    run_id,
                    msgspec.json.encode(recorded).decode(),
                )
                return recorded

        return await self._run(op)

    async def last_retention_run(self) -> RetentionRun | None:
        async def op(conn: Connection) -> str | None:
            value: str | None = await conn.fetchval(
                "SELECT report FROM retention_runs ORDER BY id DESC LIMIT 1"
            )
            return value

        report = await self._run(op)
        return None if report is None else msgspec.json.decode(report, type=RetentionRun)

    @contextlib.asynccontextmanager
    async def retention_lock(self) -> AsyncIterator[bool]:
        """A session-level advisory lock on a connection of its own, held while inside."""
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.timeout_s)
        except (*FAILURE, ValueError) as exc:
            raise self._error(exc) from exc
        try:
            try:
                held = bool(
                    await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY)
                )
            except FAILURE as exc:
                raise self._error(exc) from exc
            yield held
        finally:
            # Closing the connection releases the lock; a killed process's closes by itself.
            await conn.close()


def _archive_from_row(row: Sequence[Any]) -> ArchiveRecord:
    return ArchiveRecord(path=row[0], bytes=row[1], payload_crc32c=row[2], created_at=row[3])
