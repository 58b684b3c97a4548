"""Turns a data dir of the one-row-per-frame schema (``user_version`` 5) into blocks.

Until schema 6, segments held bare payloads and ``frames`` one index row per
frame. On open, before the store serves, :meth:`Upgrade._convert_frames`
moves the rows of ``frames`` into blocks in steps of about 8 MiB, in key order
(session, seq): each step, one transaction, reads its frames' payloads, writes
them as blocks (records rebuilt from the stored headers, payload bytes as they
are, so a payload that was corrupt stays detectably corrupt) into this
process's segment after a sync, indexes them in ``extents`` and deletes their
rows. Segments roll over at ``segment_max_bytes`` as they do for commits. A
crash between steps leaves every frame either in a block or still a row, and
the next open goes on from there; the emptied ``frames`` table is then dropped
and the old segments, their last row gone, are unlinked.

A frame whose payload cannot be read (its segment missing or cut short) cannot
be carried over: it is dropped with a logged error, and its session's counters
are recounted from the blocks, so the frame is reported missing and can be
sent again.
"""

from __future__ import annotations

import os
import sqlite3

from voxgate.store import blocks
from voxgate.store.sqlite.check import add_up
from voxgate.store.sqlite.common import Segment, datasync, log
from voxgate.store.sqlite.segments import Segments, pwrite_all

# Frames and payload bytes moved per step (one transaction).
_STEP_FRAMES = 16_384
_STEP_BYTES = 8 * 1024 * 1024
_U64 = 1 << 64
# Sessions that lost frames in the move, recounted once every frame is moved.
_CREATE_LOST = "CREATE TABLE IF NOT EXISTS upgrade_lost (session_id TEXT PRIMARY KEY) WITHOUT ROWID"


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
        moved = written = 0
        while True:
            segment = self._writable_segment()
            step = self._convert_step(segment)
            if step is None:
                break
            moved += step[0]
            written += step[1]
        conn = self._conn
        with self._write():
            if self._needs_conversion():
                conn.execute(_CREATE_LOST)
                for (session_id,) in conn.execute("SELECT session_id FROM upgrade_lost").fetchall():
                    _recount(conn, session_id)
                conn.execute("DROP TABLE upgrade_lost")
                conn.execute("DROP TABLE frames")
        self._reap_segments()
        log.info("converted %d frames to blocks (%d bytes)", moved, written)

    def _convert_step(self, segment: Segment) -> tuple[int, int] | None:
        """Move the next frames into blocks in one transaction: (frames, bytes written),
        None when no frame is left."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        start = segment.offset
        wrote = False
        try:
            if not self._needs_conversion():  # another process converted meanwhile
                conn.execute("COMMIT")
                return None
            # A step fills what is left of the segment (at least one frame).
            rows = _next_rows(conn, min(_STEP_BYTES, self.segment_max_bytes - start))
            if not rows:
                conn.execute("COMMIT")
                return None
            names = dict(conn.execute("SELECT id, name FROM segments").fetchall())
            lost: set[str] = set()
            frames = self._read_payloads(rows, names, lost)
            # Sessions that lost frames are recounted once every frame is moved.
            conn.execute(_CREATE_LOST)
            conn.executemany(
                "INSERT OR IGNORE INTO upgrade_lost VALUES (?)", [(sid,) for sid in lost]
            )
            extents: list[tuple[str, int, int, int, int, int, int, int]] = []
            buffers: list[bytes] = []
            at = start
            for session_id, session_frames in frames.items():
                for run in blocks.runs(session_frames):
                    block = blocks.build(session_id, run)
                    extents.append(
                        (session_id, block.first_seq, block.last_seq, segment.id, at,
                         len(block.data), block.payload_bytes, block.crc32c)
                    )  # fmt: skip
                    buffers.append(block.data)
                    at += len(block.data)
            if buffers:
                wrote = True
                pwrite_all(segment.fd, list(buffers), start)
                datasync(segment.fd)
            conn.executemany(
                "INSERT INTO extents (session_id, first_seq, last_seq, segment, offset, length,"
                " payload_bytes, crc32c) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                extents,
            )
            conn.execute(
                "UPDATE segments SET live = live + ?, end_offset = ? WHERE id = ?",
                (len(extents), at, segment.id),
            )
            counts: dict[int, int] = {}
            for row in rows:
                counts[row[6]] = counts.get(row[6], 0) + 1
            conn.executemany(
                "UPDATE segments SET live = live - ? WHERE id = ?",
                [(n, segment_id) for segment_id, n in counts.items()],
            )
            conn.executemany(
                "DELETE FROM frames WHERE session_id = ? AND seq = ?",
                [(row[0], row[1]) for row in rows],
            )
            conn.execute("COMMIT")
            segment.offset = at
        except BaseException:
            self._abandon(segment, wrote=wrote)
            raise
        return len(rows), at - start

    def _read_payloads(
        self, rows: list[tuple[str, int, int, int, int, int, int, int]],
        names: dict[int, str], lost: set[str],
    ) -> dict[str, list[blocks.Frame]]:  # fmt: skip
        """The frames of ``rows`` with their payloads, by session in seq order; a frame
        whose payload cannot be read is left out (and its session noted in ``lost``)."""
        out: dict[str, list[blocks.Frame]] = {}
        fds: dict[int, int | None] = {}
        try:
            for session_id, seq, flags, pts, length, crc, segment_id, offset in rows:
                payload: bytes | None = b""
                if length:
                    if segment_id not in fds:
                        name = names.get(segment_id)
                        try:
                            fds[segment_id] = (
                                None
                                if name is None
                                else os.open(self._segment_path(name), os.O_RDONLY | os.O_CLOEXEC)
                            )
                        except FileNotFoundError:
                            fds[segment_id] = None
                    fd = fds[segment_id]
                    payload = None if fd is None else os.pread(fd, length, offset)
                if payload is None or len(payload) != length:
                    log.error(
                        "frame %d of session %s cannot be read (segment %s missing or cut"
                        " short): it will be reported missing",
                        seq,
                        session_id,
                        names.get(segment_id),
                    )
                    lost.add(session_id)
                    continue
                frame = (seq, flags, pts + _U64 if pts < 0 else pts, crc, payload)
                out.setdefault(session_id, []).append(frame)
        finally:
            for fd in fds.values():
                if fd is not None:
                    os.close(fd)
        return out


def _next_rows(
    conn: sqlite3.Connection, budget: int
) -> list[tuple[str, int, int, int, int, int, int, int]]:
    """The next frame rows in key order: up to a step's frames and ``budget`` payload
    bytes (at least one)."""
    rows: list[tuple[str, int, int, int, int, int, int, int]] = []
    size = 0
    for row in conn.execute(
        "SELECT session_id, seq, flags, pts_us, length, crc32c, segment, offset FROM frames"
        " ORDER BY session_id, seq LIMIT ?",
        (_STEP_FRAMES,),
    ):
        if rows and size + row[4] > budget:
            break
        rows.append(row)
        size += row[4]
    return rows


def _recount(conn: sqlite3.Connection, session_id: str) -> None:
    """Counters of a session that lost frames in the move, from its blocks."""
    row = conn.execute("SELECT end_seq FROM sessions WHERE id = ?", (session_id,)).fetchone()
    end_seq = None if row is None else row[0]
    found = [
        (session_id, first, last, 0, 0, nbytes, crc,
         end_seq if end_seq is not None and first <= end_seq <= last else None)
        for first, last, nbytes, crc in conn.execute(
            "SELECT first_seq, last_seq, payload_bytes, crc32c FROM all_extents"
            " WHERE session_id = ? ORDER BY first_seq",
            (session_id,),
        )
    ]  # fmt: skip
    c = add_up(found)
    conn.execute(
        "UPDATE sessions SET state = ?, next_seq = ?, frames = ?, bytes = ?, end_seq = ?,"
        " stream_crc32c = ?, prefix_seq = ?, prefix_crc32c = ? WHERE id = ?",
        (c.state(), c.next_seq, c.frames, c.bytes, c.end_seq, c.stream_crc32c(),
         c.prefix_seq, c.prefix_crc32c, session_id),
    )  # fmt: skip
