"""Retention bookkeeping of the embedded store: tier moves, archives, run records."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec

from voxgate.store.base import (
    ArchiveRecord,
    EventType,
    OldestSession,
    RetentionRun,
    SessionState,
    StoreError,
    Tier,
    TierMove,
    TierStats,
)
from voxgate.store.sqlite.common import RETENTION_LOCK, json_text, now_us, to_datetime, us
from voxgate.store.sqlite.frames import Frames, gaps


class Retention(Frames):
    """Moves sessions down the tiers; a move out of hot drops the frames."""

    # -- retention -----------------------------------------------------------------

    async def retention_moves(
        self, *, hot_before: datetime, warm_before: datetime, idle_before: datetime
    ) -> list[TierMove]:
        return await self._call(
            self._retention_moves_sync, us(hot_before), us(warm_before), us(idle_before)
        )

    def _retention_moves_sync(self, hot: int, warm: int, idle: int) -> list[TierMove]:
        moves = []
        for session_id, tier, target, updated_at in self._conn.execute(
            "SELECT id, tier, tier_target, updated_at FROM sessions WHERE state != ?4 AND ("
            " tier_target IS NOT NULL"
            " OR (tier = 'hot' AND updated_at < ?1 AND (end_seq IS NOT NULL OR updated_at < ?3))"
            " OR (tier = 'warm' AND updated_at < ?2)"
            ") ORDER BY tier_target IS NULL, updated_at, id",
            (hot, warm, idle, SessionState.DELETED.value),
        ):
            resumed = target is not None
            if target is None:
                target = Tier.COLD if updated_at < warm else Tier.WARM
            moves.append(
                TierMove(
                    session_id=session_id,
                    tier=Tier(tier),
                    target=Tier(target),
                    last_activity_at=to_datetime(updated_at),
                    resumed=resumed,
                )
            )
        return moves

    async def begin_move(self, session_id: str, target: Tier, seen_activity: datetime) -> bool:
        return await self._call(self._begin_move_sync, session_id, target, us(seen_activity))

    def _begin_move_sync(self, session_id: str, target: Tier, seen: int) -> bool:
        sources = ("hot",) if target is Tier.WARM else ("hot", "warm")
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE sessions SET tier_target = ? WHERE id = ? AND state != ?"
                " AND tier_target IS NULL AND updated_at = ?"
                " AND tier IN (SELECT value FROM json_each(?))",
                (
                    target.value,
                    session_id,
                    SessionState.DELETED.value,
                    seen,
                    json_text(sources),
                ),
            )
            return cursor.rowcount == 1

    async def cancel_move(self, session_id: str) -> None:
        await self._call(self._cancel_move_sync, session_id)

    def _cancel_move_sync(self, session_id: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE sessions SET tier_target = NULL WHERE id = ?", (session_id,))

    async def finish_archive(self, session_id: str, archive: ArchiveRecord) -> bool:
        return await self._call(self._finish_move_sync, session_id, Tier.WARM, archive)

    async def finish_cold(self, session_id: str) -> bool:
        return await self._call(self._finish_move_sync, session_id, Tier.COLD, None)

    def _finish_move_sync(
        self, session_id: str, target: Tier, archive: ArchiveRecord | None
    ) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "SELECT tier, kept_missing FROM sessions"
                " WHERE id = ? AND state != ? AND tier_target = ?",
                (session_id, SessionState.DELETED.value, target.value),
            ).fetchone()
            if row is None:
                return False
            tier, kept = row
            if tier == Tier.HOT.value:
                kept = json_text(gaps(conn, session_id))
                self._drop_frames(session_id)
            conn.execute(
                "UPDATE sessions SET tier = ?, tier_target = NULL, tier_changed_at = ?,"
                " kept_missing = ? WHERE id = ?",
                (target.value, now_us(), kept, session_id),
            )
            if archive is not None:
                conn.execute(
                    "UPDATE sessions SET archive_path = ?, archive_bytes = ?, archive_crc32c = ?,"
                    " archived_at = ? WHERE id = ?",
                    (
                        archive.path,
                        archive.bytes,
                        archive.payload_crc32c,
                        us(archive.created_at),
                        session_id,
                    ),
                )
            if self.events:
                kind = EventType.ARCHIVED if target is Tier.WARM else EventType.EXPIRED
                self._enqueue_sync([(session_id, kind)])
            dropped = tier == Tier.HOT.value
        if dropped:
            self._erase_dropped(session_id)
        return True

    async def archive_record(self, session_id: str) -> ArchiveRecord | None:
        return await self._call(self._archive_record_sync, session_id)

    def _archive_record_sync(self, session_id: str) -> ArchiveRecord | None:
        row = self._conn.execute(
            "SELECT archive_path, archive_bytes, archive_crc32c, archived_at FROM sessions"
            " WHERE id = ? AND archive_path IS NOT NULL",
            (session_id,),
        ).fetchone()
        return None if row is None else _archive_from_row(row)

    async def archives_to_discard(self) -> list[tuple[str, ArchiveRecord]]:
        return await self._call(self._archives_to_discard_sync)

    def _archives_to_discard_sync(self) -> list[tuple[str, ArchiveRecord]]:
        return [
            (row[0], _archive_from_row(row[1:]))
            for row in self._conn.execute(
                "SELECT id, archive_path, archive_bytes, archive_crc32c, archived_at FROM sessions"
                " WHERE archive_path IS NOT NULL AND (tier = 'cold' OR state = ?) ORDER BY id",
                (SessionState.DELETED.value,),
            )
        ]

    async def forget_archive(self, session_id: str) -> None:
        await self._call(self._forget_archive_sync, session_id)

    def _forget_archive_sync(self, session_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE sessions SET archive_path = NULL, archive_bytes = NULL,"
                " archive_crc32c = NULL, archived_at = NULL WHERE id = ?",
                (session_id,),
            )

    async def storage_stats(self) -> dict[Tier, TierStats]:
        return await self._call(self._storage_stats_sync)

    def _storage_stats_sync(self) -> dict[Tier, TierStats]:
        stats = {tier: TierStats() for tier in Tier}
        with self._read() as conn:
            for tier, sessions, audio, archived, oldest_id in conn.execute(
                "SELECT tier, COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(archive_bytes), 0),"
                " MIN(id) FROM sessions WHERE state != ? GROUP BY tier",
                (SessionState.DELETED.value,),
            ).fetchall():
                kind = Tier(tier)
                oldest = conn.execute(
                    "SELECT created_at, updated_at FROM sessions WHERE id = ?", (oldest_id,)
                ).fetchone()
                stats[kind] = TierStats(
                    sessions=sessions,
                    bytes={Tier.HOT: audio, Tier.WARM: archived, Tier.COLD: 0}[kind],
                    audio_bytes=audio,
                    oldest=OldestSession(
                        id=oldest_id,
                        created_at=to_datetime(oldest[0]),
                        last_activity_at=to_datetime(oldest[1]),
                    ),
                )
        return stats

    async def record_retention_run(self, run: RetentionRun) -> RetentionRun:
        return await self._call(self._record_retention_run_sync, run)

    def _record_retention_run_sync(self, run: RetentionRun) -> RetentionRun:
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO retention_runs (started_at, finished_at, outcome, report)"
                " VALUES (?, ?, ?, '{}')",
                (us(run.started_at), us(run.finished_at), run.outcome),
            )
            assert cursor.lastrowid is not None
            recorded = msgspec.structs.replace(run, id=cursor.lastrowid)
            conn.execute(
                "UPDATE retention_runs SET report = ? WHERE id = ?",
                (msgspec.json.encode(recorded).decode(), recorded.id),
            )
        return recorded

    async def last_retention_run(self) -> RetentionRun | None:
        return await self._call(self._last_retention_run_sync)

    def _last_retention_run_sync(self) -> RetentionRun | None:
        row = self._conn.execute(
            "SELECT report FROM retention_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else msgspec.json.decode(row[0], type=RetentionRun)

    @contextlib.asynccontextmanager
    async def retention_lock(self) -> AsyncIterator[bool]:
        """A non-blocking ``flock`` on ``retention.lock`` in the data dir."""
        try:
            fd = os.open(
                self.data_dir / RETENTION_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
        except OSError as exc:
            raise StoreError(f"sqlite store {self.data_dir}: retention lock: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
        finally:
            os.close(fd)


def _archive_from_row(row: tuple[Any, ...]) -> ArchiveRecord:
    return ArchiveRecord(
        path=row[0], bytes=row[1], payload_crc32c=row[2], created_at=to_datetime(row[3])
    )
