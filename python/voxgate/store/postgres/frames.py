"""Frames of the PostgreSQL store: commits, reads, gap reports.

Frames are stored as blocks (``rust/block.rs``), one row of ``blocks`` per
run of consecutive seqs of one session stored by one commit: the same bytes
the embedded store writes into its segments, so the commit rules, the layout
and every check on reading are the core's, for both stores. A commit is one
transaction: it locks the rows of the sessions it touches (``SELECT ... FOR
UPDATE`` in id order, so commits over overlapping sessions never deadlock),
lets ``CommitPlan`` judge every frame (resends against the stored blocks that
hold their seqs), ``COPY``-s the new blocks in (no conflict can occur while
the session rows are locked), extends each session's gap-free prefix over
earlier blocks when a gap closed, and writes the counters back in one
statement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import msgspec

from voxgate.core import native
from voxgate.store.base import (
    CommitResult,
    EventType,
    FrameEntry,
    Outcome,
    Part,
    Progress,
    StoredFrame,
    StoreError,
)
from voxgate.store.migrations import Connection
from voxgate.store.migrations.data import BLOCK_COLUMNS
from voxgate.store.outbox import commit_events
from voxgate.store.postgres.common import MAX_SEQ, redact, storable
from voxgate.store.postgres.events import Events, enqueue

CommitPlan, BlockError, read_block = native.CommitPlan, native.BlockError, native.read_block
_OUTCOMES = tuple(Outcome)  # indexed by the core's outcome numbers

# Bytes of blocks ``read_payloads`` fetches per query (at least one block), and
# blocks per query.
READ_BATCH_BYTES = 4 * 1024 * 1024
READ_BATCH_BLOCKS = 64


_LOCK_SESSIONS = (
    "SELECT id, next_seq, frames, bytes, end_seq, stream_crc32c, prefix_seq, prefix_crc32c"
    " FROM sessions WHERE id = ANY($1::text[]) AND state <> 'deleted'"
    " AND tier = 'hot' AND tier_target IS NULL ORDER BY id FOR UPDATE"
)
# The stored blocks of session $1 holding any of the seqs $2.
_BLOCKS_HOLDING = (
    "SELECT DISTINCT ON (b.first_seq) b.data FROM unnest($2::bigint[]) AS w(seq)"
    " CROSS JOIN LATERAL (SELECT first_seq, last_seq, data FROM blocks"
    "  WHERE session_id = $1 AND first_seq <= w.seq ORDER BY first_seq DESC LIMIT 1) b"
    " WHERE b.last_seq >= w.seq ORDER BY b.first_seq"
)
_PREFIX_WALK = (
    "SELECT first_seq, last_seq, crc32c, payload_bytes FROM blocks"
    " WHERE session_id = $1 AND first_seq >= $2 ORDER BY first_seq"
)
# The plan's counters, one JSON array per changed session (CommitPlan.finish).
_UPDATE_SESSIONS = (
    "UPDATE sessions AS s SET state = u->>0, next_seq = (u->>1)::bigint,"
    " frames = (u->>2)::bigint, bytes = (u->>3)::bigint, end_seq = (u->>4)::bigint,"
    " stream_crc32c = (u->>5)::bigint, prefix_seq = (u->>6)::bigint,"
    " prefix_crc32c = (u->>7)::bigint, updated_at = $2"
    " FROM json_array_elements($1::json) AS u WHERE s.id = u->>9"
)
# Gaps at or above prefix_seq (nothing below it is missing), from one snapshot.
MISSING = (
    "WITH s AS (SELECT prefix_seq FROM sessions WHERE id = $1 AND state <> 'deleted')"
    " SELECT prev + 1, first_seq - 1 FROM ("
    "  SELECT b.first_seq,"
    "  LAG(b.last_seq, 1, s.prefix_seq - 1) OVER (ORDER BY b.first_seq) AS prev"
    "  FROM s JOIN blocks b ON b.session_id = $1 AND b.first_seq >= s.prefix_seq"
    " ) g WHERE first_seq > prev + 1 ORDER BY first_seq"
)
# Up to $4 blocks of session $1 holding seqs from $2 to $3, cut after $5 bytes (at least
# one), with ``found``: how many the limit let through before the cut.
_READ_BLOCKS = (
    "WITH idx AS ("
    "  SELECT first_seq, last_seq, octet_length(data) AS size FROM blocks"
    "  WHERE session_id = $1 AND first_seq <= $3 AND first_seq >= COALESCE("
    "   (SELECT CASE WHEN last_seq >= $2 THEN first_seq ELSE $2 END FROM blocks"
    "    WHERE session_id = $1 AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1), $2)"
    "  ORDER BY first_seq LIMIT $4"
    "), sized AS ("
    "  SELECT first_seq, last_seq, sum(size) OVER (ORDER BY first_seq) AS upto,"
    "  row_number() OVER (ORDER BY first_seq) AS n, count(*) OVER () AS found FROM idx"
    ") SELECT s.first_seq, b.data, s.found, s.last_seq FROM sized s"
    " JOIN blocks b ON b.session_id = $1 AND b.first_seq = s.first_seq"
    " WHERE s.n = 1 OR s.upto <= $5 ORDER BY s.first_seq"
)

# A frame as read: (seq, flags, pts_us, length, crc32c, payload or None).
Record = tuple[int, int, int, int, int, bytes | None]


class Frames(Events):
    """Commits and reads of frames."""

    async def missing(self, session_id: str) -> list[list[int]]:
        if not storable(session_id):
            return []

        async def op(conn: Connection) -> list[list[int]]:
            return await gaps(conn, session_id)

        return await self._run(op)

    async def commit(self, parts: Sequence[Part]) -> CommitResult:
        if not parts:
            return CommitResult([], {})

        async def op(conn: Connection) -> CommitResult:
            async with conn.transaction():
                return await self._commit(conn, parts)

        return await self._run(op)

    async def _commit(self, conn: Connection, parts: Sequence[Part]) -> CommitResult:
        session_ids = sorted({p.session_id for p in parts if storable(p.session_id)})
        before = [list(row) for row in await conn.fetch(_LOCK_SESSIONS, session_ids)]
        plan = CommitPlan(parts, before)
        # Only seqs below next_seq can be stored already: resends, not the stream.
        for session_id, wanted in plan.lookups():
            for (data,) in await conn.fetch(_BLOCKS_HOLDING, session_id, wanted):
                try:
                    plan.known_block(session_id, data)
                except BlockError as exc:
                    raise StoreError(
                        f"postgres store {redact(self.dsn)}: a stored block of {session_id}"
                        f" is corrupt: {exc}"
                    ) from exc
        extents, buffers, _ = plan.judge(0)
        if extents:
            data = b"".join(buffers)
            blocks = [
                (sid, first, last, nbytes, crc, data[offset : offset + length])
                for sid, first, last, offset, length, nbytes, crc in extents
            ]
            # The session rows are locked and every seq was judged: COPY cannot conflict.
            await conn.copy_records_to_table("blocks", records=blocks, columns=BLOCK_COLUMNS)
            for session_id, prefix_seq in plan.advance():
                # A gap just closed: walk blocks of earlier commits to the next gap.
                walk = await conn.fetch(_PREFIX_WALK, session_id, prefix_seq)
                plan.extend(session_id, (tuple(row) for row in walk))
            await conn.execute(_UPDATE_SESSIONS, plan.finish(0).decode(), datetime.now(UTC))
            if self.events:
                due: list[tuple[str, EventType]] = []
                # before: id, next_seq, frames, bytes, end_seq (4), stream_crc32c (5).
                for row, (sid, _, _, _, end_seq, complete, _) in zip(
                    before, plan.progress(), strict=True
                ):
                    if end_seq is not None and row[5] is None:
                        due.extend((sid, k) for k in commit_events(row[4] is not None, complete))
                if due:
                    await enqueue(conn, due)
        return CommitResult(plan.outcomes(_OUTCOMES), plan.progress_by_session(Progress))

    async def frame_index(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> list[FrameEntry]:
        last = MAX_SEQ if last_seq is None else last_seq
        out: list[FrameEntry] = []
        seq: int | None = first_seq
        while storable(session_id) and seq is not None and seq <= last:
            records, seq = await self._run(self._records, session_id, seq, last, False)
            out.extend(FrameEntry(r[0], r[1], r[2], r[3], r[4]) for r in records)
        return out

    async def payload_runs(self, session_id: str) -> list[tuple[int, int, int]]:
        if not storable(session_id):
            return []

        async def op(conn: Connection) -> list[tuple[int, int, int]]:
            rows = await conn.fetch(
                "SELECT first_seq, last_seq, payload_bytes FROM blocks WHERE session_id = $1"
                " ORDER BY first_seq",
                session_id,
            )
            return [(r[0], r[1], r[2]) for r in rows]

        return await self._run(op)

    async def read_payloads(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(seq, payload)`` in seq order, about 4 MiB of blocks per query.

        Every payload is checked against its stored CRC-32C; a mismatch raises
        :class:`StoreError`. A session deleted meanwhile ends the iteration.
        """
        last = MAX_SEQ if last_seq is None else last_seq
        seq: int | None = first_seq
        while storable(session_id) and seq is not None and seq <= last:
            records, seq = await self._run(self._records, session_id, seq, last, True)
            for record in records:
                assert record[5] is not None
                yield record[0], record[5]

    async def _records(
        self,
        conn: Connection,
        session_id: str,
        first: int,
        last: int,
        payloads: bool,
        max_bytes: int = READ_BATCH_BYTES,
    ) -> tuple[list[Record], int | None]:
        """Frames ``first..last`` from about ``max_bytes`` of whole blocks, and the seq to
        go on from when more blocks may follow. Every payload is checked with
        ``payloads``."""
        rows = await conn.fetch(_READ_BLOCKS, session_id, first, last, READ_BATCH_BLOCKS, max_bytes)
        found = rows[0]["found"] if rows else 0
        more = found == READ_BATCH_BLOCKS or len(rows) < found
        after = rows[-1]["last_seq"] + 1 if more and rows else None
        out: list[Record] = []
        for first_seq, data, _, _ in rows:
            try:
                owner, records = read_block(data, verify=payloads)
                if owner != session_id:
                    raise BlockError(f"the block belongs to session {owner}")
            except BlockError as exc:
                raise StoreError(
                    f"postgres store {redact(self.dsn)}: frames of {session_id} from seq"
                    f" {first_seq} are corrupt: {exc}"
                ) from exc
            view = memoryview(data)
            for seq, flags, pts, length, crc, at in records:
                if first <= seq <= last:
                    payload = bytes(view[at : at + length]) if payloads else None
                    out.append((seq, flags, pts, length, crc, payload))
        return out, after

    async def read_frames(
        self, session_id: str, first_seq: int, last_seq: int, *, max_frames: int, max_bytes: int
    ) -> list[StoredFrame]:
        """Up to ``max_frames`` frames from ``first_seq``, cut after ``max_bytes`` of
        payload (at least one frame)."""
        out: list[StoredFrame] = []
        total = 0
        seq: int | None = first_seq
        while storable(session_id) and seq is not None and seq <= last_seq:
            # The budget counts payloads; blocks add headers, so read a little more.
            budget = max_bytes - total + 4096
            records, seq = await self._run(self._records, session_id, seq, last_seq, True, budget)
            for seq_, flags, pts, length, crc, payload in records:
                if len(out) == max_frames or (out and total + length > max_bytes):
                    return out
                total += length
                assert payload is not None
                out.append(StoredFrame(seq_, flags, pts, crc, payload))
        return out


async def gaps(conn: Connection, session_id: str) -> list[list[int]]:
    """Inclusive gaps below the session's next_seq, as they were when it left hot if it did."""
    kept = await conn.fetchval(
        "SELECT kept_missing FROM sessions WHERE id = $1 AND state <> 'deleted'", session_id
    )
    if kept is not None:  # moved out of hot: its frames are gone
        found: list[list[int]] = msgspec.json.decode(kept)
        return found
    return [[first, last] for first, last in await conn.fetch(MISSING, session_id)]
