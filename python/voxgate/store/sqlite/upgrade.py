"""Turns a data dir of the one-row-per-frame schema (``user_version`` 5) into blocks.

Until schema 6, segments held bare payloads and ``frames`` one index row per
frame. On open, :meth:`Upgrade._convert_frames` rewrites every session's
frames as blocks into a new segment (records rebuilt from the stored headers,
payload bytes copied as they are, so a payload that was corrupt stays
detectably corrupt), indexes them in ``extents`` and drops ``frames``, all in
one transaction after the new segment is synced. A crash before the commit
leaves the old layout intact (the half-written segment is reaped as an
unindexed tail); the old segments lose their last live frame with the commit
and are unlinked.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from voxgate.store import blocks
from voxgate.store.sqlite.common import datasync, log
from voxgate.store.sqlite.segments import Segments, pwrite_all

# Bytes per write of the conversion.
_WRITE_BYTES = 16 * 1024 * 1024
_U64 = 1 << 64


class Upgrade(Segments):
    """The data step of migration 6."""

    def _needs_conversion(self) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'frames'"
        ).fetchone()
        return row is not None

    def _convert_frames(self) -> None:
        if not self._needs_conversion():
            return
        segment = self._writable_segment()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._needs_conversion():  # another process converted meanwhile
                conn.execute("COMMIT")
                return
            names = dict(conn.execute("SELECT id, name FROM segments").fetchall())
            writer = _BlockWriter(segment.fd, segment.offset, segment.id)
            sessions = [row[0] for row in conn.execute("SELECT DISTINCT session_id FROM frames")]
            fds: dict[int, int] = {}
            try:
                for session_id in sessions:
                    self._convert_session(conn, session_id, names, fds, writer)
            finally:
                for fd in fds.values():
                    os.close(fd)
            writer.flush()
            datasync(segment.fd)
            conn.execute("UPDATE segments SET live = 0")
            conn.executemany(
                "INSERT INTO extents (session_id, first_seq, last_seq, segment, offset, length,"
                " payload_bytes, crc32c) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                writer.extents,
            )
            conn.execute(
                "UPDATE segments SET live = ?, end_offset = ? WHERE id = ?",
                (len(writer.extents), writer.offset, segment.id),
            )
            conn.execute("DROP TABLE frames")
            conn.execute("COMMIT")
            segment.offset = writer.offset
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._retire(segment)
            raise
        log.info(
            "converted %d sessions to blocks: %d blocks, %d bytes",
            len(sessions),
            len(writer.extents),
            writer.offset,
        )

    def _convert_session(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        names: dict[int, str],
        fds: dict[int, int],
        writer: _BlockWriter,
    ) -> None:
        def frames() -> Iterator[blocks.Frame]:
            for seq, flags, pts, length, crc, segment_id, offset in conn.execute(
                "SELECT seq, flags, pts_us, length, crc32c, segment, offset FROM frames"
                " WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ):
                payload = b""
                if length:
                    fd = fds.get(segment_id)
                    if fd is None:
                        fd = fds[segment_id] = os.open(
                            self._segment_path(names[segment_id]), os.O_RDONLY | os.O_CLOEXEC
                        )
                    payload = os.pread(fd, length, offset)
                    if len(payload) != length:
                        raise OSError(f"segment {names[segment_id]} ends inside seq {seq}")
                # Payload bytes as they are: a corrupt one stays detectably corrupt.
                yield seq, flags, pts + _U64 if pts < 0 else pts, crc, payload

        for run in blocks.runs(frames()):
            writer.add(session_id, blocks.build(session_id, run))


class _BlockWriter:
    """Appends blocks to a segment in large writes and keeps their extents."""

    def __init__(self, fd: int, offset: int, segment_id: int) -> None:
        self.fd = fd
        self.offset = offset  # where the next block goes
        self.segment_id = segment_id
        self.extents: list[tuple[str, int, int, int, int, int, int, int]] = []
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._written = offset

    def add(self, session_id: str, block: blocks.Built) -> None:
        length = len(block.data)
        self.extents.append(
            (
                session_id,
                block.first_seq,
                block.last_seq,
                self.segment_id,
                self.offset,
                length,
                block.payload_bytes,
                block.crc32c,
            )
        )
        self._pending.append(block.data)
        self._pending_bytes += length
        self.offset += length
        if self._pending_bytes >= _WRITE_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._written = pwrite_all(self.fd, list(self._pending), self._written)
            self._pending.clear()
            self._pending_bytes = 0
