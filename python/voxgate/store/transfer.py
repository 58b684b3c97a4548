"""Copy an embedded store (SQLite plus segment files) into PostgreSQL, verified and resumable.

Per session, in id order:

1. A session whose PostgreSQL row already matches the source (state,
   counters, stream CRC) and whose frame count and bytes agree is done: it
   was verified when that row was written.
2. A tombstone: the row is written as a tombstone and any frame of it in
   PostgreSQL is deleted.
3. Otherwise the frames are copied as blocks (``voxgate.store.blocks``) in
   batches, each its own transaction; seqs PostgreSQL holds already (from an
   interrupted run) are skipped. Then every block is read back from
   PostgreSQL and every frame in it checked: same seqs, flags, pts, lengths,
   and the CRC-32C recomputed from each payload equals the source's.
   The counters and the gap-free prefix are recomputed from the frames and
   must match the source's; only then is the session row written.

So the row of a session is the mark that it was copied and verified: a run
interrupted at any point is finished by running it again. Sources are read
through :class:`~voxgate.store.sqlite.SqliteStore`, which checks every payload
against its CRC as it reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import msgspec

from voxgate.core import native
from voxgate.store import blocks
from voxgate.store.base import (
    FrameEntry,
    Session,
    SessionState,
    StoreError,
    Tier,
    Transcript,
)
from voxgate.store.migrations import Connection
from voxgate.store.migrations.data import BLOCK_COLUMNS
from voxgate.store.postgres import PostgresStore, redact
from voxgate.store.sqlite import DB_NAME, SqliteStore

crc32c, crc32c_combine = native.crc32c, native.crc32c_combine

# Seqs of the source index read per step (its entries are small).
INDEX_WINDOW = 20_000

_UPSERT_SESSION = (
    "INSERT INTO sessions (id, state, codec, sample_rate, channels, metadata, created_at,"
    " updated_at, next_seq, frames, bytes, end_seq, stream_crc32c, stream_generation,"
    " prefix_seq, prefix_crc32c, tenant)"
    " VALUES ($1, $2, $3, $4, $5, $6::json, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
    " ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, codec = EXCLUDED.codec,"
    " sample_rate = EXCLUDED.sample_rate, channels = EXCLUDED.channels,"
    " metadata = EXCLUDED.metadata, created_at = EXCLUDED.created_at,"
    " updated_at = EXCLUDED.updated_at, next_seq = EXCLUDED.next_seq,"
    " frames = EXCLUDED.frames, bytes = EXCLUDED.bytes, end_seq = EXCLUDED.end_seq,"
    " stream_crc32c = EXCLUDED.stream_crc32c,"
    " stream_generation = GREATEST(sessions.stream_generation, EXCLUDED.stream_generation),"
    " prefix_seq = EXCLUDED.prefix_seq, prefix_crc32c = EXCLUDED.prefix_crc32c,"
    " tenant = EXCLUDED.tenant"
)
# Seqs from $2 to $3 of session $1 that PostgreSQL holds already, as inclusive ranges
# (a seek from the block at or before $2, not a scan of the session's earlier blocks).
_STORED_RANGES = (
    "SELECT first_seq, last_seq FROM blocks WHERE session_id = $1 AND first_seq <= $3"
    " AND first_seq >= COALESCE((SELECT first_seq FROM blocks WHERE session_id = $1"
    "  AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1), $2)"
    " AND last_seq >= $2 ORDER BY first_seq"
)
# Blocks of session $1 after first seq $2 to read back: up to $3, cut after $4 bytes
# (at least one).
_READ_BACK = (
    "WITH idx AS (SELECT first_seq, octet_length(data) AS size FROM blocks"
    "  WHERE session_id = $1 AND first_seq > $2 ORDER BY first_seq LIMIT $3),"
    " sized AS (SELECT first_seq, sum(size) OVER (ORDER BY first_seq) AS upto,"
    "  row_number() OVER (ORDER BY first_seq) AS n FROM idx)"
    " SELECT b.first_seq, b.last_seq, b.data FROM sized s"
    " JOIN blocks b ON b.session_id = $1 AND b.first_seq = s.first_seq"
    " WHERE s.n = 1 OR s.upto <= $4 ORDER BY s.first_seq"
)

_INSERT_TRANSCRIPTS = (
    "INSERT INTO transcripts (session_id, id, role, seq, is_final, text, client_timestamp,"
    " supersedes, received_at)"
    " SELECT $1, t.id, t.role, t.seq, t.is_final, t.text, t.ts::json, t.supersedes, t.received"
    " FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::boolean[], $6::text[],"
    " $7::text[], $8::bigint[], $9::timestamptz[])"
    " AS t(id, role, seq, is_final, text, ts, supersedes, received)"
    " ON CONFLICT (session_id, id) DO NOTHING"
)
_UPSERT_TRANSCRIPT_HEAD = (
    "INSERT INTO transcript_heads (session_id, last_id) VALUES ($1, $2)"
    " ON CONFLICT (session_id) DO UPDATE"
    " SET last_id = GREATEST(transcript_heads.last_id, EXCLUDED.last_id)"
)


class TransferError(StoreError):
    """A session could not be copied as it is (the message says why)."""


class TransferReport(msgspec.Struct, kw_only=True):
    """What a run did; ``failed`` maps session ids to why they were left alone."""

    sessions: int = 0  # in the source, tombstones included
    copied: int = 0  # copied (or finished) and verified by this run
    already: int = 0  # found copied by an earlier run
    tombstones: int = 0  # tombstones written by this run
    frames: int = 0  # frames inserted by this run
    bytes: int = 0  # payload bytes inserted by this run
    verified_frames: int = 0  # frames read back and checked by this run
    failed: dict[str, str] = msgspec.field(default_factory=dict)


class _Readback:
    """Counters recomputed from the frames read back from PostgreSQL."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.top = -1
        self.prefix_seq = 0
        self.prefix_crc = 0

    def add(self, seq: int, crc: int, length: int) -> None:
        self.frames += 1
        self.bytes += length
        self.top = max(self.top, seq)
        if seq == self.prefix_seq:
            if length:
                self.prefix_crc = crc32c_combine(self.prefix_crc, crc, length)
            self.prefix_seq += 1


def source_session_ids(data_dir: Path) -> list[str]:
    """Every session id of the embedded store in ``data_dir``, tombstones included, by id."""
    db = sqlite3.connect(data_dir / DB_NAME, timeout=30.0)
    try:
        return [row[0] for row in db.execute("SELECT id FROM sessions ORDER BY id")]
    finally:
        db.close()


class Transfer:
    """One run of ``voxgate db migrate-from-sqlite``."""

    def __init__(
        self,
        source: SqliteStore,
        pool: asyncpg.Pool[asyncpg.Record],
        *,
        batch_frames: int = 1000,
        batch_bytes: int = 8 * 1024 * 1024,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.source = source
        self.pool = pool
        self.batch_frames = batch_frames
        self.batch_bytes = batch_bytes
        self.say = say
        self.report = TransferReport()

    async def run(self, session_ids: list[str]) -> TransferReport:
        self.report.sessions = len(session_ids)
        for sid in session_ids:
            try:
                await self._session(sid)
            except TransferError as exc:
                self.report.failed[sid] = str(exc)
                self.say(f"FAILED {sid}: {exc}")
        return self.report

    async def _session(self, sid: str) -> None:
        session = await self.source.get_session(sid)
        if session is None:
            raise TransferError("vanished from the source while copying")
        generation = (await self.source.stream_generations([sid])).get(sid, 0)
        async with self.pool.acquire() as conn:
            if await self._already_copied(conn, session):
                self.report.already += 1
                return
            if session.state is SessionState.DELETED:
                async with conn.transaction():
                    await conn.execute("DELETE FROM blocks WHERE session_id = $1", sid)
                    await conn.execute("DELETE FROM transcripts WHERE session_id = $1", sid)
                    await self._write_session(conn, session, generation, 0, 0)
                self.report.tombstones += 1
                self.say(f"tombstone {sid}")
                return
            if session.tier is not Tier.HOT:
                # Warm or cold: the frames are gone from the source; carry the tier, the
                # gaps kept at the move and the archive record (the archive files stay put).
                gaps = await self.source.missing(sid)
                archive = await self.source.archive_record(sid)
                async with conn.transaction():
                    await conn.execute("DELETE FROM blocks WHERE session_id = $1", sid)
                    await self._write_session(conn, session, generation, 0, 0)
                    await conn.execute(
                        "UPDATE sessions SET tier = $2, kept_missing = $3::json,"
                        " archive_path = $4, archive_bytes = $5, archive_crc32c = $6,"
                        " archived_at = $7 WHERE id = $1",
                        sid,
                        session.tier.value,
                        msgspec.json.encode(gaps).decode(),
                        archive.path if archive else None,
                        archive.bytes if archive else None,
                        archive.payload_crc32c if archive else None,
                        archive.created_at if archive else None,
                    )
                self.report.copied += 1
                self.say(f"copied {sid}: {session.tier.value}, no frames in the store")
                return
            inserted = await self._copy_frames(conn, session)
            prefix_seq, prefix_crc = await self._verify(conn, session)
            await self._copy_transcripts(conn, sid)
            async with conn.transaction():
                await self._write_session(conn, session, generation, prefix_seq, prefix_crc)
        self.report.copied += 1
        self.say(f"copied {sid}: {session.frames} frames, {session.bytes} bytes ({inserted} new)")

    async def _already_copied(self, conn: Connection, session: Session) -> bool:
        row = await conn.fetchrow(
            "SELECT state, next_seq, frames, bytes, end_seq, stream_crc32c,"
            " (SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM blocks"
            "  WHERE session_id = $1) AS stored,"
            " (SELECT coalesce(sum(payload_bytes), 0) FROM blocks WHERE session_id = $1)"
            "  AS stored_bytes"
            " FROM sessions WHERE id = $1",
            session.id,
        )
        if row is None:
            return False
        if await self._transcript_ids(conn, session.id) != [
            t.id for t in await self._source_transcripts(session.id)
        ]:
            return False
        expected = (
            session.state.value,
            session.next_seq,
            session.frames,
            session.bytes,
            session.end_seq,
            session.stream_crc32c,
            session.frames,
            session.bytes,
        )
        return tuple(row) == expected

    async def _copy_frames(self, conn: Connection, session: Session) -> int:
        """Insert the frames PostgreSQL lacks; returns how many were inserted."""
        inserted = 0
        batch: list[tuple[FrameEntry, bytes]] = []
        nbytes = 0
        async for entry, payload in self._source_frames(session):
            batch.append((entry, payload))
            nbytes += entry.length
            if len(batch) >= self.batch_frames or nbytes >= self.batch_bytes:
                inserted += await self._insert(conn, session.id, batch)
                batch, nbytes = [], 0
        if batch:
            inserted += await self._insert(conn, session.id, batch)
        return inserted

    async def _source_frames(self, session: Session) -> AsyncIterator[tuple[FrameEntry, bytes]]:
        """``(entry, payload)`` of every source frame in seq order, a window at a time."""
        first = 0
        while first < session.next_seq:
            last = first + INDEX_WINDOW - 1
            entries = {e.seq: e for e in await self.source.frame_index(session.id, first, last)}
            async for seq, payload in self.source.read_payloads(session.id, first, last):
                entry = entries.pop(seq, None)
                if entry is None:
                    raise TransferError(f"seq {seq} was stored in the source while copying")
                yield entry, payload
            if entries:
                raise TransferError(f"frames {sorted(entries)[:5]} vanished from the source")
            first = last + 1

    async def _insert(
        self, conn: Connection, sid: str, batch: list[tuple[FrameEntry, bytes]]
    ) -> int:
        first, last = batch[0][0].seq, batch[-1][0].seq
        async with conn.transaction():
            held = await conn.fetch(_STORED_RANGES, sid, first, last)

            def fresh() -> Iterator[blocks.Frame]:
                ranges = iter(held)
                current = next(ranges, None)
                for entry, payload in batch:
                    while current is not None and current[1] < entry.seq:
                        current = next(ranges, None)
                    if current is not None and current[0] <= entry.seq:
                        continue  # copied by an earlier run: checked when read back
                    yield entry.seq, entry.flags, entry.pts_us, entry.crc32c, payload

            rows = []
            frames = nbytes = 0
            for run in blocks.runs(fresh()):
                block = blocks.build(sid, run)
                rows.append(
                    (sid, block.first_seq, block.last_seq, block.payload_bytes, block.crc32c,
                     block.data)
                )  # fmt: skip
                frames += len(run)
                nbytes += block.payload_bytes
            if rows:
                await conn.copy_records_to_table("blocks", records=rows, columns=BLOCK_COLUMNS)
        self.report.frames += frames
        self.report.bytes += nbytes
        return frames

    async def _verify(self, conn: Connection, session: Session) -> tuple[int, int]:
        """Read every block back and check each frame against the source; returns the
        prefix."""
        sid = session.id
        seen = _Readback()
        after = -1
        while True:
            rows = await conn.fetch(_READ_BACK, sid, after, self.batch_frames, self.batch_bytes)
            if not rows:
                break
            first, last = rows[0]["first_seq"], rows[-1]["last_seq"]
            source = {e.seq: e for e in await self.source.frame_index(sid, first, last)}
            for first_seq, last_seq, data in rows:
                try:
                    owner, records = native.read_block(data, verify=True)
                except native.BlockError as exc:
                    raise TransferError(
                        f"the block from seq {first_seq} reads back broken: {exc}"
                    ) from exc
                if owner != sid or (records[0][0], records[-1][0]) != (first_seq, last_seq):
                    raise TransferError(f"the block from seq {first_seq} is not what its row says")
                for seq, flags, pts, length, crc, _ in records:
                    entry = source.pop(seq, None)
                    if entry is None:
                        raise TransferError(f"PostgreSQL holds seq {seq}, which the source lacks")
                    if (flags, pts, length, crc) != (
                        entry.flags,
                        entry.pts_us,
                        entry.length,
                        entry.crc32c,
                    ):
                        raise TransferError(f"seq {seq} differs between source and PostgreSQL")
                    seen.add(seq, crc, length)
                self.report.verified_frames += len(records)
            if source:
                raise TransferError(f"seqs {sorted(source)[:5]} are missing in PostgreSQL")
            after = rows[-1]["first_seq"]
        counts = (seen.frames, seen.bytes, seen.top + 1)
        if counts != (session.frames, session.bytes, session.next_seq):
            raise TransferError(
                f"PostgreSQL holds {seen.frames} frames, {seen.bytes} bytes, next_seq"
                f" {seen.top + 1}; the source {session.frames}, {session.bytes},"
                f" {session.next_seq}"
            )
        complete = session.end_seq is not None and seen.prefix_seq == session.end_seq + 1
        if complete != (session.state is SessionState.COMPLETE) or (
            complete and seen.prefix_crc != session.stream_crc32c
        ):
            raise TransferError("the stream CRC-32C recomputed in PostgreSQL does not match")
        return seen.prefix_seq, seen.prefix_crc

    async def _source_transcripts(self, sid: str) -> list[Transcript]:
        found: list[Transcript] = []
        while page := await self.source.list_transcripts(
            sid, after=found[-1].id if found else 0, limit=1000
        ):
            found.extend(page)
        return found

    @staticmethod
    async def _transcript_ids(conn: Connection, sid: str) -> list[int]:
        rows = await conn.fetch("SELECT id FROM transcripts WHERE session_id = $1 ORDER BY id", sid)
        return [row["id"] for row in rows]

    async def _copy_transcripts(self, conn: Connection, sid: str) -> None:
        """Copy the session's transcripts and its last id; checked by reading the ids back."""
        source = await self._source_transcripts(sid)
        last_id = await self.source.last_transcript_id(sid)
        async with conn.transaction():
            if source:
                await conn.execute(
                    _INSERT_TRANSCRIPTS,
                    sid,
                    [t.id for t in source],
                    [t.role for t in source],
                    [t.seq for t in source],
                    [t.is_final for t in source],
                    [t.text for t in source],
                    [msgspec.json.encode(t.timestamp).decode() for t in source],
                    [t.supersedes for t in source],
                    [t.received_at for t in source],
                )
            await conn.execute(_UPSERT_TRANSCRIPT_HEAD, sid, last_id)
        if await self._transcript_ids(conn, sid) != [t.id for t in source]:
            raise TransferError("the transcripts in PostgreSQL differ from the source's")

    async def _write_session(
        self, conn: Connection, session: Session, generation: int, prefix_seq: int, prefix_crc: int
    ) -> None:
        await conn.execute(
            _UPSERT_SESSION,
            session.id,
            session.state.value,
            session.codec,
            session.sample_rate,
            session.channels,
            msgspec.json.encode(session.metadata).decode(),
            session.created_at,
            session.updated_at,
            session.next_seq,
            session.frames,
            session.bytes,
            session.end_seq,
            session.stream_crc32c,
            generation,
            prefix_seq,
            prefix_crc,
            session.tenant,
        )


async def copy_sqlite_to_postgres(
    data_dir: Path,
    dsn: str,
    *,
    batch_frames: int = 1000,
    batch_bytes: int = 8 * 1024 * 1024,
    say: Callable[[str], None] = lambda _: None,
) -> TransferReport:
    """Copy the embedded store in ``data_dir`` into the database at ``dsn`` and verify it.

    Applies PostgreSQL migrations first. Raises StoreError when either side
    cannot be opened; sessions that cannot be copied as they are end up in
    ``report.failed`` and are left alone.
    """
    if not (data_dir / DB_NAME).is_file():
        raise StoreError(f"no embedded store in {data_dir} (no {DB_NAME})")
    # Opening the PostgreSQL store applies its migrations.
    target = PostgresStore(dsn, pool_min=0, pool_max=1, migrate=True)
    await target.open()
    await target.close()
    source = SqliteStore(data_dir, durability="fsync")
    await source.open()
    try:
        ids = source_session_ids(data_dir)
        say(f"{len(ids)} sessions in {data_dir}, copying into {redact(dsn)}")
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            transfer = Transfer(
                source, pool, batch_frames=batch_frames, batch_bytes=batch_bytes, say=say
            )
            return await transfer.run(ids)
        finally:
            await pool.close()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, sqlite3.Error) as exc:
        raise StoreError(f"copying into {redact(dsn)} failed: {exc}") from exc
    finally:
        await source.close()
