"""The PostgreSQL store: sessions, frame index and payloads in one database every instance shares.

Schema (``migrations/0001_initial.sql``): ``sessions`` keyed by id, ``frames``
keyed by ``(session_id, seq)`` with the payload as ``bytea`` (stored out of
line and uncompressed for large frames: audio does not compress). Any number
of voxgate processes and instances may use one database.

A commit is one transaction: it locks the rows of the sessions it touches
(``SELECT ... FOR UPDATE`` in id order, so concurrent commits over overlapping
sessions never deadlock), looks up already stored frames only below each
session's ``next_seq`` (nothing can be stored above it), decides every frame's
outcome with :class:`~voxgate.store.commit_rules.SessionTally`, ``COPY``-s the new
frames straight into ``frames`` (no conflict can occur while the session rows
are locked), extends each session's gap-free prefix and CRC, and writes the
counters back. PostgreSQL's commit, with ``synchronous_commit`` left on, is
the durability point for both ``VOXGATE_DURABILITY`` levels: it survives a
killed voxgate process and, with the server's ``fsync`` on, power loss.

Every failure to reach or use the database becomes :class:`StoreError`. A
connection found broken (PostgreSQL restarted) is retried once on a fresh
connection after expiring the pool's other connections, so the pool recovers
by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import msgspec

from voxgate.core import native
from voxgate.ids import new_session_id
from voxgate.store import migrations
from voxgate.store.base import (
    ArchiveRecord,
    CommitResult,
    EventType,
    FrameEntry,
    FrameIn,
    ListenSnapshot,
    OldestSession,
    OutboxEvent,
    Outcome,
    Part,
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
    frames_of,
)
from voxgate.store.commit_rules import SessionTally
from voxgate.store.migrations import Connection
from voxgate.store.outbox import commit_events, event_body

crc32c = native.crc32c

log = logging.getLogger("voxgate.store")

T = TypeVar("T")

# Frames and bytes ``read_payloads`` fetches per query.
READ_BATCH_FRAMES = 256
READ_BATCH_BYTES = 4 * 1024 * 1024
# Stored frames fetched per query while a closed gap extends a session's prefix.
PREFIX_WALK_FRAMES = 8192
# pg_try_advisory_lock key of the one retention runner ("voxret" in ASCII).
RETENTION_LOCK_KEY = 0x766F78726574
_MAX_SEQ = (1 << 63) - 1
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1

FRAME_COLUMNS = ("session_id", "seq", "flags", "pts_us", "length", "crc32c", "payload")
_SESSION_COLUMNS = (
    "id, state, codec, sample_rate, channels, metadata, created_at, updated_at,"
    " next_seq, frames, bytes, end_seq, stream_crc32c, tier, tenant"
)

# The connection is gone or the server is going away: use a new connection.
_BROKEN = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)
# Worth one more try: a broken connection, or a transaction PostgreSQL rolled back.
_RETRY = (*_BROKEN, asyncpg.exceptions.TransactionRollbackError)
# Anything else the driver or the server reports.
_FAILURE = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_LOCK_SESSIONS = (
    "SELECT id, next_seq, frames, bytes, end_seq, stream_crc32c, prefix_seq, prefix_crc32c"
    " FROM sessions WHERE id = ANY($1::text[]) AND state <> 'deleted'"
    " AND tier = 'hot' AND tier_target IS NULL ORDER BY id FOR UPDATE"
)
_STORED_FRAMES = (
    "SELECT f.session_id, f.seq, f.crc32c, f.length, f.flags"
    " FROM unnest($1::text[], $2::bigint[]) AS k(session_id, seq)"
    " JOIN frames f ON f.session_id = k.session_id AND f.seq = k.seq"
)
_PREFIX_WALK = (
    "SELECT seq, crc32c, length FROM frames WHERE session_id = $1 AND seq >= $2"
    " ORDER BY seq LIMIT $3"
)
_UPDATE_SESSIONS = (
    "UPDATE sessions AS s SET state = u.state, next_seq = u.next_seq, frames = u.frames,"
    " bytes = u.bytes, end_seq = u.end_seq, stream_crc32c = u.stream_crc32c,"
    " prefix_seq = u.prefix_seq, prefix_crc32c = u.prefix_crc32c, updated_at = $10"
    " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],"
    " $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])"
    " AS u(id, state, next_seq, frames, bytes, end_seq, stream_crc32c, prefix_seq,"
    " prefix_crc32c) WHERE s.id = u.id"
)
# Gaps at or above prefix_seq (nothing below it is missing), from one snapshot.
_MISSING = (
    "WITH s AS (SELECT prefix_seq FROM sessions WHERE id = $1 AND state <> 'deleted')"
    " SELECT prev + 1, seq - 1 FROM ("
    "  SELECT f.seq, LAG(f.seq, 1, s.prefix_seq - 1) OVER (ORDER BY f.seq) AS prev"
    "  FROM s JOIN frames f ON f.session_id = $1 AND f.seq >= s.prefix_seq"
    " ) g WHERE seq > prev + 1 ORDER BY seq"
)
# Up to $4 frames from seq $2, cut after $5 bytes (but at least one frame).
_READ_BATCH = (
    "WITH idx AS ("
    "  SELECT seq, length FROM frames WHERE session_id = $1 AND seq >= $2 AND seq <= $3"
    "  ORDER BY seq LIMIT $4"
    "), sized AS ("
    "  SELECT seq, sum(length) OVER (ORDER BY seq) AS upto,"
    "  row_number() OVER (ORDER BY seq) AS n, count(*) OVER () AS found FROM idx"
    ")"
    " SELECT s.seq, s.found, f.crc32c, f.payload FROM sized s"
    " JOIN frames f ON f.session_id = $1 AND f.seq = s.seq"
    " WHERE s.n = 1 OR s.upto <= $5 ORDER BY s.seq"
)


def _payload_len(payload: bytes | memoryview) -> int:
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


def _storable(session_id: str) -> bool:
    """Whether the id can name a stored session (ids are ASCII; PostgreSQL text holds no NUL)."""
    return session_id.isascii() and "\x00" not in session_id


def _text_key(value: str) -> str:
    """``value`` as PostgreSQL text that sorts against ids as ``value`` does (for ``after``)."""
    # Ids are printable ASCII: whatever follows a NUL cannot change the order, and any
    # character above ASCII (a lone surrogate too) sorts after every id character.
    value = value.split("\x00", 1)[0]
    if value.isascii():
        return value
    return "".join("\ue000" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and messages."""
    try:
        parts = urllib.parse.urlsplit(dsn)
    except ValueError:
        return "<unparsable database URL>"
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _session_from_row(row: asyncpg.Record) -> Session:
    return Session(
        id=row["id"],
        state=SessionState(row["state"]),
        codec=row["codec"],
        sample_rate=row["sample_rate"],
        channels=row["channels"],
        metadata=msgspec.json.decode(row["metadata"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_seq=row["next_seq"],
        frames=row["frames"],
        bytes=row["bytes"],
        end_seq=row["end_seq"],
        stream_crc32c=row["stream_crc32c"],
        tier=Tier(row["tier"]),
        tenant=row["tenant"],
    )


async def _gaps(conn: Connection, session_id: str) -> list[list[int]]:
    """Inclusive gaps below the session's next_seq, as they were when it left hot if it did."""
    kept = await conn.fetchval(
        "SELECT kept_missing FROM sessions WHERE id = $1 AND state <> 'deleted'", session_id
    )
    if kept is not None:  # moved out of hot: its frames are gone
        gaps: list[list[int]] = msgspec.json.decode(kept)
        return gaps
    return [[first, last] for first, last in await conn.fetch(_MISSING, session_id)]


def _archive_from_row(row: Sequence[Any]) -> ArchiveRecord:
    return ArchiveRecord(path=row[0], bytes=row[1], payload_crc32c=row[2], created_at=row[3])


class PostgresStore:
    """A :class:`~voxgate.store.base.Store` in PostgreSQL, reached through an asyncpg pool.

    ``migrate=True`` applies pending migrations when the store opens;
    otherwise opening fails unless the schema is current. ``timeout_s`` bounds
    connecting, waiting for a pooled connection and every statement.
    ``events=True`` enqueues webhook events with the transitions that cause them.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        migrate: bool = True,
        timeout_s: float = 30.0,
        events: bool = False,
    ) -> None:
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError("pool sizes need 0 <= pool_min <= pool_max and pool_max >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.dsn = dsn
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.migrate = migrate
        self.timeout_s = timeout_s
        self.events = events
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.dsn)})"

    # -- plumbing ----------------------------------------------------------------

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"postgres store {redact(self.dsn)}: {type(exc).__name__}: {exc}")

    async def _run(self, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``op(conn, *args)`` on a pooled connection; one retry when the connection broke."""
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        for attempt in (1, 2):
            acquired = False
            try:
                async with pool.acquire(timeout=self.timeout_s) as conn:
                    acquired = True
                    return await op(conn, *args)
            except _RETRY as exc:
                # No connection to be had (server down, refused): no point in retrying.
                if attempt == 2 or not acquired:
                    raise self._error(exc) from exc
                if isinstance(exc, _BROKEN):
                    # The server likely restarted: every idle connection is stale too.
                    await pool.expire_connections()
                log.info("postgres store: retrying after %s: %s", type(exc).__name__, exc)
            except _FAILURE as exc:
                raise self._error(exc) from exc
        raise AssertionError("unreachable")

    # -- open and close ------------------------------------------------------------

    async def _create_pool(self, settings: dict[str, str]) -> asyncpg.Pool[asyncpg.Record]:
        try:
            return await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                timeout=self.timeout_s,
                command_timeout=self.timeout_s,
                server_settings={"application_name": "voxgate", **settings},
            )
        except (*_FAILURE, ValueError) as exc:
            raise self._error(exc) from exc

    async def open(self) -> None:
        """Connect the pool and apply (or check) migrations; StoreError when that fails."""
        if self._pool is not None:
            return
        pool = await self._create_pool({})
        try:
            async with pool.acquire(timeout=self.timeout_s) as conn:
                if self.migrate:
                    applied = await migrations.apply(conn)
                    for migration in applied:
                        log.info(
                            "applied migration %04d_%s to %s",
                            migration.version,
                            migration.name,
                            redact(self.dsn),
                        )
                else:
                    await migrations.check(conn)
                synchronous_commit = await conn.fetchval("SHOW synchronous_commit")
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _FAILURE):
                raise self._error(exc) from exc
            raise
        if synchronous_commit == "off":
            # An ack promises durability: a commit must not return before its WAL is flushed.
            # Any other value (local, remote_write, on, remote_apply) flushes locally at least.
            log.warning(
                "%s has synchronous_commit=off; voxgate's connections set it on",
                redact(self.dsn),
            )
            pool.terminate()
            pool = await self._create_pool({"synchronous_commit": "on"})
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout_s)
        except TimeoutError:
            pool.terminate()

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
        now = datetime.now(UTC)
        session = Session(
            id=new_session_id(),
            state=SessionState.OPEN,
            created_at=now,
            updated_at=now,
            codec=codec,
            sample_rate=sample_rate,
            channels=channels,
            metadata=metadata,
            tenant=tenant,
        )
        encoded = msgspec.json.encode(metadata).decode()

        async def op(conn: Connection) -> None:
            # ON CONFLICT: a retry after a commit whose answer was lost must not fail.
            await conn.execute(
                "INSERT INTO sessions (id, state, codec, sample_rate, channels, metadata,"
                " created_at, updated_at, tenant)"
                " VALUES ($1, $2, $3, $4, $5, $6::json, $7, $7, $8) ON CONFLICT (id) DO NOTHING",
                session.id,
                session.state.value,
                codec,
                sample_rate,
                channels,
                encoded,
                now,
                tenant,
            )

        await self._run(op)
        return session

    async def get_session(self, session_id: str) -> Session | None:
        if not _storable(session_id):
            return None

        async def op(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
            )

        row = await self._run(op)
        return None if row is None else _session_from_row(row)

    async def list_sessions(
        self, *, limit: int, after: str | None, tenant: str | None = None
    ) -> list[Session]:
        if limit <= 0:
            return []
        key = _text_key(after or "")

        async def op(conn: Connection) -> list[asyncpg.Record]:
            if tenant is None:
                return await conn.fetch(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id > $1"
                    " AND state <> 'deleted' ORDER BY id LIMIT $2",
                    key,
                    limit,
                )
            return await conn.fetch(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE tenant = $3 AND id > $1"
                " AND state <> 'deleted' ORDER BY id LIMIT $2",
                key,
                limit,
                tenant,
            )

        return [_session_from_row(row) for row in await self._run(op)]

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session's frames (payloads included) in one transaction, keep a tombstone.

        The rows are gone for every reader at once; PostgreSQL reclaims their
        space when (auto)vacuum runs.
        """
        if not _storable(session_id):
            return False

        async def op(conn: Connection) -> bool:
            async with conn.transaction():
                state = await conn.fetchval(
                    "SELECT state FROM sessions WHERE id = $1 FOR UPDATE", session_id
                )
                if state is None or state == SessionState.DELETED.value:
                    return False
                await conn.execute("DELETE FROM frames WHERE session_id = $1", session_id)
                # Wait for transcript posts in flight; later ones find the tombstone.
                await conn.execute(_LOCK_TRANSCRIPT_HEAD, session_id)
                await conn.execute("DELETE FROM transcripts WHERE session_id = $1", session_id)
                await conn.execute(
                    "UPDATE sessions SET state = 'deleted', metadata = '{}', next_seq = 0,"
                    " frames = 0, bytes = 0, end_seq = NULL, stream_crc32c = NULL,"
                    " prefix_seq = 0, prefix_crc32c = 0, updated_at = $2 WHERE id = $1",
                    session_id,
                    datetime.now(UTC),
                )
                if self.events:
                    await _enqueue(conn, [(session_id, EventType.DELETED)])
                return True

        return await self._run(op)

    # -- frames --------------------------------------------------------------------

    async def missing(self, session_id: str) -> list[list[int]]:
        if not _storable(session_id):
            return []

        async def op(conn: Connection) -> list[list[int]]:
            return await _gaps(conn, session_id)

        return await self._run(op)

    async def commit(self, parts: Sequence[Part]) -> CommitResult:
        if not parts:
            return CommitResult([], {})
        frames = frames_of(parts)

        async def op(conn: Connection) -> CommitResult:
            async with conn.transaction():
                return await self._commit(conn, frames)

        return await self._run(op)

    async def _commit(self, conn: Connection, frames: Sequence[FrameIn]) -> CommitResult:
        outcomes = [Outcome.GONE] * len(frames)
        session_ids = sorted({f.session_id for f in frames if _storable(f.session_id)})
        rows = await conn.fetch(_LOCK_SESSIONS, session_ids)
        tallies = {row[0]: SessionTally(tuple(row)[1:]) for row in rows}
        if not tallies:
            return CommitResult(outcomes, {})
        # Only seqs below next_seq can be stored already.
        ask_ids: list[str] = []
        ask_seqs: list[int] = []
        for f in frames:
            tally = tallies.get(f.session_id)
            if tally is not None and f.seq < tally.next_seq:
                ask_ids.append(f.session_id)
                ask_seqs.append(f.seq)
        known: dict[tuple[str, int], tuple[int, int, int]] = {}
        if ask_ids:
            for sid, seq, crc, length, flags in await conn.fetch(_STORED_FRAMES, ask_ids, ask_seqs):
                known[sid, seq] = (crc, length, flags)

        records: list[tuple[str, int, int, int, int, int, bytes | memoryview]] = []
        for i, f in enumerate(frames):
            tally = tallies.get(f.session_id)
            if tally is None:
                continue  # GONE
            length = _payload_len(f.payload)
            key = (f.session_id, f.seq)
            outcome = outcomes[i] = tally.judge(f.seq, f.flags, f.crc32c, length, known.get(key))
            if outcome is not Outcome.STORED:
                continue
            known[key] = (f.crc32c, length, f.flags)
            pts = f.pts_us - _U64 if f.pts_us > _I64_MAX else f.pts_us
            records.append((f.session_id, f.seq, f.flags, pts, length, f.crc32c, f.payload))

        if records:
            # The session rows are locked and every seq was checked: COPY cannot conflict.
            await conn.copy_records_to_table("frames", records=records, columns=FRAME_COLUMNS)
            columns: list[list[Any]] = [[] for _ in range(9)]
            for sid, tally in tallies.items():
                if not tally.changed:
                    continue
                if tally.advance_in_batch():
                    await self._walk_prefix(conn, sid, tally)
                tally.finish()
                row = (
                    sid,
                    tally.state.value,
                    tally.next_seq,
                    tally.frames,
                    tally.bytes,
                    tally.end_seq,
                    tally.stream_crc32c,
                    tally.prefix_seq,
                    tally.prefix_crc,
                )
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
            await conn.execute(_UPDATE_SESSIONS, *columns, datetime.now(UTC))
            if self.events:
                # Rows: id, next_seq, frames, bytes, end_seq (4), stream_crc32c (5, once complete).
                due: list[tuple[str, EventType]] = []
                for locked in rows:
                    tally = tallies[locked[0]]
                    if locked[5] is None and tally.end_seq is not None:
                        kinds = commit_events(locked[4] is not None, tally.complete)
                        due.extend((locked[0], kind) for kind in kinds)
                if due:
                    await _enqueue(conn, due)
        return CommitResult(outcomes, {sid: tally.progress() for sid, tally in tallies.items()})

    async def _walk_prefix(self, conn: Connection, session_id: str, tally: SessionTally) -> None:
        """A gap just closed: extend the prefix over frames stored by earlier commits."""
        while True:
            rows = await conn.fetch(_PREFIX_WALK, session_id, tally.prefix_seq, PREFIX_WALK_FRAMES)
            for seq, crc, length in rows:
                if not tally.extend(seq, crc, length):
                    return
            if len(rows) < PREFIX_WALK_FRAMES:
                return

    async def frame_index(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> list[FrameEntry]:
        if not _storable(session_id):
            return []
        last = _MAX_SEQ if last_seq is None else last_seq

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT seq, flags, pts_us, length, crc32c FROM frames"
                " WHERE session_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq",
                session_id,
                first_seq,
                last,
            )

        return [
            FrameEntry(seq, flags, pts + _U64 if pts < 0 else pts, length, crc)
            for seq, flags, pts, length, crc in await self._run(op)
        ]

    async def read_payloads(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(seq, payload)`` in seq order, at most 256 frames or 4 MiB per query.

        Every payload is checked against its stored CRC-32C; a mismatch raises
        :class:`StoreError`. A session deleted meanwhile ends the iteration.
        """
        if not _storable(session_id):
            return
        last = _MAX_SEQ if last_seq is None else last_seq
        seq = first_seq
        while seq <= last:
            rows = await self._run(self._read_batch, session_id, seq, last)
            if not rows:
                return
            for row_seq, _, crc, payload in rows:
                if crc32c(payload) != crc:
                    raise StoreError(
                        f"postgres store {redact(self.dsn)}: payload of {session_id}"
                        f" seq {row_seq} does not match its CRC-32C"
                    )
                yield row_seq, payload
            found = rows[0]["found"]
            if len(rows) == found and found < READ_BATCH_FRAMES:
                return
            seq = rows[-1]["seq"] + 1

    @staticmethod
    async def _read_batch(
        conn: Connection, session_id: str, first: int, last: int
    ) -> list[asyncpg.Record]:
        return await conn.fetch(
            _READ_BATCH, session_id, first, last, READ_BATCH_FRAMES, READ_BATCH_BYTES
        )

    # -- stream ownership ----------------------------------------------------------

    async def claim_stream(self, session_id: str) -> int:
        """Bump and return the session's stream generation; StoreError for an unknown id."""
        generation: int | None = None
        if _storable(session_id):

            async def op(conn: Connection) -> int | None:
                value: int | None = await conn.fetchval(
                    "UPDATE sessions SET stream_generation = stream_generation + 1"
                    " WHERE id = $1 RETURNING stream_generation",
                    session_id,
                )
                return value

            generation = await self._run(op)
        if generation is None:
            raise StoreError(f"cannot claim the stream of unknown session {session_id}")
        return generation

    async def stream_generations(self, session_ids: Sequence[str]) -> dict[str, int]:
        ids = [sid for sid in session_ids if _storable(sid)]
        if not ids:
            return {}

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT id, stream_generation FROM sessions WHERE id = ANY($1::text[])", ids
            )

        return {sid: generation for sid, generation in await self._run(op)}

    # -- retention -----------------------------------------------------------------

    async def retention_moves(
        self, *, hot_before: datetime, warm_before: datetime, idle_before: datetime
    ) -> list[TierMove]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT id, tier, tier_target, updated_at FROM sessions WHERE state <> 'deleted'"
                " AND (tier_target IS NOT NULL"
                "  OR (tier = 'hot' AND updated_at < $1"
                "      AND (end_seq IS NOT NULL OR updated_at < $3))"
                "  OR (tier = 'warm' AND updated_at < $2))"
                " ORDER BY tier_target IS NULL, updated_at, id",
                hot_before,
                warm_before,
                idle_before,
            )

        moves = []
        for session_id, tier, target, updated_at in await self._run(op):
            resumed = target is not None
            if target is None:
                target = Tier.COLD if updated_at < warm_before else Tier.WARM
            moves.append(
                TierMove(
                    session_id=session_id,
                    tier=Tier(tier),
                    target=Tier(target),
                    last_activity_at=updated_at,
                    resumed=resumed,
                )
            )
        return moves

    async def begin_move(self, session_id: str, target: Tier, seen_activity: datetime) -> bool:
        if not _storable(session_id):
            return False
        sources = ["hot"] if target is Tier.WARM else ["hot", "warm"]

        async def op(conn: Connection) -> str:
            return await conn.execute(
                "UPDATE sessions SET tier_target = $2 WHERE id = $1 AND state <> 'deleted'"
                " AND tier_target IS NULL AND updated_at = $3 AND tier = ANY($4::text[])",
                session_id,
                target.value,
                seen_activity,
                sources,
            )

        return await self._run(op) == "UPDATE 1"

    async def cancel_move(self, session_id: str) -> None:
        if not _storable(session_id):
            return

        async def op(conn: Connection) -> None:
            await conn.execute("UPDATE sessions SET tier_target = NULL WHERE id = $1", session_id)

        await self._run(op)

    async def finish_archive(self, session_id: str, archive: ArchiveRecord) -> bool:
        return await self._finish_move(session_id, Tier.WARM, archive)

    async def finish_cold(self, session_id: str) -> bool:
        return await self._finish_move(session_id, Tier.COLD, None)

    async def _finish_move(
        self, session_id: str, target: Tier, archive: ArchiveRecord | None
    ) -> bool:
        if not _storable(session_id):
            return False

        async def op(conn: Connection) -> bool:
            async with conn.transaction():
                row = await conn.fetchrow(
                    "SELECT tier, kept_missing FROM sessions WHERE id = $1"
                    " AND state <> 'deleted' AND tier_target = $2 FOR UPDATE",
                    session_id,
                    target.value,
                )
                if row is None:
                    return False
                kept = row["kept_missing"]
                if row["tier"] == Tier.HOT.value:
                    gaps = [[a, b] for a, b in await conn.fetch(_MISSING, session_id)]
                    kept = msgspec.json.encode(gaps).decode()
                    await conn.execute("DELETE FROM frames WHERE session_id = $1", session_id)
                await conn.execute(
                    "UPDATE sessions SET tier = $2, tier_target = NULL, tier_changed_at = $3,"
                    " kept_missing = $4::json WHERE id = $1",
                    session_id,
                    target.value,
                    datetime.now(UTC),
                    kept,
                )
                if archive is not None:
                    await conn.execute(
                        "UPDATE sessions SET archive_path = $2, archive_bytes = $3,"
                        " archive_crc32c = $4, archived_at = $5 WHERE id = $1",
                        session_id,
                        archive.path,
                        archive.bytes,
                        archive.payload_crc32c,
                        archive.created_at,
                    )
                if self.events:
                    kind = EventType.ARCHIVED if target is Tier.WARM else EventType.EXPIRED
                    await _enqueue(conn, [(session_id, kind)])
                return True

        return await self._run(op)

    async def archive_record(self, session_id: str) -> ArchiveRecord | None:
        if not _storable(session_id):
            return None

        async def op(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                "SELECT archive_path, archive_bytes, archive_crc32c, archived_at FROM sessions"
                " WHERE id = $1 AND archive_path IS NOT NULL",
                session_id,
            )

        row = await self._run(op)
        return None if row is None else _archive_from_row(tuple(row))

    async def archives_to_discard(self) -> list[tuple[str, ArchiveRecord]]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT id, archive_path, archive_bytes, archive_crc32c, archived_at FROM sessions"
                " WHERE archive_path IS NOT NULL AND (tier = 'cold' OR state = 'deleted')"
                " ORDER BY id"
            )

        return [(row[0], _archive_from_row(tuple(row)[1:])) for row in await self._run(op)]

    async def forget_archive(self, session_id: str) -> None:
        if not _storable(session_id):
            return

        async def op(conn: Connection) -> None:
            await conn.execute(
                "UPDATE sessions SET archive_path = NULL, archive_bytes = NULL,"
                " archive_crc32c = NULL, archived_at = NULL WHERE id = $1",
                session_id,
            )

        await self._run(op)

    async def storage_stats(self) -> dict[Tier, TierStats]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                "WITH t AS (SELECT tier, count(*) AS n, coalesce(sum(bytes), 0)::bigint AS audio,"
                "  coalesce(sum(archive_bytes), 0)::bigint AS archived, min(id) AS oldest"
                "  FROM sessions WHERE state <> 'deleted' GROUP BY tier)"
                " SELECT t.tier, t.n, t.audio, t.archived, t.oldest, s.created_at, s.updated_at"
                " FROM t JOIN sessions s ON s.id = t.oldest"
            )

        stats = {tier: TierStats() for tier in Tier}
        for tier, sessions, audio, archived, oldest, created_at, updated_at in await self._run(op):
            kind = Tier(tier)
            stats[kind] = TierStats(
                sessions=sessions,
                bytes={Tier.HOT: audio, Tier.WARM: archived, Tier.COLD: 0}[kind],
                audio_bytes=audio,
                oldest=OldestSession(id=oldest, created_at=created_at, last_activity_at=updated_at),
            )
        return stats

    async def record_retention_run(self, run: RetentionRun) -> RetentionRun:
        async def op(conn: Connection) -> RetentionRun:
            async with conn.transaction():
                run_id = await conn.fetchval(
                    "INSERT INTO retention_runs (started_at, finished_at, outcome, report)"
                    " VALUES ($1, $2, $3, '{}') RETURNING id",
                    run.started_at,
                    run.finished_at,
                    run.outcome,
                )
                recorded = msgspec.structs.replace(run, id=run_id)
                await conn.execute(
                    "UPDATE retention_runs SET report = $2::json WHERE id = $1",
                    run_id,
                    msgspec.json.encode(recorded).decode(),
                )
                return recorded

        return await self._run(op)

    async def last_retention_run(self) -> RetentionRun | None:
        async def op(conn: Connection) -> str | None:
            value: str | None = await conn.fetchval(
                "SELECT report FROM retention_runs ORDER BY id DESC LIMIT 1"
            )
            return value

        report = await self._run(op)
        return None if report is None else msgspec.json.decode(report, type=RetentionRun)

    @contextlib.asynccontextmanager
    async def retention_lock(self) -> AsyncIterator[bool]:
        """A session-level advisory lock on a connection of its own, held while inside."""
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.timeout_s)
        except (*_FAILURE, ValueError) as exc:
            raise self._error(exc) from exc
        try:
            try:
                held = bool(
                    await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY)
                )
            except _FAILURE as exc:
                raise self._error(exc) from exc
            yield held
        finally:
            # Closing the connection releases the lock; a killed process's closes by itself.
            await conn.close()

    # -- webhook outbox --------------------------------------------------------------

    async def enqueue_event(self, session_id: str, kind: EventType) -> bool:
        if not _storable(session_id):
            return False

        async def op(conn: Connection) -> bool:
            async with conn.transaction():
                return await _enqueue(conn, [(session_id, kind)]) == 1

        return await self._run(op)

    async def claim_events(self, *, limit: int, lease_s: float) -> list[OutboxEvent]:
        if limit <= 0:
            return []
        claim = secrets.token_hex(8)

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(_CLAIM_EVENTS, limit, lease_s, claim)

        return [
            OutboxEvent(
                id=row["id"],
                type=EventType(row["type"]),
                session_id=row["session_id"],
                body=row["body"],
                created_at=row["created_at"],
                attempts=row["attempts"],
                claim=claim,
            )
            for row in sorted(await self._run(op), key=lambda row: int(row["seq"]))
        ]

    async def event_delivered(self, event_id: str, claim: str) -> bool:
        async def op(conn: Connection) -> str:
            return await conn.execute(
                "DELETE FROM webhook_outbox WHERE id = $1 AND claim = $2 AND status = 'pending'",
                event_id,
                claim,
            )

        return await self._run(op) == "DELETE 1"

    async def retry_event(self, event_id: str, claim: str, *, delay_s: float, error: str) -> bool:
        return await self._event_attempted(event_id, claim, "pending", delay_s, error)

    async def fail_event(self, event_id: str, claim: str, *, error: str) -> bool:
        return await self._event_attempted(event_id, claim, "failed", 0.0, error)

    async def _event_attempted(
        self, event_id: str, claim: str, status: str, delay_s: float, error: str
    ) -> bool:
        async def op(conn: Connection) -> str:
            return await conn.execute(
                "UPDATE webhook_outbox SET status = $3, attempts = attempts + 1, last_error = $5,"
                " due_at = clock_timestamp() + $4 * interval '1 second'"
                " WHERE id = $1 AND claim = $2 AND status = 'pending'",
                event_id,
                claim,
                status,
                delay_s,
                error,
            )

        return await self._run(op) == "UPDATE 1"

    async def event_counts(self) -> dict[str, int]:
        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch("SELECT status, count(*) FROM webhook_outbox GROUP BY status")

        counts = {"pending": 0, "failed": 0}
        for status, count in await self._run(op):
            counts[status] = count
        return counts

    # -- transcripts and listeners -------------------------------------------------

    async def add_transcript(self, session_id: str, entry: TranscriptIn) -> TranscriptResult:
        if not _storable(session_id):
            return TranscriptResult(TranscriptOutcome.GONE, None)
        timestamp = msgspec.json.encode(entry.timestamp).decode()

        async def op(conn: Connection) -> TranscriptResult:
            try:
                async with conn.transaction():
                    return await self._add_transcript(conn, session_id, entry, timestamp)
            except _Gone:
                return TranscriptResult(TranscriptOutcome.GONE, None)

        return await self._run(op)

    @staticmethod
    async def _add_transcript(
        conn: Connection, session_id: str, entry: TranscriptIn, timestamp: str
    ) -> TranscriptResult:
        # The head row serializes posts to one session (and orders them after a delete).
        last: int = await conn.fetchval(_LOCK_TRANSCRIPT_HEAD, session_id)
        state = await conn.fetchval("SELECT state FROM sessions WHERE id = $1", session_id)
        if state is None or state == SessionState.DELETED.value:
            raise _Gone  # rolls back the head row of an unknown id
        if entry.seq is not None:
            current = await conn.fetchrow(
                f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts"
                " WHERE session_id = $1 AND role = $2 AND seq = $3",
                session_id,
                entry.role,
                entry.seq,
            )
        else:
            current = await conn.fetchrow(
                f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts"
                " WHERE session_id = $1 AND role = $2 AND seq IS NULL AND NOT is_final",
                session_id,
                entry.role,
            )
        if current is not None and current["is_final"]:
            stored = _transcript_from_row(session_id, current)
            if not entry.is_final:
                outcome = TranscriptOutcome.STALE
            elif entry.text == stored.text:
                outcome = TranscriptOutcome.DUPLICATE
            else:
                outcome = TranscriptOutcome.CONFLICT
            return TranscriptResult(outcome, stored)
        transcript = Transcript(
            id=last + 1,
            session_id=session_id,
            role=entry.role,
            text=entry.text,
            is_final=entry.is_final,
            timestamp=entry.timestamp,
            seq=entry.seq,
            supersedes=None if current is None else current["id"],
            received_at=datetime.now(UTC),
        )
        await conn.execute(
            "UPDATE transcript_heads SET last_id = $2 WHERE session_id = $1",
            session_id,
            transcript.id,
        )
        if current is not None:
            await conn.execute(
                "DELETE FROM transcripts WHERE session_id = $1 AND id = $2",
                session_id,
                current["id"],
            )
        await conn.execute(
            "INSERT INTO transcripts (session_id, id, role, seq, is_final, text,"
            " client_timestamp, supersedes, received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8, $9)",
            session_id,
            transcript.id,
            entry.role,
            entry.seq,
            entry.is_final,
            entry.text,
            timestamp,
            transcript.supersedes,
            transcript.received_at,
        )
        return TranscriptResult(TranscriptOutcome.STORED, transcript)

    async def list_transcripts(
        self, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Transcript]:
        if limit <= 0 or not _storable(session_id):
            return []

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                f"SELECT {_TRANSCRIPT_COLUMNS} FROM transcripts WHERE session_id = $1"
                " AND id > $2 ORDER BY id LIMIT $3",
                session_id,
                min(after, _I64_MAX),
                limit,
            )

        return [_transcript_from_row(session_id, row) for row in await self._run(op)]

    async def last_transcript_id(self, session_id: str) -> int:
        if not _storable(session_id):
            return 0

        async def op(conn: Connection) -> int | None:
            value: int | None = await conn.fetchval(
                "SELECT last_id FROM transcript_heads WHERE session_id = $1", session_id
            )
            return value

        return await self._run(op) or 0

    async def listen_snapshot(self, session_id: str) -> ListenSnapshot:
        if not _storable(session_id):
            return ListenSnapshot(None, [], 0)

        async def op(conn: Connection) -> ListenSnapshot:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
                )
                gaps = await _gaps(conn, session_id)
                last = await conn.fetchval(
                    "SELECT last_id FROM transcript_heads WHERE session_id = $1", session_id
                )
            return ListenSnapshot(None if row is None else _session_from_row(row), gaps, last or 0)

        return await self._run(op)

    async def read_frames(
        self, session_id: str, first_seq: int, last_seq: int, *, max_frames: int, max_bytes: int
    ) -> list[StoredFrame]:
        if last_seq < first_seq or max_frames <= 0 or not _storable(session_id):
            return []

        async def op(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(
                _READ_FRAMES, session_id, first_seq, last_seq, max_frames, max_bytes
            )

        frames = []
        for seq, flags, pts, crc, payload in await self._run(op):
            if crc32c(payload) != crc:
                raise StoreError(
                    f"postgres store {redact(self.dsn)}: payload of {session_id}"
                    f" seq {seq} does not match its CRC-32C"
                )
            frames.append(StoredFrame(seq, flags, pts + _U64 if pts < 0 else pts, crc, payload))
        return frames


# Lease up to $1 due pending events for $2 seconds under claim $3. SKIP LOCKED: claimers
# running at once take disjoint rows instead of waiting for each other.
_CLAIM_EVENTS = (
    "UPDATE webhook_outbox o SET due_at = clock_timestamp() + $2 * interval '1 second',"
    " claim = $3 FROM (SELECT seq FROM webhook_outbox"
    "  WHERE status = 'pending' AND due_at <= clock_timestamp()"
    "  ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) AS due"
    " WHERE o.seq = due.seq"
    " RETURNING o.seq, o.id, o.type, o.session_id, o.body, o.created_at, o.attempts"
)


async def _enqueue(conn: Connection, events: list[tuple[str, EventType]]) -> int:
    """Inside a transaction: enqueue each event with the session as it is now."""
    now = datetime.now(UTC)
    added = 0
    for session_id, kind in events:
        row = await conn.fetchrow(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
        )
        if row is None:
            continue
        eid, body = event_body(kind, now, _session_from_row(row))
        status = await conn.execute(
            "INSERT INTO webhook_outbox (id, type, session_id, body, created_at, due_at)"
            " VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
            eid,
            kind.value,
            session_id,
            body,
            now,
        )
        added += status == "INSERT 0 1"
    return added


class _Gone(Exception):
    """Inside a transaction: the session is unknown or deleted (rolls the transaction back)."""


_TRANSCRIPT_COLUMNS = "id, role, seq, text, client_timestamp, is_final, supersedes, received_at"
# Create (if needed) and lock a session's transcript head row; answers its last id.
_LOCK_TRANSCRIPT_HEAD = (
    "INSERT INTO transcript_heads (session_id, last_id) VALUES ($1, 0)"
    " ON CONFLICT (session_id) DO UPDATE SET last_id = transcript_heads.last_id"
    " RETURNING last_id"
)
# Up to $4 frames from seq $2 to $3 with payloads, cut after $5 bytes (at least one frame).
_READ_FRAMES = (
    "WITH idx AS ("
    "  SELECT seq, length FROM frames WHERE session_id = $1 AND seq >= $2 AND seq <= $3"
    "  ORDER BY seq LIMIT $4"
    "), sized AS ("
    "  SELECT seq, sum(length) OVER (ORDER BY seq) AS upto,"
    "  row_number() OVER (ORDER BY seq) AS n FROM idx"
    ")"
    " SELECT f.seq, f.flags, f.pts_us, f.crc32c, f.payload FROM sized s"
    " JOIN frames f ON f.session_id = $1 AND f.seq = s.seq"
    " WHERE s.n = 1 OR s.upto <= $5 ORDER BY s.seq"
)


def _transcript_from_row(session_id: str, row: asyncpg.Record) -> Transcript:
    return Transcript(
        id=row["id"],
        session_id=session_id,
        role=row["role"],
        seq=row["seq"],
        text=row["text"],
        timestamp=msgspec.json.decode(row["client_timestamp"], type=TimestampValue),
        is_final=row["is_final"],
        supersedes=row["supersedes"],
        received_at=row["received_at"],
    )
