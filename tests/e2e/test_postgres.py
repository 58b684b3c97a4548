"""A real ``voxgate serve`` on the PostgreSQL store (``VOXGATE_DATABASE_URL``).

The wire contract is the same whichever store is behind it: a representative
part of the conformance, session and audio suites runs here again against
PostgreSQL (imported, so they are the very same tests). Then what only this
setup shows: the data is in PostgreSQL and nowhere else, and a stream lives
through PostgreSQL going away and coming back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from e2e.test_audio import (  # noqa: F401
    test_audio_is_the_payloads_in_seq_order,
    test_gaps_give_409_unless_allowed,
    test_range_request_gets_206_with_the_right_bytes,
)
from e2e.test_conformance import (  # noqa: F401
    test_a_resent_frame_that_adds_or_drops_end_is_a_conflict,
    test_an_end_frame_below_a_stored_frame_is_refused_as_sequence,
    test_an_open_stream_gets_complete_when_an_upload_fills_the_last_gap,
    test_checksum_mismatch_is_nacked_stored_nowhere_and_resend_is_acked,
    test_complete_carries_the_stream_crc32c,
    test_complete_waits_for_the_last_gap,
    test_conflicting_frame_is_refused_and_the_stored_copy_stays,
    test_connecting_to_a_complete_session_gets_complete_at_once,
    test_every_frame_is_acked_and_stored_once,
    test_frame_too_far_ahead_is_refused_as_sequence,
    test_frames_after_end_in_the_same_message_are_refused_as_sequence,
    test_hello_on_a_new_session,
    test_newer_connection_supersedes_the_older,
    test_pts_us_is_stored_exactly_as_sent,
    test_repeated_frame_is_acked_as_duplicate_and_stored_once,
    test_resume_after_a_dropped_connection,
    test_zero_length_end_frame_is_accepted,
)
from e2e.test_sessions import (  # noqa: F401
    test_create_answers_201_with_the_session,
    test_delete_unknown_session_is_404,
    test_get_unknown_session_is_404,
    test_list_pages_with_after,
    test_streaming_to_a_deleted_session_closes_4410,
    test_token_for_a_deleted_session_is_refused,
)
from e2e.test_upload import test_upload_reports_duplicates_and_rejections  # noqa: F401
from e2e.wire import Api, frame, payload_for, stream_crc
from servers import Server, ServerError, start_server
from services import PostgresServer
from voxgate.client import Api as ClientApi
from voxgate.client import Backoff, StreamClient


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database(f"e2e_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database: str) -> Iterator[Server]:
    env = {"VOXGATE_DATABASE_URL": database, "VOXGATE_DATABASE_POOL_MAX": "4"}
    with start_server(tmp_path_factory.mktemp("pg-server"), env=env) as running:
        yield running


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(database)
    yield conn
    await conn.close()


def segment_files(data_dir: Path) -> list[Path]:
    return list(data_dir.rglob("*.seg"))


async def test_a_client_streams_a_session_into_postgresql(
    server: Server, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    frames = 1500
    async with ClientApi(server.base_url, server.api_key) as api:
        sid = (await api.create_session(codec="pcm_s16le", sample_rate=16000))["id"]
        payloads = [payload_for(sid, seq, 640) for seq in range(frames)]
        async with StreamClient(
            server.base_url, sid, api.token_factory(sid), frames_per_message=10
        ) as client:
            for payload in payloads:
                await client.send(payload)
            await client.end()
            completion = await client.wait_complete(60)
        assert completion.verified
        assert completion.stream_crc32c == stream_crc(payloads)
        assert await api.audio(sid) == b"".join(payloads)

    row = await db.fetchrow(
        "SELECT sum(last_seq - first_seq + 1) AS n, sum(payload_bytes) AS bytes,"
        " max(last_seq) AS top FROM blocks WHERE session_id = $1",
        sid,
    )
    assert row is not None
    assert (row["n"], row["bytes"], row["top"]) == (frames, 640 * frames, frames - 1)
    state = await db.fetchval("SELECT state FROM sessions WHERE id = $1", sid)
    assert state == "complete"
    assert segment_files(server.data_dir) == [], "the PostgreSQL store writes no segment files"


async def test_delete_removes_the_payloads_from_postgresql(
    api: Api, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    sid = await api.new_session()
    marker = f"DELETE-ME-{uuid.uuid4().hex}".encode()
    payloads = {seq: marker + payload_for(sid, seq, 200) for seq in range(6)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq], end=seq == 5) for seq in range(6)))
    assert (await stream.collect(range(6))).acked == set(range(6))
    await stream.close()
    holding = "SELECT count(*) FROM blocks WHERE position($1::bytea IN data) > 0"
    assert await db.fetchval(holding, marker) >= 1

    response = await api.http.delete(f"/v1/sessions/{sid}")
    assert response.status_code == 204, response.text
    assert await db.fetchval(holding, marker) == 0
    tomb = await db.fetchrow("SELECT state, frames, bytes FROM sessions WHERE id = $1", sid)
    assert tomb is not None
    assert tuple(tomb) == ("deleted", 0, 0)


async def test_a_stream_survives_postgresql_going_away(
    server: Server, postgres_server: PostgresServer, database: str
) -> None:
    frames = 6000
    async with ClientApi(server.base_url, server.api_key) as api:
        sid = (await api.create_session(codec="pcm_s16le", sample_rate=16000))["id"]
        payloads = [payload_for(sid, seq, 640) for seq in range(frames)]
        backoff = Backoff(initial_s=0.05, max_s=0.5, max_attempts=None, deadline_s=120)
        client = StreamClient(
            server.base_url, sid, api.token_factory(sid), frames_per_message=4, backoff=backoff
        )
        async with client:

            async def produce() -> None:
                for seq, payload in enumerate(payloads):
                    await client.send(payload, end=seq == frames - 1)
                    await asyncio.sleep(0.0005)  # a live source: the stream lasts seconds

            producer = asyncio.create_task(produce())
            while client.stats.frames_acked < 500:
                assert not producer.done(), "the producer failed before the outage"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(postgres_server.stop)
            await asyncio.sleep(1.0)
            assert not producer.done(), "the stream ended before PostgreSQL came back"
            await asyncio.to_thread(postgres_server.start)
            await asyncio.wait_for(producer, 120)
            completion = await client.wait_complete(120)
        assert completion.verified
        assert completion.frames == frames
        assert completion.stream_crc32c == stream_crc(payloads)
        # The outage closed the stream (1013) at least once; the client resumed.
        assert client.stats.reconnects >= 1
        report = await api.missing(sid)
        assert report["complete"] is True
        assert report["frames"] == frames
        assert await api.audio(sid) == b"".join(payloads)

    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow(
            "SELECT sum(last_seq - first_seq + 1) AS n,"
            " count(DISTINCT first_seq) = count(*) AS distinct_blocks, max(last_seq) AS top,"
            " sum(payload_bytes) AS bytes FROM blocks WHERE session_id = $1",
            sid,
        )
    finally:
        await conn.close()
    assert row is not None
    assert tuple(row) == (frames, True, frames - 1, 640 * frames)


def test_serve_stops_with_a_clear_message_when_the_database_is_unreachable(
    tmp_path: Path,
) -> None:
    env = {"VOXGATE_DATABASE_URL": "postgresql://voxgate:hunter2@127.0.0.1:9/voxgate"}
    with pytest.raises(ServerError) as failure:
        start_server(tmp_path, env=env)
    message = str(failure.value)
    assert "exited with 1" in message, message
    assert "postgresql://voxgate:***@127.0.0.1:9/voxgate" in message, message
    assert "hunter2" not in message
    assert "Traceback" not in message, message
