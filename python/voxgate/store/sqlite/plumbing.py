"""The embedded store's threads and connections: one writer thread, one reader thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from voxgate.store.base import (
    StoreError,
)
from voxgate.store.sqlite.common import DB_NAME, SEGMENTS_DIR, Segment, T


class Plumbing:
    """The store thread, its connection and transactions; the reader for listeners."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        durability: Literal["fsync", "process"] = "fsync",
        segment_max_bytes: int = 64 * 1024 * 1024,
        busy_timeout_s: float = 30.0,
        events: bool = False,
    ) -> None:
        if durability not in ("fsync", "process"):
            raise ValueError(f"unknown durability {durability!r}: expected 'fsync' or 'process'")
        if segment_max_bytes < 1:
            raise ValueError("segment_max_bytes must be at least 1")
        self.data_dir = Path(data_dir)
        self.segments_dir = self.data_dir / SEGMENTS_DIR
        self.durability = durability
        self.segment_max_bytes = segment_max_bytes
        self._busy_timeout_s = busy_timeout_s
        self._fsync = durability == "fsync"
        self.events = events
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Everything below is touched only on the store thread.
        self._db: sqlite3.Connection | None = None
        self._segment: Segment | None = None
        self._segment_names: dict[int, str] = {}
        # Written on the store thread, read on the event loop too (_merge_due: a stale
        # pair only moves the next merge by a commit).
        self._recent_rows = 0  # appended to recent_extents since the last move
        self._recent_sessions: set[str] = set()  # the sessions those rows belong to
        self._data_lock: int | None = None
        # Reads for listeners run on a thread and connection of their own (see read_frames).
        self._reader: Reader | None = None

    # -- plumbing ----------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(self._guard, fn, *args))

    def _guard(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except StoreError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.data_dir}: database error: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"sqlite store {self.data_dir}: I/O error: {exc}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolls back on any exception."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across statements."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _reads(self) -> Reader:
        if self._executor is None:
            raise StoreError("store is not open")
        if self._reader is None:
            self._reader = Reader(self.data_dir / DB_NAME, self._busy_timeout_s)
        return self._reader


class Reader:
    """A thread and a read-only connection for listener reads.

    Listeners catch up by reading frames and transcripts; on the store thread
    those reads would queue behind (and ahead of) commits. WAL lets this
    connection read beside the writer; payloads are read with ``pread`` on
    segment files opened by name, never through the writer's descriptors.
    """

    def __init__(self, path: Path, busy_timeout_s: float) -> None:
        self._path = path
        self._busy_timeout_s = busy_timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="voxgate-store-read"
        )
        self._db: sqlite3.Connection | None = None  # touched only on the reader thread

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(self._guard, fn, *args))

    def _guard(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._db is None:
                self._db = sqlite3.connect(
                    self._path, isolation_level=None, timeout=self._busy_timeout_s
                )
                self._db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
                self._db.execute("PRAGMA query_only = 1")
            return fn(self._db, *args)
        except StoreError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self._path}: database error: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"sqlite store {self._path}: I/O error: {exc}") from exc

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._executor, self._close_sync)
        self._executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
