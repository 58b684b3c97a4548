"""What only the PostgreSQL store has: migrations, a pool, a server that can go away."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services import PostgresServer
from voxgate._native import crc32c
from voxgate.store import migrations
from voxgate.store.base import Outcome, SessionState, StoreError
from voxgate.store.postgres import PostgresStore, redact

from .conftest import frame, payload_of

_databases = 0


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> str:
    """A new, empty database."""
    global _databases
    _databases += 1
    return postgres_server.create_database(f"pgstore_{_databases}")


@pytest.fixture
async def pg(dsn: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(dsn, pool_min=2, pool_max=4, timeout_s=10)
    await store.open()
    yield store
    await store.close()


async def fetchval(dsn: str, query: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


# -- migrations ------------------------------------------------------------------


async def test_frame_rows_of_schema_5_become_blocks(dsn: str) -> None:
    """A database written with one row per frame (schema 5) reads the same after
    migration 6 turned its rows into blocks, resends included."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(migrations._CREATE_TABLE)
        for migration in migrations.load()[:5]:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.sha256,
            )
        payloads = {seq: payload_of("old", seq, 300 + seq) for seq in (0, 1, 2, 3, 7, 8)}
        payloads[8] = b""  # an empty END frame
        await conn.execute(
            "INSERT INTO sessions (id, state, created_at, updated_at, next_seq, frames, bytes,"
            " end_seq, prefix_seq, prefix_crc32c) VALUES ('ses_old', 'ended', now(), now(),"
            " 9, 6, $1, 8, 4, $2)",
            sum(len(p) for p in payloads.values()),
            crc32c(b"".join(payloads[s] for s in range(4))),
        )
        await conn.executemany(
            "INSERT INTO frames VALUES ('ses_old', $1, $2, $3, $4, $5, $6)",
            [
                (seq, 1 if seq == 8 else 0, -5 if seq == 3 else seq * 20_000, len(p),
                 crc32c(p), p)
                for seq, p in payloads.items()
            ],
        )  # fmt: skip
    finally:
        await conn.close()
    store = PostgresStore(dsn, pool_min=0, pool_max=2)
    await store.open()
    try:
        assert [(s, p) async for s, p in store.read_payloads("ses_old")] == sorted(payloads.items())
        index = await store.frame_index("ses_old")
        assert [(e.seq, e.flags) for e in index] == [(s, 1 if s == 8 else 0) for s in payloads]
        assert index[3].pts_us == (1 << 64) - 5  # a u64 kept as two's complement
        assert await store.missing("ses_old") == [[4, 6]]
        result = await store.commit(
            [
                frame("ses_old", 2, payloads[2]),
                frame("ses_old", 7, b"other"),
                *(frame("ses_old", s, payload_of("new", s)) for s in (4, 5, 6)),
            ]
        )
        assert result.outcomes == [Outcome.DUPLICATE, Outcome.CONFLICT] + [Outcome.STORED] * 3
        session = await store.get_session("ses_old")
        assert session is not None
        assert session.state is SessionState.COMPLETE
    finally:
        await store.close()
    tables = await fetchval(dsn, "SELECT to_regclass('frames') IS NULL")
    assert tables is True


async def test_concurrent_opens_apply_each_migration_once(dsn: str) -> None:
    stores = [PostgresStore(dsn, pool_min=0, pool_max=1) for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        versions = await fetchval(
            dsn, "SELECT array_agg(version ORDER BY version) FROM schema_migrations"
        )
        assert versions == list(range(1, migrations.latest_version() + 1))
        sid = (
            await stores[0].create_session(codec=None, sample_rate=None, channels=None, metadata={})
        ).id
        assert (await stores[5].get_session(sid)) is not None
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_migrate_false_refuses_an_empty_database(dsn: str) -> None:
    store = PostgresStore(dsn, migrate=False)
    with pytest.raises(StoreError, match="voxgate db migrate"):
        await store.open()
    migrating = PostgresStore(dsn)
    await migrating.open()
    await migrating.close()
    checked = PostgresStore(dsn, migrate=False)
    await checked.open()
    await checked.close()


async def test_a_newer_or_edited_schema_is_refused(dsn: str) -> None:
    store = PostgresStore(dsn)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE schema_migrations SET sha256 = 'x' WHERE version = 1")
        with pytest.raises(StoreError, match="differs"):
            await PostgresStore(dsn).open()
        await conn.execute(
            "UPDATE schema_migrations SET sha256 = $1 WHERE version = 1",
            migrations.load()[0].sha256,
        )
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, sha256) VALUES (999, 'future', '')"
        )
        with pytest.raises(StoreError, match="newer"):
            await PostgresStore(dsn, migrate=False).open()
    finally:
        await conn.close()


async def test_block_column_is_stored_uncompressed_out_of_line(dsn: str) -> None:
    store = PostgresStore(dsn)
    await store.open()
    await store.close()
    storage = await fetchval(
        dsn,
        "SELECT attstorage::text FROM pg_attribute"
        " WHERE attrelid = 'blocks'::regclass AND attname = 'data'",
    )
    assert storage == "e"  # EXTERNAL


async def test_commits_wait_for_the_wal_flush_even_where_the_default_says_off(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ALTER DATABASE {dsn.rsplit('/', 1)[1]} SET synchronous_commit = off")
    finally:
        await conn.close()
    assert await fetchval(dsn, "SHOW synchronous_commit") == "off"
    store = PostgresStore(dsn, pool_min=2, pool_max=2)
    await store.open()
    try:

        async def setting(conn: asyncpg.Connection[asyncpg.Record]) -> object:
            return await conn.fetchval("SHOW synchronous_commit")

        # Every pooled connection, including after the pool reset a used one.
        for _ in range(4):
            assert await store._run(setting) == "on"
    finally:
        await store.close()


# -- errors and recovery -----------------------------------------------------------


async def test_unreachable_database_is_a_store_error(postgres_server: PostgresServer) -> None:
    dsn = f"postgresql://nobody:secret@127.0.0.1:{postgres_server.port + 1}/none"
    store = PostgresStore(dsn, timeout_s=5)
    with pytest.raises(StoreError) as raised:
        await store.open()
    assert "secret" not in str(raised.value), "the password stays out of messages"
    assert redact(dsn) in str(raised.value)


async def test_ids_postgres_cannot_hold_are_unknown(pg: PostgresStore) -> None:
    odd = ["ses_\x00", "s\u00e9ance", "\udc80"]
    for sid in odd:
        assert await pg.get_session(sid) is None
        assert await pg.missing(sid) == []
        assert await pg.frame_index(sid) == []
        assert [x async for x in pg.read_payloads(sid)] == []
        assert await pg.delete_session(sid) is False
        with pytest.raises(StoreError, match="unknown session"):
            await pg.claim_stream(sid)
    result = await pg.commit([frame(sid, 0, b"x") for sid in odd])
    assert result.outcomes == [Outcome.GONE] * 3
    assert await pg.stream_generations(odd) == {}
    session = await pg.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    for after in ("\x00", "ses_\x00zzz", "\udc80"):
        listed = await pg.list_sessions(limit=10, after=after)
        assert [s.id for s in listed] == ([session.id] if after < session.id else [])


async def test_metadata_round_trips_exactly(pg: PostgresStore) -> None:
    metadata = {"z": 1, "a": "nul\x00byte", "nested": {"b": [1.5, None, True]}, "\u00e9": "\u2603"}
    session = await pg.create_session(
        codec="opus", sample_rate=48000, channels=2, metadata=metadata
    )
    got = await pg.get_session(session.id)
    assert got is not None
    assert got.metadata == metadata
    assert list(got.metadata) == list(metadata), "key order is kept"


async def test_restart_is_survived_without_an_error(
    pg: PostgresStore, postgres_server: PostgresServer
) -> None:
    sid = (await pg.create_session(codec=None, sample_rate=None, channels=None, metadata={})).id
    await pg.commit([frame(sid, 0, b"before")])
    await asyncio.to_thread(postgres_server.restart)
    # Every pooled connection died with the server; the next call still succeeds.
    result = await pg.commit([frame(sid, 1, b"after", end=True)])
    assert result.outcomes == [Outcome.STORED]
    assert result.progress[sid].stream_crc32c == crc32c(b"beforeafter")


async def test_server_down_is_a_store_error_then_recovers(
    pg: PostgresStore, postgres_server: PostgresServer
) -> None:
    sid = (await pg.create_session(codec=None, sample_rate=None, channels=None, metadata={})).id
    await pg.commit([frame(sid, 0, b"zero")])
    await asyncio.to_thread(postgres_server.stop)
    try:
        with pytest.raises(StoreError):
            await pg.commit([frame(sid, 1, b"one")])
        with pytest.raises(StoreError):
            await pg.get_session(sid)
        with pytest.raises(StoreError):
            await pg.stream_generations([sid])
    finally:
        await asyncio.to_thread(postgres_server.start)
    # Resending after the failure is safe: whatever landed is a duplicate now.
    result = await pg.commit([frame(sid, 1, b"one"), frame(sid, 2, b"two", end=True)])
    assert result.outcomes == [Outcome.STORED, Outcome.STORED]
    assert result.progress[sid].complete
    assert await pg.missing(sid) == []


# -- concurrency -------------------------------------------------------------------


async def test_overlapping_concurrent_commits_neither_deadlock_nor_store_twice(dsn: str) -> None:
    stores = [PostgresStore(dsn, pool_min=1, pool_max=4) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        sessions = [
            (
                await stores[0].create_session(
                    codec=None, sample_rate=None, channels=None, metadata={}
                )
            ).id
            for _ in range(8)
        ]
        total = 60

        async def committer(store: PostgresStore, seed: int) -> list[tuple[str, int, Outcome]]:
            rng = random.Random(seed)
            seen: list[tuple[str, int, Outcome]] = []
            for _ in range(25):
                # Each batch spans several sessions in random order.
                batch = [
                    frame(sid, seq, payload_of(sid, seq, 30), end=seq == total - 1)
                    for sid in rng.sample(sessions, 4)
                    for seq in rng.sample(range(total), 8)
                ]
                rng.shuffle(batch)
                result = await store.commit(batch)
                seen += [
                    (f.session_id, f.seq, o) for f, o in zip(batch, result.outcomes, strict=True)
                ]
            return seen

        # Eight committers over two stores: four transactions at once per store.
        answers = await asyncio.gather(*(committer(stores[i % 2], i) for i in range(8)))
        stored: dict[tuple[str, int], int] = {}
        for sid, seq, outcome in (item for answer in answers for item in answer):
            assert outcome in (Outcome.STORED, Outcome.DUPLICATE, Outcome.SEQUENCE)
            if outcome is Outcome.STORED:
                stored[sid, seq] = stored.get((sid, seq), 0) + 1
        assert set(stored.values()) == {1}
        for sid in sessions:
            index = await stores[1].frame_index(sid)
            session = await stores[1].get_session(sid)
            assert session is not None
            assert {e.seq for e in index} == {seq for s, seq in stored if s == sid}
            assert session.frames == len(index)
            assert session.bytes == sum(e.length for e in index)
            if session.state is SessionState.COMPLETE:
                assert [e.seq for e in index] == list(range(total))
                expected = b"".join(payload_of(sid, seq, 30) for seq in range(total))
                assert session.stream_crc32c == crc32c(expected)
            else:
                assert session.state is SessionState.OPEN or len(index) < total
    finally:
        for store in stores:
            await store.close()
