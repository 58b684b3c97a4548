"""``voxgate db check [--repair]``: the index against the segments it describes.

Segments describe themselves (blocks name their session and seqs and carry
every frame's header and CRC-32C), so the index can be checked against them
and rebuilt from them. A check reads every segment, takes every whole, valid
block out of it, and compares:

- every extent row with the block at its place (missing, corrupt or different
  blocks are problems: their frames cannot be read);
- every block with the rows (a block no row names is a frame set the index
  lost);
- every hot session's counters (frames, bytes, next seq, END, gap-free prefix
  and its CRC, the stream CRC once complete) with what its extents add up to.

``--repair`` makes the index what the segments say, in one transaction:
extents rebuilt from the blocks, segment files no row names registered again,
sessions the index lost recreated (state and counters from their blocks,
metadata empty), counters recomputed. Blocks of deleted sessions that escaped
erasure are erased. Frames whose block is unreadable are dropped from the
index (and their bytes erased), which turns them into gaps a client can send
again: never an ack for bytes that are not there.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from voxgate.core import native
from voxgate.store import blocks as block_builder
from voxgate.store.base import SessionState
from voxgate.store.sqlite.common import MAX_SEQ, SEGMENT_SUFFIX, Segment, datasync, now_us
from voxgate.store.sqlite.frames import Frames, pread_named
from voxgate.store.sqlite.segments import pwrite_all

# (session_id, first_seq, last_seq, offset, length, payload_bytes, crc32c, end_seq)
Block = tuple[str, int, int, int, int, int, int, int | None]
_PROBLEMS_SHOWN = 50


class CheckReport(msgspec.Struct, kw_only=True):
    """What ``voxgate db check`` found (and, with ``--repair``, mended)."""

    segments: int = 0
    blocks: int = 0
    frames: int = 0
    payload_bytes: int = 0
    problems: list[str] = msgspec.field(default_factory=list)
    problem_count: int = 0
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return self.problem_count == 0 or self.repaired

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < _PROBLEMS_SHOWN:
            self.problems.append(text)


class _Counters(msgspec.Struct):
    """A session's counters as its extents add them up."""

    next_seq: int = 0
    frames: int = 0
    bytes: int = 0
    end_seq: int | None = None
    prefix_seq: int = 0
    prefix_crc32c: int = 0

    def state(self) -> str:
        if self.end_seq is None:
            return SessionState.OPEN.value
        complete = self.prefix_seq == self.end_seq + 1
        return (SessionState.COMPLETE if complete else SessionState.ENDED).value

    def stream_crc32c(self) -> int | None:
        return self.prefix_crc32c if self.state() == SessionState.COMPLETE.value else None


def add_up(blocks: Iterable[Block]) -> _Counters:
    """The counters of one session's blocks (in any order)."""
    counters = _Counters()
    for _sid, first, last, _offset, _length, nbytes, _crc, end in blocks:
        counters.frames += last - first + 1
        counters.bytes += nbytes
        counters.next_seq = max(counters.next_seq, last + 1)
        if end is not None:
            counters.end_seq = end
    for _sid, first, last, _offset, _length, nbytes, crc, _end in sorted(
        blocks, key=lambda b: b[1]
    ):
        if first != counters.prefix_seq:
            break
        counters.prefix_crc32c = native.crc32c_combine(counters.prefix_crc32c, crc, nbytes)
        counters.prefix_seq = last + 1
    return counters


# A damaged stretch of a registered segment: (segment, offset, length, whether the
# block header there holds, so its intact frames can be saved).
Damage = tuple[int, int, int, bool]


class Check(Frames):
    """The index against the segments."""

    async def check(self, *, repair: bool = False) -> CheckReport:
        return await self._call(self._check_sync, repair)

    def _check_sync(self, repair: bool) -> CheckReport:
        if repair:
            return self._check_once(repair=True)
        # A check reads the index from one snapshot and the segments after it: sessions
        # deleted meanwhile would look like lost blocks. What looks wrong is looked at
        # again holding the write lock (commits wait for that second look only).
        report = self._check_once(repair=False, immediate=False)
        if report.problem_count:
            report = self._check_once(repair=False, immediate=True)
        return report

    def _check_once(self, *, repair: bool, immediate: bool = True) -> CheckReport:
        conn = self._conn
        report = CheckReport()
        # Saved frames of damaged blocks go to a segment of their own (made before the
        # transaction: making one takes a transaction of its own).
        segment = self._writable_segment() if repair else None
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        wrote = False
        try:
            found, unregistered, damaged = self._scan_segments(conn, report)
            self._compare_extents(conn, report, found)
            sessions = self._compare_sessions(conn, report, found)
            if segment is not None and report.problem_count:
                end = self._repair(conn, found, unregistered, damaged, sessions, segment)
                wrote = end != segment.offset
                report.repaired = True
            conn.execute("COMMIT")
            if wrote and segment is not None:
                segment.offset = end
        except BaseException:
            self._abandon(segment, wrote=wrote)
            raise
        if report.repaired:
            self._erase_pending()
        return report

    def _scan_segments(
        self, conn: sqlite3.Connection, report: CheckReport
    ) -> tuple[dict[int, list[Block]], dict[str, list[Block]], list[Damage]]:
        """Blocks of every registered segment (up to its committed end) and of every
        non-empty segment file no row names; the damaged stretches of the former."""
        found: dict[int, list[Block]] = {}
        damaged: list[Damage] = []
        names: dict[str, int] = {}
        anchors: dict[int, list[int]] = {}  # segment -> indexed block offsets, sorted
        for segment_id, offset in conn.execute(
            "SELECT segment, offset FROM all_extents ORDER BY segment, offset"
        ):
            anchors.setdefault(segment_id, []).append(offset)
        for segment_id, name, end_offset in conn.execute(
            "SELECT id, name, end_offset FROM segments ORDER BY id"
        ).fetchall():
            names[name] = segment_id
            report.segments += 1
            blocks, bad = self._scan_file(
                self._segment_path(name), end_offset, anchors.get(segment_id, []), report
            )
            found[segment_id] = blocks
            damaged.extend((segment_id, *stretch) for stretch in bad)
        unregistered: dict[str, list[Block]] = {}
        for entry in sorted(os.scandir(self.segments_dir), key=lambda e: e.name):
            if entry.name.endswith(SEGMENT_SUFFIX) and entry.name not in names:
                if entry.stat().st_size == 0:
                    continue
                report.segments += 1
                blocks, _ = self._scan_file(Path(entry.path), None, [], report)
                unregistered[entry.name] = blocks
                report.problem(f"segment {entry.name} ({len(blocks)} blocks) is not in the index")
        for blocks in [*found.values(), *unregistered.values()]:
            report.blocks += len(blocks)
            report.frames += sum(b[2] - b[1] + 1 for b in blocks)
            report.payload_bytes += sum(b[5] for b in blocks)
        return found, unregistered, damaged

    def _scan_file(
        self, path: Path, end: int | None, anchors: list[int], report: CheckReport
    ) -> tuple[list[Block], list[tuple[int, int, bool]]]:
        """The valid blocks of one segment file, walked from block to block, and its
        damaged stretches. Where a block header does not hold, the walk goes on at the
        next block the index names (``anchors``): never at bytes merely shaped like a
        block, which could lie inside a client's payload."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            report.problem(f"segment {path.name} is missing")
            return [], []
        if end is not None:
            if len(data) < end:
                report.problem(f"segment {path.name} ends at {len(data)}, the index says {end}")
            data = data[:end]
        view = memoryview(data)
        blocks: list[Block] = []
        bad: list[tuple[int, int, bool]] = []
        at = 0
        while at < len(data):
            found, damaged, stop, why = native.scan_blocks(view[at:], at)
            blocks.extend(found)
            for offset, length, reason in damaged:
                report.problem(f"segment {path.name}: the block at {offset} is damaged: {reason}")
                bad.append((offset, length, True))
            if why is None:
                break
            following = anchors[bisect.bisect_right(anchors, stop) :]
            resume = following[0] if following else len(data)
            report.problem(f"segment {path.name}: no valid block at offset {stop}: {why}")
            bad.append((stop, resume - stop, False))
            at = resume
        return blocks, bad

    def _compare_extents(
        self, conn: sqlite3.Connection, report: CheckReport, found: dict[int, list[Block]]
    ) -> None:
        """Every row against the block at its place, every block against the rows."""
        at = {(seg, b[3]): b for seg, blocks in found.items() for b in blocks}
        rows: dict[tuple[int, int], tuple[str, int, int, int, int, int]] = {}
        for sid, first, last, segment, offset, length, nbytes, crc in conn.execute(
            "SELECT session_id, first_seq, last_seq, segment, offset, length, payload_bytes,"
            " crc32c FROM all_extents"
        ):
            rows[segment, offset] = (sid, first, last, length, nbytes, crc)
            block = at.get((segment, offset))
            where = f"{sid} seqs {first}-{last} (segment {segment}, offset {offset})"
            if block is None:
                report.problem(f"{where}: no valid block there")
            elif block[:3] + block[4:7] != (sid, first, last, length, nbytes, crc):
                report.problem(f"{where}: the block there says {block[:3]}")
        for (segment, offset), block in at.items():
            if (segment, offset) not in rows:
                report.problem(
                    f"block of {block[0]} seqs {block[1]}-{block[2]} (segment {segment},"
                    f" offset {offset}) is not in the index"
                )

    def _compare_sessions(
        self, conn: sqlite3.Connection, report: CheckReport, found: dict[int, list[Block]]
    ) -> dict[str, tuple[str, str]]:
        """Every hot session's counters against its blocks; returns (state, tier) by id."""
        by_session: dict[str, list[Block]] = {}
        for blocks in found.values():
            for block in blocks:
                by_session.setdefault(block[0], []).append(block)
        sessions: dict[str, tuple[str, str]] = {}
        for sid, state, tier, next_seq, frames, nbytes, end_seq, stream_crc, prefix in conn.execute(
            "SELECT id, state, tier, next_seq, frames, bytes, end_seq, stream_crc32c,"
            " prefix_seq FROM sessions"
        ):
            sessions[sid] = (state, tier)
            if state == SessionState.DELETED.value or tier != "hot":
                if by_session.get(sid):
                    report.problem(f"{sid} ({state}, {tier}) still has blocks")
                continue
            want = add_up(by_session.get(sid, []))
            have = (state, next_seq, frames, nbytes, end_seq, stream_crc, prefix)
            should = (
                want.state(),
                want.next_seq,
                want.frames,
                want.bytes,
                want.end_seq,
                want.stream_crc32c(),
                want.prefix_seq,
            )
            if have != should:
                report.problem(f"{sid}: counters {have} where its blocks add up to {should}")
        for sid in by_session.keys() - sessions.keys():
            report.problem(f"{sid}: blocks of a session the index does not know")
        return sessions

    def _repair(
        self,
        conn: sqlite3.Connection,
        found: dict[int, list[Block]],
        unregistered: dict[str, list[Block]],
        damaged: list[Damage],
        sessions: dict[str, tuple[str, str]],
        segment: Segment,
    ) -> int:
        """Make the index what the segments say; returns the end of what was written
        to ``segment`` (the saved frames of damaged blocks)."""
        now = now_us()
        indexed = {
            (segment_id, offset): (sid, first, last, length, nbytes, crc)
            for sid, first, last, segment_id, offset, length, nbytes, crc in conn.execute(
                "SELECT session_id, first_seq, last_seq, segment, offset, length,"
                " payload_bytes, crc32c FROM all_extents"
            )
        }
        # Sessions are taken from blocks only when the index lost every one of them
        # (voxgate.db gone): otherwise a block of an unknown session is not trusted.
        adopt = not sessions
        for name, blocks in unregistered.items():
            end = max((b[3] + b[4] for b in blocks), default=0)
            segment_id = conn.execute(
                "INSERT INTO segments (name, sealed, end_offset, pid, created_at)"
                " VALUES (?, 1, ?, 0, ?)",
                (name, end, now),
            ).lastrowid
            assert segment_id is not None
            found[segment_id] = blocks
            self._segment_names[segment_id] = name
        kept = _Kept()
        erase: list[tuple[int, int, int]] = []

        def hot(sid: str) -> bool | None:
            """True: a hot session; False: deleted or moved out of hot; None: unknown."""
            if sid not in sessions:
                return True if adopt else None
            state, tier = sessions[sid]
            return state != SessionState.DELETED.value and tier == "hot"

        # Blocks the index names as they are come first: nothing later displaces them.
        later: list[tuple[int, Block]] = []
        for segment_id, blocks in found.items():
            for block in blocks:
                row = indexed.get((segment_id, block[3]))
                if row == (block[0], block[1], block[2], block[4], block[5], block[6]) and hot(
                    block[0]
                ):
                    kept.add(segment_id, block)
                else:
                    later.append((segment_id, block))
        for segment_id, block in later:
            alive = hot(block[0])
            if alive is False:
                erase.append((segment_id, block[3], block[4]))  # escaped its erasure
            elif alive and not kept.overlaps(block[0], block[1], block[2]):
                kept.add(segment_id, block)
        end = self._save_damaged(damaged, hot, kept, segment, erase)
        conn.execute("DELETE FROM extents")
        conn.execute("DELETE FROM recent_extents")
        conn.executemany(
            "INSERT INTO extents (session_id, first_seq, last_seq, segment, offset, length,"
            " payload_bytes, crc32c) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*b[:3], seg, *b[3:7]) for placed in kept.by_session.values() for seg, b in placed],
        )
        conn.executemany("INSERT INTO erasures (segment, offset, length) VALUES (?, ?, ?)", erase)
        if end != segment.offset:
            conn.execute("UPDATE segments SET end_offset = ? WHERE id = ?", (end, segment.id))
        conn.execute("UPDATE segments SET live = 0")
        conn.execute(
            "UPDATE segments SET live = c.n FROM (SELECT segment, COUNT(*) AS n FROM extents"
            " GROUP BY segment) AS c WHERE segments.id = c.segment"
        )
        for sid in kept.by_session.keys() - sessions.keys():  # the index lost the session
            conn.execute(
                "INSERT INTO sessions (id, state, created_at, updated_at) VALUES (?, 'open', ?, ?)",
                (sid, now, now),
            )
        for sid, (state, tier) in sessions.items():
            if state != SessionState.DELETED.value and tier == "hot":
                kept.by_session.setdefault(sid, [])
        for sid, placed in kept.by_session.items():
            c = add_up([b for _, b in placed])
            conn.execute(
                "UPDATE sessions SET state = ?, next_seq = ?, frames = ?, bytes = ?, end_seq = ?,"
                " stream_crc32c = ?, prefix_seq = ?, prefix_crc32c = ? WHERE id = ?",
                (
                    c.state(),
                    c.next_seq,
                    c.frames,
                    c.bytes,
                    c.end_seq,
                    c.stream_crc32c(),
                    c.prefix_seq,
                    c.prefix_crc32c,
                    sid,
                ),
            )
        return end

    def _save_damaged(
        self,
        damaged: list[Damage],
        hot: Callable[[str], bool | None],
        kept: _Kept,
        segment: Segment,
        erase: list[tuple[int, int, int]],
    ) -> int:
        """Write the intact frames of every damaged block whose header holds into new
        blocks in ``segment`` (synced) and keep them; the damaged block is then erased
        (what is left of it cannot be read). Returns the end of what was written."""
        at = segment.offset
        for segment_id, offset, length, holds in damaged:
            name = self._segment_name(segment_id)
            data = pread_named({}, self.segments_dir, name, offset, length) if holds else None
            if data is None:
                continue
            try:
                sid, records = native.salvage_block(data)
            except native.BlockError:
                continue
            alive = hot(sid)
            if alive is False:
                erase.append((segment_id, offset, length))
                continue
            if not alive:
                continue
            frames = [
                (seq, flags, pts, crc, data[pos : pos + size])
                for seq, flags, pts, size, crc, pos in records
                if not kept.overlaps(sid, seq, seq)
            ]
            for run in block_builder.runs(frames):
                built = block_builder.build(sid, run)
                at = pwrite_all(segment.fd, [built.data], at)
                end_seq = next((f[0] for f in run if f[1] & native.FLAG_END), None)
                kept.add(
                    segment.id,
                    (
                        sid,
                        built.first_seq,
                        built.last_seq,
                        at - len(built.data),
                        len(built.data),
                        built.payload_bytes,
                        built.crc32c,
                        end_seq,
                    ),
                )
            erase.append((segment_id, offset, length))
        if at != segment.offset:
            datasync(segment.fd)
        return at


class _Kept:
    """The blocks a repair keeps, by session, with their seq ranges to find overlaps."""

    def __init__(self) -> None:
        self.by_session: dict[str, list[tuple[int, Block]]] = {}
        self._ranges: dict[str, list[tuple[int, int]]] = {}  # sorted by first seq

    def add(self, segment_id: int, block: Block) -> None:
        self.by_session.setdefault(block[0], []).append((segment_id, block))
        bisect.insort(self._ranges.setdefault(block[0], []), (block[1], block[2]))

    def overlaps(self, sid: str, first: int, last: int) -> bool:
        ranges = self._ranges.get(sid, [])
        i = bisect.bisect_right(ranges, (last, MAX_SEQ))
        return i > 0 and ranges[i - 1][1] >= first
