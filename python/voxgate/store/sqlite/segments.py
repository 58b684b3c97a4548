"""Segment files: the one this process appends to, sealing, reaping, erasing."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from voxgate.durable import fsync_dir
from voxgate.store.base import (
    StoreError,
)
from voxgate.store.sqlite.common import (
    SEGMENT_SUFFIX,
    ZEROS,
    Segment,
    datasync,
    json_text,
    log,
    now_us,
)
from voxgate.store.sqlite.plumbing import Plumbing


def iov_max() -> int:
    try:
        limit = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 1024
    return min(limit, 1024) if limit > 0 else 1024


IOV_MAX = iov_max()


def payload_len(payload: bytes | memoryview) -> int:
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


def pwrite_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> int:
    """Write ``buffers`` back to back at ``offset`` with as few syscalls as possible."""
    pending = list(buffers)
    i = 0
    while i < len(pending):
        if not payload_len(pending[i]):
            i += 1
            continue
        written = os.pwritev(fd, pending[i : i + IOV_MAX], offset)
        if written <= 0:
            raise OSError(errno.EIO, "segment write made no progress")
        offset += written
        while written:
            size = payload_len(pending[i])
            if written >= size:
                written -= size
                i += 1
            else:  # short write: go on from inside this buffer
                pending[i] = memoryview(pending[i]).cast("B")[written:]
                written = 0
    return offset


def try_lock(path: Path) -> int | None:
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


class Segments(Plumbing):
    """Segment bookkeeping of the embedded store (the store thread's part)."""

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

    def _writable_segment(self) -> Segment:
        segment = self._segment
        if segment is not None and segment.offset < self.segment_max_bytes:
            return segment
        if segment is not None:
            self._seal_own()
        self._reap_segments()
        self._segment = self._create_segment()
        return self._segment

    def _create_segment(self) -> Segment:
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
                        (name, os.getpid(), now_us()),
                    )
                    segment_id = cursor.lastrowid
                assert segment_id is not None
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                os.close(fd)
                raise
            self._segment_names[segment_id] = name
            return Segment(segment_id, name, fd)
        raise StoreError(f"sqlite store {self.data_dir}: cannot create a segment file")

    def _seal_own(self) -> None:
        """Seal this process's segment (unlinking it if nothing in it is live) and let it go."""
        segment = self._segment
        assert segment is not None
        with self._write() as conn:
            conn.execute("UPDATE segments SET sealed = 1 WHERE id = ?", (segment.id,))
            self._drop_if_empty(segment.id)
        self._segment = None
        os.close(segment.fd)

    def _drop_if_empty(self, segment_id: int) -> bool:
        """Inside a write transaction (holding the segment's lock, or owning it): unlink
        the segment and forget it if it holds no live block.

        The file goes before its row: should the transaction not commit, a row
        without a file is forgotten by the next reaper, while a file without a row
        (holding erased sessions' bytes, perhaps not yet zeroed) would stay forever.
        """
        conn = self._conn
        row = conn.execute(
            "SELECT name FROM segments WHERE id = ? AND live = 0", (segment_id,)
        ).fetchone()
        if row is None:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._segment_path(row[0]))
        conn.execute("DELETE FROM segments WHERE id = ?", (segment_id,))
        conn.execute("DELETE FROM erasures WHERE segment = ?", (segment_id,))
        self._segment_names.pop(segment_id, None)
        return True

    def _retire(self, segment: Segment) -> None:
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

    def _abandon(self, segment: Segment | None, *, wrote: bool) -> None:
        """A write transaction failed: roll it back; a segment it appended to is retired."""
        conn = self._conn
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        if wrote and segment is not None:
            self._retire(segment)

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
                (json_text(list(ids)),),
            ).fetchall()
        for segment_id, name in rows:
            if segment_id == own:
                continue
            path = self._segment_path(name)
            try:
                fd = try_lock(path)
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
                                datasync(fd)
                        conn.execute("UPDATE segments SET sealed = 1 WHERE id = ?", (segment_id,))
                    if dropped:
                        log.debug("dropped empty segment %s", name)
            finally:
                if fd is not None:
                    os.close(fd)
        if orphans:
            self._reap_orphan_files()

    def _reap_orphan_files(self) -> None:
        """Unlink empty segment files no row names (a crash between creating and registering
        them). A file with bytes but no row is never unlinked: its blocks describe
        themselves, and ``voxgate db check --repair`` indexes them again."""
        known = {row[0] for row in self._conn.execute("SELECT name FROM segments")}
        for entry in os.scandir(self.segments_dir):
            if not entry.name.endswith(SEGMENT_SUFFIX) or entry.name in known:
                continue
            try:
                fd = try_lock(Path(entry.path))
            except FileNotFoundError:
                continue
            if fd is None:
                continue
            try:
                registered = self._conn.execute(
                    "SELECT 1 FROM segments WHERE name = ?", (entry.name,)
                ).fetchone()
                if registered is None and os.fstat(fd).st_size == 0:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                elif registered is None:
                    log.warning(
                        "segment %s holds blocks no index row names; run `voxgate db check"
                        " --repair` to index them",
                        entry.name,
                    )
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
                        size = min(len(ZEROS), length - done)
                        done += os.pwrite(fd, memoryview(ZEROS)[:size], offset + done)
                # Erasure is a promise to the user: always make it durable.
                datasync(fd)
            finally:
                os.close(fd)
        with self._write():
            conn.execute(
                "DELETE FROM erasures WHERE rowid IN (SELECT value FROM json_each(?))",
                (json_text([row[0] for row in rows]),),
            )
        return list(by_segment)
