"""The embedded store: one class made of its parts."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import sqlite3
import time

from voxgate.durable import fsync_dir
from voxgate.store.base import (
    StoreError,
)
from voxgate.store.sqlite.check import Check
from voxgate.store.sqlite.common import DATA_LOCK, DB_NAME
from voxgate.store.sqlite.retention import Retention
from voxgate.store.sqlite.schema import MIGRATIONS
from voxgate.store.sqlite.sessions import Sessions
from voxgate.store.sqlite.transcripts import Transcripts
from voxgate.store.sqlite.upgrade import Upgrade


class SqliteStore(Sessions, Retention, Transcripts, Upgrade, Check):
    """The embedded :class:`~voxgate.store.base.Store`: SQLite index, payloads in segment files.

    ``durability="fsync"`` makes every commit survive power loss (segment
    ``fdatasync`` then an SQLite commit with ``synchronous=FULL``);
    ``"process"`` survives a killed process only (no segment sync,
    ``synchronous=NORMAL``). Open it in the process that uses it (after any fork).
    ``events=True`` enqueues webhook events with the transitions that cause them.
    """

    # -- open and close ------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="voxgate-store"
        )
        try:
            await self._call(self._open_sync)
        except BaseException:
            executor, self._executor = self._executor, None
            executor.submit(self._close_connection)
            executor.shutdown(wait=False)
            raise

    def _open_sync(self) -> None:
        created = not self.segments_dir.exists()
        self.segments_dir.mkdir(parents=True, exist_ok=True)
        if created and self._fsync:
            fsync_dir(self.data_dir)
        self._data_lock = os.open(
            self.data_dir / DATA_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640
        )
        fcntl.flock(self._data_lock, fcntl.LOCK_SH)
        conn = sqlite3.connect(
            self.data_dir / DB_NAME, isolation_level=None, timeout=self._busy_timeout_s
        )
        self._db = conn
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
        self._set_wal()
        conn.execute(f"PRAGMA synchronous = {'FULL' if self._fsync else 'NORMAL'}")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        # Deleted rows (transcript text, metadata) are zeroed in the file, not just unlinked.
        conn.execute("PRAGMA secure_delete = ON")
        self._migrate()
        self._erase_pending()
        self._convert_frames()
        self._merge_recent()  # what earlier processes left there
        self._reap_segments(orphans=True)

    def _set_wal(self) -> None:
        # Switching to WAL needs a moment alone with the file; another process may be opening too.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if str(mode).lower() != "wal":
                raise StoreError(f"sqlite store {self.data_dir}: cannot enable WAL (got {mode})")
            return

    def _migrate(self) -> None:
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"sqlite store {self.data_dir}: schema version {version} is newer than this "
                    f"voxgate understands ({len(MIGRATIONS)}); upgrade voxgate"
                )
            for steps in MIGRATIONS[version:]:
                for statement in steps:
                    conn.execute(statement)
            if version < len(MIGRATIONS):
                conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.close()
        try:
            await self._call(self._close_sync)
        finally:
            self._executor = None
            executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        if self._db is not None:
            self._merge_recent()
        try:
            if self._segment is not None and self._db is not None:
                self._seal_own()
        finally:
            self._close_connection()

    def _close_connection(self) -> None:
        if self._segment is not None:
            with contextlib.suppress(OSError):
                os.close(self._segment.fd)
            self._segment = None
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._data_lock is not None:
            os.close(self._data_lock)
            self._data_lock = None
