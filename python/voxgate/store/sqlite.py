"""The embedded store: an SQLite index plus append-only segment files for payloads.

Layout of a data dir::

    voxgate.db (+ -wal, -shm)   sessions, frame index, segment registry (WAL mode)
    segments/<ms>-<pid>-<random>.seg
                                 payload bytes, back to back, no headers

Several processes may share one data dir. SQLite serializes their write
transactions; each process appends only to segment files it created itself and
holds an exclusive ``flock`` on the one it is writing, so another process can
tell a live writer's segment from a dead one's. Offsets are never reused: a new
process always starts a new segment, and a failed commit truncates its own
bytes away before anything else is written there.

Commit order, per batch: index rows are inserted inside ``BEGIN IMMEDIATE``,
payloads are appended with one vectored write, the segment is ``fdatasync``-ed
(durability ``fsync`` only), then the transaction commits (``synchronous=FULL``
for ``fsync``, ``NORMAL`` for ``process``). An index row is therefore never
durable before its payload; bytes written past the last committed frame by a
crashed process are never indexed and are cut off when the segment is reaped.

Deleting a session records the byte ranges to erase in the same transaction
that drops its index rows, then overwrites them with zeros and fsyncs; ranges
still pending after a crash are erased when the next store opens. Segments
without live frames are unlinked once nobody writes to them.

All blocking work runs on one dedicated thread per store, never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import orjson

from voxgate.core import native
from voxgate.durable import fsync_dir
from voxgate.ids import new_session_id
from voxgate.store.base import (
    ArchiveRecord,
    CommitResult,
    EventType,
    FrameEntry,
    ListenSnapshot,
    OldestSession,
    OutboxEvent,
    Outcome,
    Part,
    Progress,
    RetentionRun,
    Session,
    SessionState,
    StoredFrame,
    StoreError,
    Tier,
    TierMove,
    TierStats,
    TimestampValue,
    Transcript,
    TranscriptIn,
    TranscriptOutcome,
    TranscriptResult,
)
from voxgate.store.outbox import commit_events, event_body

log = logging.getLogger("voxgate.store")

FLAG_END, crc32c, crc32c_combine = native.FLAG_END, native.crc32c, native.crc32c_combine
CommitPlan = native.CommitPlan
_OUTCOMES = tuple(Outcome)  # indexed by the core's outcome numbers

T = TypeVar("T")

DB_NAME = "voxgate.db"
# Every open store holds a shared flock on it; ``voxgate db restore`` needs it exclusively.
DATA_LOCK = "voxgate.lock"
RETENTION_LOCK = "retention.lock"
SEGMENTS_DIR = "segments"
SEGMENT_SUFFIX = ".seg"

# Frames and bytes read per hop to the store thread by ``read_payloads``.
READ_BATCH_FRAMES = 256
READ_BATCH_BYTES = 4 * 1024 * 1024
_ZEROS = bytes(1024 * 1024)
_MAX_SEQ = (1 << 63) - 1
_U64 = 1 << 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _iov_max() -> int:
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 1024
    return min(limit, 1024) if limit > 0 else 1024


_IOV_MAX = _iov_max()
# CommitPlan.progress(): session_id, next_seq, frames, bytes, end_seq, complete, stream CRC.
_Counters = tuple[str, int, int, int, int | None, bool, int | None]
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

# MIGRATIONS[i] brings the schema from ``user_version`` i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY NOT NULL,
            state TEXT NOT NULL,
            codec TEXT,
            sample_rate INTEGER,
            channels INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,           -- microseconds since the epoch, UTC
            updated_at INTEGER NOT NULL,
            next_seq INTEGER NOT NULL DEFAULT 0,   -- one past the highest stored seq
            frames INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL DEFAULT 0,
            end_seq INTEGER,
            stream_crc32c INTEGER,
            stream_generation INTEGER NOT NULL DEFAULT 0,
            -- Every seq below prefix_seq is stored, prefix_seq itself is not;
            -- prefix_crc32c is the CRC-32C of their payloads in seq order.
            prefix_seq INTEGER NOT NULL DEFAULT 0,
            prefix_crc32c INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID""",
        """CREATE TABLE segments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so ids name one file forever
            name TEXT NOT NULL UNIQUE,             -- file name under segments/
            sealed INTEGER NOT NULL DEFAULT 0,     -- 1: nothing will be appended any more
            live INTEGER NOT NULL DEFAULT 0,       -- indexed frames stored in it
            end_offset INTEGER NOT NULL DEFAULT 0, -- end of the last committed payload
            pid INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        )""",
        """CREATE TABLE frames (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            flags INTEGER NOT NULL,
            pts_us INTEGER NOT NULL,               -- u64 stored as two's-complement i64
            length INTEGER NOT NULL,
            crc32c INTEGER NOT NULL,
            segment INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID""",
        # Byte ranges of deleted frames not yet overwritten with zeros.
        """CREATE TABLE erasures (
            segment INTEGER NOT NULL,
            offset INTEGER NOT NULL,
            length INTEGER NOT NULL
        )""",
    ),
    # 2: transcripts (Store block "transcripts and listeners").
    (
        """CREATE TABLE transcripts (
            session_id TEXT NOT NULL,
            id INTEGER NOT NULL,                   -- per session: 1, 2, 3, ...
            role TEXT NOT NULL,
            seq INTEGER,                           -- the client's utterance number, if given
            is_final INTEGER NOT NULL,
            text TEXT NOT NULL,
            timestamp TEXT NOT NULL,               -- the client's value, JSON-encoded
            supersedes INTEGER,
            received_at INTEGER NOT NULL,          -- microseconds since the epoch, UTC
            PRIMARY KEY (session_id, id)
        ) WITHOUT ROWID""",
        "CREATE INDEX transcripts_by_key ON transcripts (session_id, role, seq, is_final)",
    ),
    # 3: retention: tiers, archive bookkeeping, run records.
    (
        "ALTER TABLE sessions ADD COLUMN tier TEXT NOT NULL DEFAULT 'hot'",
        "ALTER TABLE sessions ADD COLUMN tier_target TEXT",  # a begun move: 'warm' or 'cold'
        "ALTER TABLE sessions ADD COLUMN tier_changed_at INTEGER",
        "ALTER TABLE sessions ADD COLUMN kept_missing TEXT",  # gaps as they were when moved
        "ALTER TABLE sessions ADD COLUMN archive_path TEXT",
        "ALTER TABLE sessions ADD COLUMN archive_bytes INTEGER",
        "ALTER TABLE sessions ADD COLUMN archive_crc32c INTEGER",
        "ALTER TABLE sessions ADD COLUMN archived_at INTEGER",
        "CREATE INDEX sessions_by_tier ON sessions (tier, updated_at)",
        """CREATE TABLE retention_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            started_at INTEGER NOT NULL,
            finished_at INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            report TEXT NOT NULL                   -- the RetentionRun as JSON
        )""",
    ),
    # 4: webhook outbox (Store block "webhook outbox"; voxgate.webhooks sends it).
    (
        """CREATE TABLE webhook_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, -- enqueue order: events are claimed by it
            id TEXT NOT NULL UNIQUE,               -- the event id receivers dedupe on
            type TEXT NOT NULL,
            session_id TEXT NOT NULL,
            body BLOB NOT NULL,                    -- the JSON body, fixed when enqueued
            created_at INTEGER NOT NULL,           -- microseconds since the epoch, UTC
            status TEXT NOT NULL DEFAULT 'pending', -- 'pending' or 'failed' (given up)
            attempts INTEGER NOT NULL DEFAULT 0,   -- failed attempts
            -- Pending: when the next attempt is due. A claim moves it to the end of its
            -- lease, so a claimed event is due again only if its claimer never answers.
            due_at INTEGER NOT NULL,
            claim TEXT,                            -- token of the latest claim
            last_error TEXT
        )""",
        "CREATE INDEX webhook_outbox_due ON webhook_outbox (status, due_at)",
    ),
    # 5: tenants (docs/operations.md "Tenants").
    (
        # The API key name that created the session (NULL: created before tenants).
        "ALTER TABLE sessions ADD COLUMN tenant TEXT",
        "CREATE INDEX sessions_by_tenant ON sessions (tenant, id)",
    ),
)


def _from_json(columns: int) -> str:
    return ", ".join(f"json_extract(value, '$[{i}]')" for i in range(columns))


_INSERT_FRAMES = (
    "INSERT INTO frames (session_id, seq, flags, pts_us, length, crc32c, segment, offset)"
    f" SELECT {_from_json(8)} FROM json_each(?)"
)
_UPDATE_SESSIONS = (
    "UPDATE sessions SET state = u.c0, next_seq = u.c1, frames = u.c2, bytes = u.c3,"
    " end_seq = u.c4, stream_crc32c = u.c5, prefix_seq = u.c6, prefix_crc32c = u.c7,"
    " updated_at = u.c8 FROM (SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]') AS c{i}" for i in range(10))
    + " FROM json_each(?)) AS u WHERE sessions.id = u.c9"
)

_SESSION_COLUMNS = (
    "id, state, codec, sample_rate, channels, metadata, created_at, updated_at,"
    " next_seq, frames, bytes, end_seq, stream_crc32c, tier, tenant"
)


def _json_text(value: Any) -> str:
    """``value`` as JSON text, for SQLite's JSON functions (which read text, not bytes)."""
    return orjson.dumps(value).decode()


def _now_us() -> int:
    return time.time_ns() // 1000


def _to_datetime(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _session_from_row(row: sqlite3.Row | tuple[Any, ...]) -> Session:
    return Session(
        id=row[0],
        state=SessionState(row[1]),
        codec=row[2],
        sample_rate=row[3],
        channels=row[4],
        metadata=orjson.loads(row[5]),
        created_at=_to_datetime(row[6]),
        updated_at=_to_datetime(row[7]),
        next_seq=row[8],
        frames=row[9],
        bytes=row[10],
        end_seq=row[11],
        stream_crc32c=row[12],
        tier=Tier(row[13]),
        tenant=row[14],
    )


def _payload_len(payload: bytes | memoryview) -> int:
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


def _pwrite_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
    """Write ``buffers`` back to back at ``offset`` with as few syscalls as possible."""
    pending = list(buffers)
    i = 0
    while i < len(pending):
        if not _payload_len(pending[i]):
            i += 1
            continue
        written = os.pwritev(fd, pending[i : i + _IOV_MAX], offset)
        if written <= 0:
            raise OSError(errno.EIO, "segment write made no progress")
        offset += written
        while written:
            size = _payload_len(pending[i])
            if written >= size:
                written -= size
                i += 1
            else:  # short write: go on from inside this buffer
                pending[i] = memoryview(pending[i]).cast("B")[written:]
                written = 0
    return offset


def _try_lock(path: Path) -> int | None:
    """Open ``path`` and take its writer lock without waiting.

    Returns the locked fd, or None when a live writer holds the lock.
    Raises FileNotFoundError when the file is gone.
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Segment:
    """This process's open segment: the only file it appends to."""

    __slots__ = ("fd", "id", "name", "offset")

    def __init__(self, segment_id: int, name: str, fd: int) -> None:
        self.id = segment_id
        self.name = name
        self.fd = fd  # holds the flock that marks the segment as being written
        self.offset = 0


class SqliteStore:
    """The embedded :class:`~voxgate.store.base.Store`: SQLite index, payloads in segment files.

    ``durability="fsync"`` makes every commit survive power loss (segment
    ``fdatasync`` then an SQLite commit with ``synchronous=FULL``);
    ``"process"`` survives a killed process only (no segment sync,
    ``synchronous=NORMAL``). Open it in the process that uses it (after any fork).
    ``events=True`` enqueues webhook events with the transitions that cause them.
    """

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
        self._segment: _Segment | None = None
        self._segment_names: dict[int, str] = {}
        self._data_lock: int | None = None
        # Reads for listeners run on a thread and connection of their own (see read_frames).
        self._reader: _Reader | None = None

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

    # -- segments ------------------------------------------------------------------

    def _segment_path(self, name: str) -> Path:
        return self.segments_dir / name

    def _segment_name(self, segment_id: int) -> str | None:
        name = self._segment_names.get(segment_id)
        if name is None:
            row = self._conn.execute(
                "SELECT name FROM segments WHERE id = ?", (segment_id,)
            ).fetchone()
            if row is None:
                return None
            name = self._segment_names[segment_id] = str(row[0])
        return name

    def _writable_segment(self) -> _Segment:
        segment = self._segment
        if segment is not None and segment.offset < self.segment_max_bytes:
            return segment
        if segment is not None:
            self._seal_own()
        self._reap_segments()
        self._segment = self._create_segment()
        return self._segment

    def _create_segment(self) -> _Segment:
        for _ in range(100):
            name = f"{time.time_ns() // 1_000_000:013d}-{os.getpid()}-{secrets.token_hex(5)}"
            name += SEGMENT_SUFFIX
            path = self._segment_path(name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # A reaper may have taken the brand-new, unregistered file for an
                # orphan and unlinked it before we locked it: then start over.
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError(path)
            except (BlockingIOError, FileNotFoundError):
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                if self._fsync:
                    fsync_dir(self.segments_dir)
                with self._write() as conn:
                    cursor = conn.execute(
                        "INSERT INTO segments (name, pid, created_at) VALUES (?, ?, ?)",
                        (name, os.getpid(), _now_us()),
                    )
                    segment_id = cursor.lastrowid
                assert segment_id is not None
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(fd)
                raise
            self._segment_names[segment_id] = name
            return _Segment(segment_id, name, fd)
        raise StoreError(f"sqlite store {self.data_dir}: cannot create a segment file")

    def _seal_own(self) -> None:
        """Seal this process's segment (unlinking it if nothing in it is live) and let it go."""
        segment = self._segment
        assert segment is not None
        with self._write() as conn:
            conn.execute("UPDATE segments SET sealed = 1 WHERE id = ?", (segment.id,))
            dropped = self._drop_if_empty(segment.id)
        self._segment = None
        if dropped:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._segment_path(segment.name))
        os.close(segment.fd)

    def _drop_if_empty(self, segment_id: int) -> bool:
        """Inside a write transaction: forget the segment if it holds no live frame."""
        conn = self._conn
        cursor = conn.execute("DELETE FROM segments WHERE id = ? AND live = 0", (segment_id,))
        if cursor.rowcount == 0:
            return False
        conn.execute("DELETE FROM erasures WHERE segment = ?", (segment_id,))
        self._segment_names.pop(segment_id, None)
        return True

    def _retire(self, segment: _Segment) -> None:
        """A commit failed after writing payloads: never append to this segment again.

        Whether the commit landed is the index's to say (after an I/O error at
        COMMIT it may have), so nothing is cut here: releasing the lock lets the
        next reaper (this store's next commit, or any other process) truncate the
        file to the ``end_offset`` the index recorded, and seal it.
        """
        with contextlib.suppress(OSError):
            os.close(segment.fd)
        if self._segment is segment:
            self._segment = None

    def _reap_segments(self, ids: Sequence[int] | None = None, *, orphans: bool = False) -> None:
        """Seal segments whose writer is gone and unlink those without live frames.

        A segment is being written while its writer holds the flock; once the
        lock can be taken, its bytes past the last commit are garbage and are cut.
        """
        conn = self._conn
        own = self._segment.id if self._segment is not None else None
        if ids is None:
            rows = conn.execute(
                "SELECT id, name FROM segments WHERE sealed = 0 OR live = 0"
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT id, name FROM segments WHERE id IN (SELECT value FROM json_each(?))",
                (_json_text(list(ids)),),
            ).fetchall()
        for segment_id, name in rows:
            if segment_id == own:
                continue
            path = self._segment_path(name)
            try:
                fd = _try_lock(path)
                if fd is None:
                    continue  # a live writer
            except FileNotFoundError:
                fd = None
            try:
                with self._write():
                    row = conn.execute(
                        "SELECT sealed, live, end_offset FROM segments WHERE id = ?", (segment_id,)
                    ).fetchone()
                    if row is None:
                        continue
                    sealed, _, end_offset = row
                    dropped = self._drop_if_empty(segment_id)
                    if not dropped and not sealed:
                        if fd is not None and os.fstat(fd).st_size > end_offset:
                            os.ftruncate(fd, end_offset)
                            if self._fsync:
                                _datasync(fd)
                        conn.execute("UPDATE segments SET sealed = 1 WHERE id = ?", (segment_id,))
                    if dropped:
                        log.debug("dropping empty segment %s", name)
                if dropped:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            finally:
                if fd is not None:
                    os.close(fd)
        if orphans:
            self._reap_orphan_files()

    def _reap_orphan_files(self) -> None:
        """Unlink segment files no row names (a crash between creating and registering them)."""
        known = {row[0] for row in self._conn.execute("SELECT name FROM segments")}
        for entry in os.scandir(self.segments_dir):
            if not entry.name.endswith(SEGMENT_SUFFIX) or entry.name in known:
                continue
            try:
                fd = _try_lock(Path(entry.path))
            except FileNotFoundError:
                continue
            if fd is None:
                continue
            try:
                registered = self._conn.execute(
                    "SELECT 1 FROM segments WHERE name = ?", (entry.name,)
                ).fetchone()
                if registered is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
            finally:
                os.close(fd)

    def _erase_pending(self) -> list[int]:
        """Overwrite every recorded erasure range with zeros; returns the segments touched."""
        conn = self._conn
        rows = conn.execute(
            "SELECT e.rowid, e.segment, e.offset, e.length, s.name FROM erasures e"
            " LEFT JOIN segments s ON s.id = e.segment ORDER BY e.segment, e.offset"
        ).fetchall()
        if not rows:
            return []
        by_segment: dict[int, tuple[str | None, list[tuple[int, int]]]] = {}
        for _, segment_id, offset, length, name in rows:
            by_segment.setdefault(segment_id, (name, []))[1].append((offset, length))
        for name, ranges in by_segment.values():
            if name is None:
                continue  # the segment is gone already
            try:
                fd = os.open(self._segment_path(name), os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                for offset, length in ranges:
                    done = 0
                    while done < length:
                        size = min(len(_ZEROS), length - done)
                        done += os.pwrite(fd, memoryview(_ZEROS)[:size], offset + done)
                # Erasure is a promise to the user: always make it durable.
                _datasync(fd)
            finally:
                os.close(fd)
        with self._write():
            conn.execute(
                "DELETE FROM erasures WHERE rowid IN (SELECT value FROM json_each(?))",
                (_json_text([row[0] for row in rows]),),
            )
        return list(by_segment)

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
        now = _now_us()
        session = Session(
            id=new_session_id(),
            state=SessionState.OPEN,
            created_at=_to_datetime(now),
            updated_at=_to_datetime(now),
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
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return None if row is None else _session_from_row(row)

    async def list_sessions(
        self, *, limit: int, after: str | None, tenant: str | None = None
    ) -> list[Session]:
        if limit <= 0:
            return []
        return await self._call(self._list_sessions_sync, limit, after or "", tenant)

    def _list_sessions_sync(self, limit: int, after: str, tenant: str | None) -> list[Session]:
        if tenant is None:
            rows = self._conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id > ? AND state != ?"
                " ORDER BY id LIMIT ?",
                (after, SessionState.DELETED.value, limit),
            ).fetchall()
        else:
            rows = self._conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant = ? AND id > ?"
                " AND state != ? ORDER BY id LIMIT ?",
                (tenant, after, SessionState.DELETED.value, limit),
            ).fetchall()
        return [_session_from_row(row) for row in rows]

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
                (SessionState.DELETED.value, _now_us(), session_id),
            )
            if self.events:
                self._enqueue_sync([(session_id, EventType.DELETED)])
        self._erase_dropped(session_id, checkpoint=bool(said))
        return True

    def _drop_frames(self, session_id: str) -> None:
        """Inside a write transaction: drop the session's frames, recording their bytes to erase."""
        conn = self._conn
        ranges: list[list[int]] = []  # [segment, offset, length], adjacent ones merged
        counts: dict[int, int] = {}
        for segment_id, offset, length in conn.execute(
            "SELECT segment, offset, length FROM frames WHERE session_id = ?"
            " ORDER BY segment, offset",
            (session_id,),
        ):
            counts[segment_id] = counts.get(segment_id, 0) + 1
            if length == 0:
                continue
            last = ranges[-1] if ranges else None
            if last is not None and last[0] == segment_id and last[1] + last[2] == offset:
                last[2] += length
            else:
                ranges.append([segment_id, offset, length])
        conn.executemany("INSERT INTO erasures (segment, offset, length) VALUES (?, ?, ?)", ranges)
        conn.executemany(
            "UPDATE segments SET live = live - ? WHERE id = ?",
            [(n, segment_id) for segment_id, n in counts.items()],
        )
        conn.execute("DELETE FROM frames WHERE session_id = ?", (session_id,))

    def _erase_dropped(self, session_id: str, *, checkpoint: bool = False) -> None:
        """After committing :meth:`_drop_frames`: overwrite the bytes, unlink emptied segments.

        ``checkpoint``: deleted rows held text (transcripts) the WAL still keeps.
        """
        try:
            if checkpoint:
                # The WAL still holds page images with the text: write them back and cut it.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            touched = self._erase_pending()
            self._reap_segments(touched)
        except (OSError, sqlite3.Error) as exc:
            # The index no longer names them; the recorded ranges are erased by the next
            # delete, move or open.
            log.warning("erasing payload bytes of session %s failed: %s", session_id, exc)

    # -- frames --------------------------------------------------------------------

    async def missing(self, session_id: str) -> list[list[int]]:
        return await self._call(self._missing_sync, session_id)

    def _missing_sync(self, session_id: str) -> list[list[int]]:
        with self._read() as conn:
            return _gaps(conn, session_id)

    async def commit(self, frames: Sequence[Part]) -> CommitResult:
        if not frames:
            return CommitResult([], {})
        return await self._call(self._commit_sync, frames)

    def _commit_sync(self, frames: Sequence[Part]) -> CommitResult:
        segment = self._writable_segment()
        conn = self._conn
        start = segment.offset
        wrote = False
        counters: list[_Counters] | None = None
        session_ids = list(dict.fromkeys(frame.session_id for frame in frames))
        try:
            conn.execute("BEGIN IMMEDIATE")
            # One row holding every session as JSON: one step, one GIL hand-over.
            (found,) = conn.execute(
                "SELECT json_group_array(json_array(id, next_seq, frames, bytes, end_seq,"
                " stream_crc32c, prefix_seq, prefix_crc32c)) FROM sessions"
                " WHERE id IN (SELECT value FROM json_each(?)) AND state != ?"
                " AND tier = 'hot' AND tier_target IS NULL",
                (orjson.dumps(session_ids), SessionState.DELETED.value),
            ).fetchone()
            # The per-frame work (judging, index rows, prefix CRCs) runs in the core, in
            # one call per step: the store thread holds the GIL only briefly.
            before = orjson.loads(found)
            plan = CommitPlan(frames, before)
            # What is stored already at the seqs asked for. Seqs at or past a session's
            # next_seq cannot be stored yet (we hold the write lock): only resent frames
            # need a look-up, not the ones streamed in order.
            for session_id, wanted in plan.lookups():
                for seq, crc, length, flags in conn.execute(
                    "SELECT seq, crc32c, length, flags FROM frames WHERE session_id = ?"
                    " AND seq IN (SELECT value FROM json_each(?))",
                    (session_id, _json_text(wanted)),
                ):
                    plan.known(session_id, seq, crc, length, flags)
            rows, payloads, nrows, offset = plan.judge(segment.id, start)
            if nrows:
                # One statement for the whole batch: executemany would drop and retake the
                # GIL once per row, and under load each retake waits on the event loop.
                conn.execute(_INSERT_FRAMES, (rows,))
                if payloads:
                    wrote = True
                    _pwrite_all(segment.fd, payloads, start)
                    if self._fsync:
                        _datasync(segment.fd)
                conn.execute(
                    "UPDATE segments SET live = live + ?, end_offset = ? WHERE id = ?",
                    (nrows, offset, segment.id),
                )
                for session_id, prefix_seq in plan.advance():
                    # A gap just closed: walk frames stored by earlier commits to the next gap.
                    cursor = conn.execute(
                        "SELECT seq, crc32c, length FROM frames WHERE session_id = ?"
                        " AND seq >= ? ORDER BY seq",
                        (session_id, prefix_seq),
                    )
                    try:
                        plan.extend(session_id, cursor)
                    finally:
                        cursor.close()
                conn.execute(_UPDATE_SESSIONS, (plan.finish(_now_us()),))
                if self.events:
                    # Webhooks: read the counters inside the transaction, to enqueue with it.
                    counters = plan.progress()
                    self._enqueue_transitions(before, counters)
            conn.execute("COMMIT")
            segment.offset = offset
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if wrote:
                self._retire(segment)
            raise
        return CommitResult(plan.outcomes(_OUTCOMES), plan.progress_by_session(Progress))

    async def frame_index(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> list[FrameEntry]:
        return await self._call(
            self._frame_index_sync,
            session_id,
            first_seq,
            _MAX_SEQ if last_seq is None else last_seq,
        )

    def _frame_index_sync(self, session_id: str, first: int, last: int) -> list[FrameEntry]:
        return [
            FrameEntry(seq, flags, pts + _U64 if pts < 0 else pts, length, crc)
            for seq, flags, pts, length, crc in self._conn.execute(
                "SELECT seq, flags, pts_us, length, crc32c FROM frames"
                " WHERE session_id = ? AND seq >= ? AND seq <= ? ORDER BY seq",
                (session_id, first, last),
            )
        ]

    async def read_payloads(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(seq, payload)`` in seq order, at most 256 frames or 4 MiB per thread hop.

        Every payload is checked against its stored CRC-32C; a mismatch raises
        :class:`StoreError`, unless the session was deleted meanwhile, which ends
        the iteration.
        """
        last = _MAX_SEQ if last_seq is None else last_seq
        seq = first_seq
        while seq <= last:
            batch, more = await self._call(self._read_batch_sync, session_id, seq, last)
            for item in batch:
                yield item
            if not more or not batch:
                return
            seq = batch[-1][0] + 1

    def _read_batch_sync(
        self, session_id: str, first: int, last: int
    ) -> tuple[list[tuple[int, bytes]], bool]:
        rows = self._conn.execute(
            "SELECT seq, length, crc32c, segment, offset FROM frames"
            " WHERE session_id = ? AND seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
            (session_id, first, last, READ_BATCH_FRAMES),
        ).fetchall()
        more = len(rows) == READ_BATCH_FRAMES
        out: list[tuple[int, bytes]] = []
        fds: dict[int, int] = {}
        own = self._segment
        try:
            total = 0
            for seq, length, crc, segment_id, offset in rows:
                if out and total + length > READ_BATCH_BYTES:
                    return out, True
                total += length
                if length == 0:
                    out.append((seq, b""))
                    continue
                payload = self._pread(fds, own, segment_id, offset, length)
                if payload is None or crc32c(payload) != crc:
                    if self._frame_gone(session_id, seq):
                        return out, False  # deleted while we read: stop here
                    name = self._segment_name(segment_id)
                    raise StoreError(
                        f"sqlite store {self.data_dir}: payload of {session_id} seq {seq}"
                        f" is corrupt in segment {name} at offset {offset}"
                    )
                out.append((seq, payload))
        finally:
            for fd in fds.values():
                os.close(fd)
        return out, more

    def _pread(
        self, fds: dict[int, int], own: _Segment | None, segment_id: int, offset: int, length: int
    ) -> bytes | None:
        if own is not None and own.id == segment_id:
            fd = own.fd
        else:
            fd = fds.get(segment_id, -1)
            if fd < 0:
                name = self._segment_name(segment_id)
                if name is None:
                    return None
                try:
                    fd = fds[segment_id] = os.open(
                        self._segment_path(name), os.O_RDONLY | os.O_CLOEXEC
                    )
                except FileNotFoundError:
                    return None
        payload = os.pread(fd, length, offset)
        return payload if len(payload) == length else None

    def _frame_gone(self, session_id: str, seq: int) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM frames WHERE session_id = ? AND seq = ?", (session_id, seq)
        ).fetchone()
        return row is None

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
                (_json_text(session_ids),),
            )
        }

    # -- retention -----------------------------------------------------------------

    async def retention_moves(
        self, *, hot_before: datetime, warm_before: datetime, idle_before: datetime
    ) -> list[TierMove]:
        return await self._call(
            self._retention_moves_sync, _us(hot_before), _us(warm_before), _us(idle_before)
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
                    last_activity_at=_to_datetime(updated_at),
                    resumed=resumed,
                )
            )
        return moves

    async def begin_move(self, session_id: str, target: Tier, seen_activity: datetime) -> bool:
        return await self._call(self._begin_move_sync, session_id, target, _us(seen_activity))

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
                    _json_text(sources),
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
                kept = _json_text(_gaps(conn, session_id))
                self._drop_frames(session_id)
            conn.execute(
                "UPDATE sessions SET tier = ?, tier_target = NULL, tier_changed_at = ?,"
                " kept_missing = ? WHERE id = ?",
                (target.value, _now_us(), kept, session_id),
            )
            if archive is not None:
                conn.execute(
                    "UPDATE sessions SET archive_path = ?, archive_bytes = ?, archive_crc32c = ?,"
                    " archived_at = ? WHERE id = ?",
                    (
                        archive.path,
                        archive.bytes,
                        archive.payload_crc32c,
                        _us(archive.created_at),
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
                        created_at=_to_datetime(oldest[0]),
                        last_activity_at=_to_datetime(oldest[1]),
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
                (_us(run.started_at), _us(run.finished_at), run.outcome),
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

    # -- webhook outbox --------------------------------------------------------------

    def _enqueue_transitions(self, before: list[list[Any]], counters: list[_Counters]) -> None:
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
        now = _now_us()
        added = 0
        for session_id, kind in events:
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                continue
            eid, body = event_body(kind, _to_datetime(now), _session_from_row(row))
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
        if not await self._reads().call(_events_due_sync, _now_us()):
            return []
        return await self._call(self._claim_events_sync, limit, lease_s)

    def _claim_events_sync(self, limit: int, lease_s: float) -> list[OutboxEvent]:
        now = _now_us()
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
                created_at=_to_datetime(created_at),
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
        due = _now_us() + int(delay_s * 1_000_000)
        return await self._call(self._event_attempted_sync, event_id, claim, "pending", due, error)

    async def fail_event(self, event_id: str, claim: str, *, error: str) -> bool:
        return await self._call(
            self._event_attempted_sync, event_id, claim, "failed", _now_us(), error
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
                stored = _transcript_from_row(session_id, current)
                if not entry.is_final:
                    outcome = TranscriptOutcome.STALE
                elif entry.text == stored.text:
                    outcome = TranscriptOutcome.DUPLICATE
                else:
                    outcome = TranscriptOutcome.CONFLICT
                return TranscriptResult(outcome, stored)
            # The highest id is never superseded (only older ones are), so MAX + 1 never reuses one.
            last = conn.execute(
                "SELECT COALESCE(MAX(id), 0) FROM transcripts WHERE session_id = ?", (session_id,)
            ).fetchone()[0]
            now = _now_us()
            transcript = Transcript(
                id=last + 1,
                session_id=session_id,
                role=entry.role,
                text=entry.text,
                is_final=entry.is_final,
                timestamp=entry.timestamp,
                seq=entry.seq,
                supersedes=None if current is None else int(current[0]),
                received_at=_to_datetime(now),
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

    async def read_frames(
        self, session_id: str, first_seq: int, last_seq: int, *, max_frames: int, max_bytes: int
    ) -> list[StoredFrame]:
        """Frames with payloads, read on the reader thread so commits never wait for them."""
        if last_seq < first_seq or max_frames <= 0:
            return []
        return await self._reads().call(
            _read_frames_sync, self.segments_dir, session_id, first_seq, last_seq,
            max_frames, max_bytes,
        )  # fmt: skip

    def _reads(self) -> _Reader:
        if self._executor is None:
            raise StoreError("store is not open")
        if self._reader is None:
            self._reader = _Reader(self.data_dir / DB_NAME, self._busy_timeout_s)
        return self._reader


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
        received_at=_to_datetime(row[7]),
    )


class _Reader:
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


def _gaps(conn: sqlite3.Connection, session_id: str) -> list[list[int]]:
    """Inclusive gaps below the session's next_seq (inside the caller's read transaction)."""
    row = conn.execute(
        "SELECT prefix_seq, next_seq, kept_missing FROM sessions WHERE id = ? AND state != ?",
        (session_id, SessionState.DELETED.value),
    ).fetchone()
    if row is not None and row[2] is not None:
        kept: list[list[int]] = orjson.loads(row[2])  # moved out of hot: its frames are gone
        return kept
    if row is None or row[0] >= row[1]:
        return []
    # Below prefix_seq nothing is missing, so only frames from there on are scanned.
    return [
        [first, last]
        for first, last in conn.execute(
            "SELECT prev + 1, seq - 1 FROM ("
            " SELECT seq, LAG(seq, 1, ?1 - 1) OVER (ORDER BY seq) AS prev"
            " FROM frames WHERE session_id = ?2 AND seq >= ?1"
            ") WHERE seq > prev + 1",
            (row[0], session_id),
        )
    ]


def _listen_snapshot_sync(conn: sqlite3.Connection, session_id: str) -> ListenSnapshot:
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return ListenSnapshot(
            None if row is None else _session_from_row(row),
            _gaps(conn, session_id),
            _last_transcript_id_sync(conn, session_id),
        )
    finally:
        conn.execute("COMMIT")


def _last_transcript_id_sync(conn: sqlite3.Connection, session_id: str) -> int:
    row = conn.execute(
        "SELECT COALESCE(MAX(id), 0) FROM transcripts WHERE session_id = ?", (session_id,)
    ).fetchone()
    return int(row[0])


def _read_frames_sync(
    conn: sqlite3.Connection,
    segments_dir: Path,
    session_id: str,
    first: int,
    last: int,
    max_frames: int,
    max_bytes: int,
) -> list[StoredFrame]:
    rows = conn.execute(
        "SELECT f.seq, f.flags, f.pts_us, f.length, f.crc32c, f.offset, s.name"
        " FROM frames f LEFT JOIN segments s ON s.id = f.segment"
        " WHERE f.session_id = ? AND f.seq >= ? AND f.seq <= ? ORDER BY f.seq LIMIT ?",
        (session_id, first, last, max_frames),
    ).fetchall()
    total = 0
    for i, row in enumerate(rows):
        if i and total + row[3] > max_bytes:
            del rows[i:]
            break
        total += row[3]
    out: list[StoredFrame] = []
    fds: dict[str, int] = {}
    try:
        # Frames of one message lie back to back in a segment: one pread per such run.
        start = 0
        while start < len(rows):
            end = start + 1
            while (
                end < len(rows)
                and rows[end][6] == rows[start][6]
                and rows[end][5] == rows[end - 1][5] + rows[end - 1][3]
            ):
                end += 1
            run = rows[start:end]
            offset, size = run[0][5], run[-1][5] + run[-1][3] - run[0][5]
            data = _pread_named(fds, segments_dir, run[0][6], offset, size) if size else b""
            for seq, flags, pts, length, crc, frame_offset, name in run:
                payload = b""
                if length:
                    at = frame_offset - offset
                    payload = b"" if data is None else data[at : at + length]
                    if len(payload) != length or crc32c(payload) != crc:
                        gone = conn.execute(
                            "SELECT 1 FROM frames WHERE session_id = ? AND seq = ?",
                            (session_id, seq),
                        ).fetchone()
                        if gone is None:
                            return out  # deleted while we read: stop here
                        raise StoreError(
                            f"payload of {session_id} seq {seq} is corrupt in segment {name}"
                            f" at offset {frame_offset}"
                        )
                out.append(StoredFrame(seq, flags, pts + _U64 if pts < 0 else pts, crc, payload))
            start = end
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _pread_named(
    fds: dict[str, int], segments_dir: Path, name: str | None, offset: int, length: int
) -> bytes | None:
    if name is None:
        return None
    fd = fds.get(name)
    if fd is None:
        try:
            fd = fds[name] = os.open(segments_dir / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
    payload = os.pread(fd, length, offset)
    return payload if len(payload) == length else None


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _archive_from_row(row: tuple[Any, ...]) -> ArchiveRecord:
    return ArchiveRecord(
        path=row[0], bytes=row[1], payload_crc32c=row[2], created_at=_to_datetime(row[3])
    )
