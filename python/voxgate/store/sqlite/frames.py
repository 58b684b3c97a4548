"""Frames of the embedded store: commits, reads, gap reports, dropping.

Frames lie in segments as blocks (see the package docstring); the index holds
one ``extents`` row per block. A commit writes each session's new frames as
one block per run of consecutive seqs; a read fetches whole blocks (adjacent
ones of a segment with one ``pread``) and takes the frames out of them in the
core (``read_block``), which checks every payload against its CRC-32C.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson

from voxgate.core import native
from voxgate.store.base import (
    CommitResult,
    FrameEntry,
    Outcome,
    Part,
    Progress,
    SessionState,
    StoredFrame,
    StoreError,
)
from voxgate.store.sqlite.common import (
    MAX_SEQ,
    READ_BATCH_BYTES,
    datasync,
    log,
    now_us,
)
from voxgate.store.sqlite.events import Events
from voxgate.store.sqlite.segments import Segments, pwrite_all

CommitPlan, BlockError, read_block = native.CommitPlan, native.BlockError, native.read_block
_OUTCOMES = tuple(Outcome)  # indexed by the core's outcome numbers

# Rows this store (this process) appends to ``recent_extents`` before it moves them all
# into ``extents``: MERGE_ROWS, or MERGE_ROWS_PER_SESSION for each session those rows
# belong to, up to MERGE_MAX_ROWS. A move rewrites about one page of ``extents`` per
# session, so with many live sessions a bigger batch shares that page among more rows
# (commits of one frame of each of 1,000 sessions: about 64,000 frames/s moving every
# 2,048 rows, 79,000 with this rule; docs/performance.md). The cap keeps
# ``recent_extents`` small while moves succeed: it has no per-session index, so a look-up
# there scans it (about 60 us at 2,048 rows, 225 us at 8,192). Each process sharing the
# data dir counts only its own rows.
MERGE_ROWS = 2048
MERGE_ROWS_PER_SESSION = 8
MERGE_MAX_ROWS = 8192
# Extent rows read per query: at most this many blocks are fetched per read step.
_EXTENTS_PER_READ = 64

# The counters of the sessions a commit touches (ids as JSON ?1), in one row holding all
# of them as JSON: one step, one GIL hand-over. The unary + keeps the planner on the
# primary key: through sessions_by_tier it scanned every hot session (0.5 ms per
# commit with 2,000 of them).
READ_SESSIONS = (
    "SELECT json_group_array(json_array(id, next_seq, frames, bytes, end_seq,"
    " stream_crc32c, prefix_seq, prefix_crc32c)) FROM sessions"
    " WHERE id IN (SELECT value FROM json_each(?1)) AND state != ?2"
    " AND +tier = 'hot' AND tier_target IS NULL"
)
# The plan's extents (session_id, first_seq, last_seq, offset, length, payload_bytes,
# crc32c) as JSON, all in one statement: executemany would drop and retake the GIL
# once per row, and under load each retake waits on the event loop.
_INSERT_EXTENTS = (
    "INSERT INTO recent_extents (session_id, first_seq, last_seq, segment, offset, length,"
    " payload_bytes, crc32c) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
    " json_extract(value, '$[2]'), ?2, json_extract(value, '$[3]'),"
    " json_extract(value, '$[4]'), json_extract(value, '$[5]'), json_extract(value, '$[6]')"
    " FROM json_each(?1)"
)
_UPDATE_SESSIONS = (
    "UPDATE sessions SET state = u.c0, next_seq = u.c1, frames = u.c2, bytes = u.c3,"
    " end_seq = u.c4, stream_crc32c = u.c5, prefix_seq = u.c6, prefix_crc32c = u.c7,"
    " updated_at = u.c8 FROM (SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]') AS c{i}" for i in range(10))
    + " FROM json_each(?)) AS u WHERE sessions.id = u.c9"
)
# The extent holding seq ?2 of session ?1, if any (else the last one before ?2). Plain
# columns only: then SQLite merges the two tables' ordered searches and stops at one row;
# with an expression over the view's columns it read and sorted every earlier extent of
# the session (a read of 20,000 blocks, one such query per step, took 2.7 s).
EXTENT_AT = (
    "SELECT first_seq, last_seq, segment, offset, length FROM all_extents"
    " WHERE session_id = ?1 AND first_seq <= ?2 ORDER BY first_seq DESC LIMIT 1"
)
# (first_seq, last_seq, payload bytes) of every extent of session ?1, in seq order.
PAYLOAD_RUNS = (
    "SELECT first_seq, last_seq, payload_bytes FROM all_extents WHERE session_id = ?1"
    " ORDER BY first_seq"
)
# Up to ?4 extents of session ?1 starting from seq ?2 to seq ?3, in seq order, with their
# segment's name.
EXTENTS_FROM = (
    "SELECT e.first_seq, e.last_seq, e.offset, e.length, s.name FROM all_extents e"
    " LEFT JOIN segments s ON s.id = e.segment WHERE e.session_id = ?1"
    " AND e.first_seq >= ?2 AND e.first_seq <= ?3 ORDER BY e.first_seq LIMIT ?4"
)

# A frame as read: (seq, flags, pts_us, length, crc32c, payload or None).
Record = tuple[int, int, int, int, int, bytes | None]


class Frames(Segments, Events):
    """Commits and reads of frames."""

    async def missing(self, session_id: str) -> list[list[int]]:
        return await self._call(self._missing_sync, session_id)

    def _missing_sync(self, session_id: str) -> list[list[int]]:
        with self._read() as conn:
            return gaps(conn, session_id)

    async def commit(self, frames: Sequence[Part]) -> CommitResult:
        if not frames:
            return CommitResult([], {})
        result = await self._call(self._commit_sync, frames)
        executor = self._executor
        if self._merge_due() and executor is not None:
            # On the store thread before the next commit, after this one's answer.
            executor.submit(self._merge_recent)
        return result

    def _merge_due(self) -> bool:
        """Whether ``recent_extents`` holds enough rows to move (see MERGE_ROWS)."""
        wanted = max(MERGE_ROWS, MERGE_ROWS_PER_SESSION * len(self._recent_sessions))
        return self._recent_rows >= min(wanted, MERGE_MAX_ROWS)

    def _merge_recent(self) -> None:
        """Move every row of ``recent_extents`` into ``extents``, in one transaction.

        Commits append to ``recent_extents`` (a page or two each); here a batch of
        them lands in ``extents``, a page per session for many commits' rows. The
        counts start again either way: a move that failed (another process holding
        the write lock past the busy timeout, a full disk) is tried again when the
        next batch of rows has come, not after every commit.
        """
        self._recent_rows = 0
        self._recent_sessions.clear()
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO extents SELECT session_id, first_seq, last_seq, segment,"
                    " offset, length, payload_bytes, crc32c FROM recent_extents"
                    " ORDER BY session_id, first_seq"
                )
                conn.execute("DELETE FROM recent_extents")
        except (StoreError, sqlite3.Error, OSError) as exc:
            log.warning("moving recent extents failed (tried again after more rows): %s", exc)

    def _commit_sync(self, frames: Sequence[Part]) -> CommitResult:
        segment = self._writable_segment()
        conn = self._conn
        start = segment.offset
        wrote = False
        session_ids = list(dict.fromkeys(frame.session_id for frame in frames))
        try:
            conn.execute("BEGIN IMMEDIATE")
            (found,) = conn.execute(
                READ_SESSIONS, (orjson.dumps(session_ids), SessionState.DELETED.value)
            ).fetchone()
            # The per-frame work (judging, blocks, prefix CRCs) runs in the core, in one
            # call per step: the store thread holds the GIL only briefly.
            before = orjson.loads(found)
            plan = CommitPlan(frames, before)
            # What is stored already at the seqs asked for. Seqs at or past a session's
            # next_seq cannot be stored yet (we hold the write lock): only resent frames
            # need a look-up, not the ones streamed in order.
            for session_id, wanted in plan.lookups():
                for block in self._blocks_holding(session_id, wanted):
                    try:
                        plan.known_block(session_id, block)
                    except BlockError as exc:
                        raise StoreError(
                            f"sqlite store {self.data_dir}: a stored block of {session_id} is"
                            f" corrupt ({exc}); run `voxgate db check`"
                        ) from exc
            extents, buffers, offset = plan.judge(start)
            if extents:
                conn.execute(_INSERT_EXTENTS, (orjson.dumps(extents), segment.id))
                wrote = True
                pwrite_all(segment.fd, buffers, start)
                if self._fsync:
                    datasync(segment.fd)
                conn.execute(
                    "UPDATE segments SET live = live + ?, end_offset = ? WHERE id = ?",
                    (len(extents), offset, segment.id),
                )
                for session_id, prefix_seq in plan.advance():
                    # A gap just closed: walk extents of earlier commits to the next gap.
                    cursor = conn.execute(
                        "SELECT first_seq, last_seq, crc32c, payload_bytes FROM all_extents"
                        " WHERE session_id = ? AND first_seq >= ? ORDER BY first_seq",
                        (session_id, prefix_seq),
                    )
                    try:
                        plan.extend(session_id, cursor)
                    finally:
                        cursor.close()
                conn.execute(_UPDATE_SESSIONS, (plan.finish(now_us()),))
                if self.events:
                    # Webhooks: read the counters inside the transaction, to enqueue with it.
                    self._enqueue_transitions(before, plan.progress())
            conn.execute("COMMIT")
            segment.offset = offset
            self._recent_rows += len(extents)
            self._recent_sessions.update(extent[0] for extent in extents)
        except BaseException:
            self._abandon(segment, wrote=wrote)
            raise
        return CommitResult(plan.outcomes(_OUTCOMES), plan.progress_by_session(Progress))

    def _blocks_holding(self, session_id: str, seqs: list[int]) -> list[bytes]:
        """The stored blocks holding any of ``seqs`` (inside the commit's transaction)."""
        conn = self._conn
        places: dict[tuple[int, int], int] = {}  # (segment, offset) -> length
        for seq in sorted(set(seqs)):
            row = conn.execute(EXTENT_AT, (session_id, seq)).fetchone()
            if row is not None and row[1] >= seq:
                places[row[2], row[3]] = row[4]
        blocks = []
        fds: dict[str, int] = {}
        try:
            for (segment_id, offset), length in places.items():
                name = self._segment_name(segment_id)
                data = pread_named(fds, self.segments_dir, name, offset, length)
                if data is None:
                    raise StoreError(
                        f"sqlite store {self.data_dir}: a block of {session_id} is missing from"
                        f" segment {name} at offset {offset}; run `voxgate db check`"
                    )
                blocks.append(data)
        finally:
            for fd in fds.values():
                os.close(fd)
        return blocks

    async def frame_index(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> list[FrameEntry]:
        last = MAX_SEQ if last_seq is None else last_seq
        out: list[FrameEntry] = []
        seq: int | None = first_seq
        while seq is not None and seq <= last:
            records, seq = await self._call(
                self._records_sync, session_id, seq, last, READ_BATCH_BYTES, False
            )
            out.extend(FrameEntry(r[0], r[1], r[2], r[3], r[4]) for r in records)
        return out

    async def payload_runs(self, session_id: str) -> list[tuple[int, int, int]]:
        # On the reader thread: a long live call has a run per frame, and commits go on.
        return await self._reads().call(payload_runs_sync, session_id)

    async def read_payloads(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(seq, payload)`` in seq order, about 4 MiB of blocks per thread hop.

        Every payload is checked against its stored CRC-32C; a mismatch raises
        :class:`StoreError`, unless the session was deleted meanwhile, which ends
        the iteration.
        """
        last = MAX_SEQ if last_seq is None else last_seq
        seq: int | None = first_seq
        while seq is not None and seq <= last:
            records, seq = await self._call(
                self._records_sync, session_id, seq, last, READ_BATCH_BYTES, True
            )
            for record in records:
                assert record[5] is not None
                yield record[0], record[5]

    def _records_sync(
        self, session_id: str, first: int, last: int, max_bytes: int, payloads: bool
    ) -> tuple[list[Record], int | None]:
        return read_records(
            self._conn, self.segments_dir, session_id, first, last, max_bytes, payloads
        )

    async def read_frames(
        self, session_id: str, first_seq: int, last_seq: int, *, max_frames: int, max_bytes: int
    ) -> list[StoredFrame]:
        """Frames with payloads, read on the reader thread so commits never wait for them."""
        if last_seq < first_seq or max_frames <= 0:
            return []
        return await self._reads().call(
            read_frames_sync, self.segments_dir, session_id, first_seq, last_seq,
            max_frames, max_bytes,
        )  # fmt: skip

    # -- dropping ------------------------------------------------------------------

    def _drop_frames(self, session_id: str) -> None:
        """Inside a write transaction: drop the session's frames, recording their bytes to erase."""
        conn = self._conn
        ranges: list[list[int]] = []  # [segment, offset, length], adjacent ones merged
        counts: dict[int, int] = {}
        for segment_id, offset, length in conn.execute(
            "SELECT segment, offset, length FROM all_extents WHERE session_id = ?"
            " ORDER BY segment, offset",
            (session_id,),
        ):
            counts[segment_id] = counts.get(segment_id, 0) + 1
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
        conn.execute("DELETE FROM extents WHERE session_id = ?", (session_id,))
        conn.execute("DELETE FROM recent_extents WHERE session_id = ?", (session_id,))

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


def gaps(conn: sqlite3.Connection, session_id: str) -> list[list[int]]:
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
    # Below prefix_seq nothing is missing (and no extent holds prefix_seq itself), so
    # only extents from there on are scanned: one row per block, not per frame.
    return [
        [first, last]
        for first, last in conn.execute(
            "SELECT prev + 1, first_seq - 1 FROM ("
            " SELECT first_seq, LAG(last_seq, 1, ?1 - 1) OVER (ORDER BY first_seq) AS prev"
            " FROM all_extents WHERE session_id = ?2 AND first_seq >= ?1"
            ") WHERE first_seq > prev + 1",
            (row[0], session_id),
        )
    ]


def read_records(
    conn: sqlite3.Connection,
    segments_dir: Path,
    session_id: str,
    first: int,
    last: int,
    max_bytes: int,
    payloads: bool,
) -> tuple[list[Record], int | None]:
    """Frames ``first..last`` of the session from whole blocks, about ``max_bytes`` of
    blocks (at least one); and the seq to go on from when more blocks may follow.

    With ``payloads`` every payload is read and checked against its CRC-32C;
    without, only the records' headers are taken. A block that is not what its
    extent says raises StoreError, unless the session lost it meanwhile (deleted
    or moved out of hot): then the frames read so far are returned, and None.
    """
    # From the extent holding ``first``, if one does (not the one before a gap it is in).
    holder = conn.execute(EXTENT_AT, (session_id, first)).fetchone()
    start = holder[0] if holder is not None and holder[1] >= first else first
    rows = conn.execute(EXTENTS_FROM, (session_id, start, last, _EXTENTS_PER_READ)).fetchall()
    more = len(rows) == _EXTENTS_PER_READ
    total = 0
    for i, row in enumerate(rows):
        if i and total + row[3] > max_bytes:
            del rows[i:]
            more = True
            break
        total += row[3]
    after = rows[-1][1] + 1 if more and rows else None
    out: list[Record] = []
    fds: dict[str, int] = {}
    try:
        # Blocks of one session written one after another lie back to back: one pread each run.
        start = 0
        while start < len(rows):
            end = start + 1
            while (
                end < len(rows)
                and rows[end][4] == rows[start][4]
                and rows[end][2] == rows[end - 1][2] + rows[end - 1][3]
            ):
                end += 1
            run = rows[start:end]
            base, size = run[0][2], run[-1][2] + run[-1][3] - run[0][2]
            data = pread_named(fds, segments_dir, run[0][4], base, size)
            view = memoryview(b"" if data is None else data)
            for first_seq, _last_seq, offset, length, name in run:
                block = view[offset - base : offset - base + length]
                try:
                    owner, records = read_block(block, verify=payloads)
                    if owner != session_id:
                        raise BlockError(f"the block belongs to session {owner}")
                except BlockError as exc:
                    if _extent_gone(conn, session_id, first_seq):
                        return out, None  # deleted while we read: stop here
                    raise StoreError(
                        f"frames of {session_id} from seq {first_seq} are corrupt in segment"
                        f" {name} at offset {offset}: {exc}"
                    ) from exc
                for seq, flags, pts, size_, crc, at in records:
                    if first <= seq <= last:
                        payload = bytes(block[at : at + size_]) if payloads else None
                        out.append((seq, flags, pts, size_, crc, payload))
            start = end
    finally:
        for fd in fds.values():
            os.close(fd)
    return out, after


def payload_runs_sync(conn: sqlite3.Connection, session_id: str) -> list[tuple[int, int, int]]:
    rows: list[tuple[int, int, int]] = conn.execute(PAYLOAD_RUNS, (session_id,)).fetchall()
    return rows


def _extent_gone(conn: sqlite3.Connection, session_id: str, first_seq: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM all_extents WHERE session_id = ? AND first_seq = ?",
        (session_id, first_seq),
    ).fetchone()
    return row is None


def read_frames_sync(
    conn: sqlite3.Connection,
    segments_dir: Path,
    session_id: str,
    first: int,
    last: int,
    max_frames: int,
    max_bytes: int,
) -> list[StoredFrame]:
    """Up to ``max_frames`` frames from ``first``, cut after ``max_bytes`` of payload
    (at least one frame)."""
    out: list[StoredFrame] = []
    total = 0
    seq: int | None = first
    while seq is not None and seq <= last:
        # The budget counts payloads; blocks add headers, so read at least a little more.
        records, seq = read_records(
            conn, segments_dir, session_id, seq, last, max_bytes - total + 4096, True
        )
        for seq_, flags, pts, length, crc, payload in records:
            if len(out) == max_frames or (out and total + length > max_bytes):
                return out
            total += length
            assert payload is not None
            out.append(StoredFrame(seq_, flags, pts, crc, payload))
    return out


def pread_named(
    fds: dict[str, int], segments_dir: Path, name: str | None, offset: int, length: int
) -> bytes | None:
    """``length`` bytes of segment ``name`` at ``offset`` (None: the file or bytes are gone)."""
    if name is None:
        return None
    fd = fds.get(name)
    if fd is None:
        try:
            fd = fds[name] = os.open(segments_dir / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
    data = os.pread(fd, length, offset)
    return data if len(data) == length else None
