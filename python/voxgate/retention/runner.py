"""The retention runner: moves sessions hot -> warm -> cold, one at a time, safely.

hot -> warm, per session:
  1. begin the move: the session stops taking frames (streams close with 4410);
  2. write the archive to ``<archive dir>/.tmp/``, fsync, rename into place, fsync the dir;
  3. read it back and verify it against the store's index (every CRC, the stream CRC);
  4. finish the move: record the archive, drop the frames and erase their bytes.

-> cold: finish the move (frames dropped if it was hot), then remove the archive
file and forget it. Each step is idempotent: a runner killed anywhere leaves
either a begun move, which the next run resumes (keeping an archive already
written and verified, so nothing is archived twice), or a finished one. A
session that fails is logged, counted, its move cancelled, and retried next run;
it never stops the others. Only one runner works at a time per deployment
(:meth:`Store.retention_lock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path

from voxgate.durable import fsync_dir
from voxgate.retention.archive import (
    SUFFIX,
    ArchiveError,
    ArchiveSummary,
    archive_relpath,
    archive_stream,
    indexed_payloads,
    verify_archive,
)
from voxgate.settings import Settings, parse_time_of_day
from voxgate.store.base import (
    ArchiveRecord,
    RetentionRun,
    Session,
    SessionState,
    Store,
    Tier,
    TierMove,
)

log = logging.getLogger("voxgate.retention")

TMP_DIR = ".tmp"
MAX_ERRORS = 100  # errors kept in one run record


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _makedirs(path: Path) -> None:
    """``mkdir -p`` that fsyncs each parent whose new entry it created."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        fsync_dir(directory.parent)


class Retention:
    """Moves a store's sessions between tiers per the settings' retention policy."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.archive_dir = Path(settings.archive_path)
        self.hot_age = timedelta(days=settings.retention_hot_days)
        self.warm_age = timedelta(days=settings.retention_warm_days)
        self.idle_age = timedelta(hours=settings.retention_idle_hours)

    def archive_file(self, record: ArchiveRecord) -> Path:
        return self.archive_dir / record.path

    async def plan(self, now: datetime | None = None) -> list[TierMove]:
        """The moves a run started at ``now`` would make."""
        now = now or datetime.now(UTC)
        return await self.store.retention_moves(
            hot_before=now - self.hot_age,
            warm_before=now - self.warm_age,
            idle_before=now - self.idle_age,
        )

    async def run(
        self,
        *,
        dry_run: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> RetentionRun | None:
        """One run; None when another runner holds the lock. Real runs are recorded.

        ``on_progress(done, total)`` is called as each session move or archive
        discard is finished (moved or failed).

        Raises :class:`~voxgate.store.base.StoreError` only when the store
        cannot even list the work (then nothing was moved).
        """
        async with self.store.retention_lock() as held:
            if not held:
                log.info("retention: another runner holds the lock, not running")
                return None
            return await self._run_locked(dry_run, on_progress or _no_progress)

    async def _run_locked(
        self, dry_run: bool, on_progress: Callable[[int, int], None]
    ) -> RetentionRun:
        started = datetime.now(UTC)
        run = RetentionRun(started_at=started, finished_at=started, outcome="ok", dry_run=dry_run)
        moves = await self.plan(started)
        discards = await self.store.archives_to_discard()
        if dry_run:
            run.archived = sum(move.target is Tier.WARM for move in moves)
            run.expired = sum(move.target is Tier.COLD for move in moves)
            run.discarded = len(discards)
            run.finished_at = datetime.now(UTC)
            return run
        await asyncio.to_thread(self._sweep_tmp)
        total, done = len(moves) + len(discards), 0
        on_progress(done, total)
        for move in moves:
            try:
                if move.target is Tier.WARM:
                    await self._archive(move, run)
                else:
                    await self._expire(move, run)
            except Exception as exc:
                self._failed(run, move.session_id, exc)
            done += 1
            on_progress(done, total)
        for session_id, record in await self.store.archives_to_discard():
            try:
                await self.discard_archive(session_id, record)
                run.discarded += 1
            except Exception as exc:
                self._failed(run, session_id, exc)
            done += 1
            on_progress(done, max(total, done))
        run.finished_at = datetime.now(UTC)
        done = run.archived + run.reused + run.expired + run.discarded
        if run.failed:
            run.outcome = "partial" if done else "failed"
        recorded = await self.store.record_retention_run(run)
        log.info(
            "retention run %s: %s, archived %d, reused %d, expired %d, discarded %d, failed %d",
            recorded.id,
            recorded.outcome,
            run.archived,
            run.reused,
            run.expired,
            run.discarded,
            run.failed,
        )
        return recorded

    @staticmethod
    def _failed(run: RetentionRun, session_id: str, exc: Exception) -> None:
        log.warning("retention: %s not moved, retried next run: %s", session_id, exc)
        run.failed += 1
        if len(run.errors) < MAX_ERRORS:
            run.errors.append(f"{session_id}: {exc}")

    def _sweep_tmp(self) -> None:
        """Remove archives half-written by killed runs (only a lock holder writes there)."""
        tmp = self.archive_dir / TMP_DIR
        if not tmp.is_dir():
            return
        for entry in os.scandir(tmp):
            log.info("retention: removing unfinished archive %s", entry.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)

    # -- hot -> warm -------------------------------------------------------------------

    async def _archive(self, move: TierMove, run: RetentionRun) -> None:
        store, session_id = self.store, move.session_id
        if not move.resumed and not await store.begin_move(
            session_id, Tier.WARM, move.last_activity_at
        ):
            return  # it took frames or was deleted since it was listed: next run decides
        session = await store.get_session(session_id)
        if session is None or session.state is SessionState.DELETED:
            return  # deleted since it was listed: nothing to keep
        try:
            summary, reused = await self._archive_file(session)
            record = ArchiveRecord(
                path=summary.path,
                bytes=summary.summary.bytes,
                payload_crc32c=summary.summary.manifest.payload_crc32c,
                created_at=summary.summary.manifest.created_at,
            )
            if not await store.finish_archive(session_id, record):
                # Deleted meanwhile: its archive must not outlive it.
                await asyncio.to_thread(self._unlink, self.archive_dir / record.path)
                return
        except Exception:
            with contextlib.suppress(Exception):
                await store.cancel_move(session_id)
            raise
        run.bytes_archived += record.bytes
        if reused:
            run.reused += 1
        else:
            run.archived += 1

    async def _archive_file(self, session: Session) -> tuple[_Archived, bool]:
        """The session's verified archive, written now or kept from a killed run."""
        session_id = session.id
        index = await self.store.frame_index(session_id)
        relpath = archive_relpath(session)
        path = self.archive_dir / relpath
        if path.exists():
            try:
                summary = await asyncio.to_thread(
                    verify_archive, path, session_id=session_id, index=index
                )
                log.info("retention: %s already has a sound archive, keeping it", session_id)
                return _Archived(relpath, summary), True
            except ArchiveError as exc:
                log.warning("retention: rewriting unsound archive of %s: %s", session_id, exc)
        chunks = archive_stream(session, index, indexed_payloads(self.store, session_id, index))
        await self._write(session_id, path, chunks)
        try:
            summary = await asyncio.to_thread(
                verify_archive, path, session_id=session_id, index=index
            )
        except ArchiveError:
            await asyncio.to_thread(self._unlink, path)
            raise
        return _Archived(relpath, summary), False

    async def _write(self, session_id: str, path: Path, chunks: AsyncIterator[bytes]) -> None:
        tmp_dir = self.archive_dir / TMP_DIR
        await asyncio.to_thread(_makedirs, tmp_dir)
        tmp = tmp_dir / f"{session_id}.{os.getpid()}{SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(_write_all, fd, chunk)
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            await asyncio.to_thread(_makedirs, path.parent)
            os.replace(tmp, path)
            await asyncio.to_thread(fsync_dir, path.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # -- -> cold -----------------------------------------------------------------------

    async def _expire(self, move: TierMove, run: RetentionRun) -> None:
        store, session_id = self.store, move.session_id
        if not move.resumed and not await store.begin_move(
            session_id, Tier.COLD, move.last_activity_at
        ):
            return
        session = await store.get_session(session_id)
        try:
            if not await store.finish_cold(session_id):
                return
        except Exception:
            with contextlib.suppress(Exception):
                await store.cancel_move(session_id)
            raise
        run.expired += 1
        record = await store.archive_record(session_id)
        if record is not None:
            await self.discard_archive(session_id, record)
        elif session is not None and move.tier is Tier.HOT:
            # A hot session may have an archive from a move to warm that failed after the
            # file was written; nothing records it, so remove it by its path.
            await asyncio.to_thread(self._unlink, self.archive_dir / archive_relpath(session))

    async def discard_archive(self, session_id: str, record: ArchiveRecord) -> None:
        """Remove the session's archive file, then its record."""
        await asyncio.to_thread(self._unlink, self.archive_dir / record.path)
        await self.store.forget_archive(session_id)

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(path.parent)


class _Archived:
    __slots__ = ("path", "summary")

    def __init__(self, path: str, summary: ArchiveSummary) -> None:
        self.path = path
        self.summary = summary


def next_run_after(now: datetime, at: time_of_day) -> datetime:
    """The first moment strictly after ``now`` whose UTC time of day is ``at``."""
    now = now.astimezone(UTC)
    candidate = datetime.combine(now.date(), at.replace(tzinfo=None), tzinfo=UTC)
    if candidate <= now:
        candidate += timedelta(days=1)
    return candidate


class RetentionSchedule:
    """Runs retention inside the server once a day at ``VOXGATE_RETENTION_AT`` (UTC)."""

    def __init__(self, retention: Retention, at: str) -> None:
        self.retention = retention
        self.at = parse_time_of_day(at) if at != "off" else None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.at is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_loop(self.at))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_loop(self, at: time_of_day) -> None:
        due = next_run_after(datetime.now(UTC), at)
        while True:
            now = datetime.now(UTC)
            if now < due:
                # The wall clock, not the loop's monotonic one, says when: check again on waking.
                await asyncio.sleep((due - now).total_seconds())
                continue
            try:
                await self.retention.run()
            except Exception:
                log.exception("retention run failed")
            due = next_run_after(max(due, datetime.now(UTC)), at)


def _no_progress(done: int, total: int) -> None:
    """The default progress callback of :meth:`Retention.run`: nothing."""
