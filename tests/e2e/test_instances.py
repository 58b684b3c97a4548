"""Two ``voxgate serve`` instances sharing one Redis and one store.

Instance A and instance B are separate server processes on their own ports,
as two hosts behind a load balancer would be. They share the store (every
test runs twice: on the embedded store's data dir, which several processes
may open at once, and on one PostgreSQL database) and a real Redis for tokens
and takeover notices.

The store poll that also catches takeovers is set to an hour here, so a
superseded connection on the other instance can only be closed promptly by
the Redis pub/sub notice: these tests prove that path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from e2e.wire import (
    Api,
    Json,
    Sender,
    Stream,
    StreamClosed,
    api_for,
    frame,
    payload_for,
    seqs_of,
    stream_crc,
    wait_for_acks,
)
from servers import Server, two_instances
from services import RedisServer

POLL_DISABLED = "3600"


@pytest.fixture(scope="module")
def instances(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    shared_store_env: dict[str, str],
) -> Iterator[tuple[Server, Server]]:
    env = {
        **shared_store_env,
        "VOXGATE_REDIS_URL": redis_server.url,
        "VOXGATE_SUPERSEDE_POLL_S": POLL_DISABLED,
    }
    with two_instances(tmp_path_factory.mktemp("instances"), env) as pair:
        yield pair


@pytest.fixture
async def a(instances: tuple[Server, Server]) -> AsyncIterator[Api]:
    async with api_for(instances[0]) as api:
        yield api


@pytest.fixture
async def b(instances: tuple[Server, Server]) -> AsyncIterator[Api]:
    async with api_for(instances[1]) as api:
        yield api


async def opening(stream: Stream) -> str:
    """``hello`` if the server let the stream in, else the error code it closed with."""
    try:
        message = await stream.recv_wire(10)
    except StreamClosed as exc:
        return str(exc)
    if message["type"] == "hello":
        stream.hello = message
        return "hello"
    assert message["type"] == "error", message
    return str(message["code"])


async def test_both_instances_are_ready_with_redis_connected(a: Api, b: Api) -> None:
    for api in (a, b):
        response = await api.http.get("/ready")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "ok", body
        assert body["failing"] == [], body
        assert body["components"]["store"]["status"] == "up", body
        redis = body["components"]["redis"]
        assert (redis["status"], redis["connected"]) == ("up", True), body
        assert isinstance(redis["latency_ms"], float | int), body


@pytest.mark.parametrize(("mint_on", "use_on", "reuse_on"), ["aba", "abb", "baa", "bab"])
async def test_a_token_minted_on_one_instance_is_used_once_on_any(
    a: Api, b: Api, mint_on: str, use_on: str, reuse_on: str
) -> None:
    api = {"a": a, "b": b}
    sid = await api[mint_on].new_session()
    token = await api[mint_on].mint_token(sid)
    first = await api[use_on].connect(sid, token)
    hello = await first.read_hello()
    assert hello["session_id"] == sid
    again = await api[reuse_on].connect(sid, token)
    messages = await again.expect_close(4401)
    assert messages[-1]["code"] == "unauthorized", messages
    await first.close()


async def test_one_token_raced_on_both_instances_opens_one_stream(a: Api, b: Api) -> None:
    for attempt in range(5):
        sid = await a.new_session()
        token = await a.mint_token(sid)
        streams = await asyncio.gather(a.connect(sid, token), b.connect(sid, token))
        outcomes = await asyncio.gather(*(opening(stream) for stream in streams))
        assert sorted(outcomes) == ["hello", "unauthorized"], f"attempt {attempt}: {outcomes}"
        for stream in streams:
            await stream.close()


async def test_a_stream_dropped_on_a_resumes_on_b_without_loss_or_double_storage(
    a: Api, b: Api
) -> None:
    frames, size = 1200, 700
    sid = await a.new_session()

    def payload(seq: int) -> bytes:
        return payload_for(sid, seq, size)

    on_a = await a.stream(sid)
    assert on_a.hello is not None
    sender = Sender(on_a, payload)
    task = asyncio.create_task(sender.run(range(frames), end_seq=frames - 1))
    await wait_for_acks(sender, task, 200)
    assert not task.done(), "the stream finished before the drop"
    await on_a.drop()  # the network goes away mid-stream
    await asyncio.wait_for(task, 30)
    acked_on_a = set(sender.acked)

    # B already serves every frame A acked (A may still be finishing commits the
    # client sent before the drop: those land once, whichever instance answers).
    stored = await b.stored_seqs(sid)
    assert acked_on_a <= stored, f"acked on A but not stored: {sorted(acked_on_a - stored)[:20]}"

    on_b = await b.stream(sid)
    assert on_b.hello is not None
    stored_per_hello = set(range(on_b.hello["next_seq"])) - seqs_of(on_b.hello["missing"])
    assert acked_on_a <= stored_per_hello, on_b.hello
    # The client resends everything it has no ack for, plus some frames A did ack
    # (as a client unsure of its last acks would): none may be stored twice.
    resend = (set(range(frames)) - acked_on_a) | set(sorted(acked_on_a)[-50:])
    resumed = Sender(on_b, payload)
    await asyncio.wait_for(resumed.run(sorted(resend), end_seq=frames - 1), 60)
    assert resumed.closed is None, resumed.closed
    assert not resumed.nacked, resumed.nacked
    assert resumed.acked == resend
    complete = resumed.complete
    assert complete is not None
    expected = [payload(seq) for seq in range(frames)]
    assert (complete["frames"], complete["bytes"]) == (frames, frames * size)
    assert complete["stream_crc32c"] == stream_crc(expected)
    for api in (a, b):
        report = await api.missing(sid)
        assert (report["frames"], report["bytes"], report["complete"]) == (
            frames,
            frames * size,
            True,
        )
        assert await api.audio_bytes(sid) == b"".join(expected)


@pytest.mark.parametrize(("old_on", "new_on"), ["ab", "ba"])
async def test_a_newer_connection_on_one_instance_supersedes_the_other_with_4409(
    a: Api, b: Api, old_on: str, new_on: str
) -> None:
    api = {"a": a, "b": b}
    sid = await api[old_on].new_session()
    old = await api[old_on].stream(sid)
    await old.send(frame(0, payload_for(sid, 0)))
    assert (await old.collect([0])).acked == {0}

    new = await api[new_on].stream(sid)
    assert new.hello is not None
    assert new.hello["next_seq"] == 1
    # The store poll is off: only the Redis notice can close the old stream.
    messages = await old.expect_close(4409, within=10)
    assert messages[-1]["code"] == "superseded", messages

    await new.send(frame(1, payload_for(sid, 1), end=True))
    assert (await new.collect([1])).acked == {1}
    complete = await new.recv_type("complete")
    assert complete["stream_crc32c"] == stream_crc(payload_for(sid, seq) for seq in range(2))
    await new.close()


async def test_session_state_and_counters_agree_on_both_instances(a: Api, b: Api) -> None:
    sid = await a.new_session(metadata={"call": "agree"})
    payloads = {seq: payload_for(sid, seq, 333) for seq in range(10)}
    views: list[tuple[Json, Json]] = []

    async def both_views() -> tuple[Json, Json]:
        seen = [(await api.get_session(sid), await api.missing(sid)) for api in (a, b)]
        assert seen[0] == seen[1], f"A and B disagree: {seen}"
        return seen[0]

    views.append(await both_views())
    # Frames 0-4 over the stream on A, 7-9 (with END) uploaded on B: a gap at 5-6.
    on_a = await a.stream(sid)
    assert (await a.send_all(on_a, {s: payloads[s] for s in range(5)})).acked == set(range(5))
    await on_a.close()
    body = b"".join(frame(s, payloads[s], end=s == 9) for s in range(7, 10))
    uploaded = await b.upload(sid, body)
    assert uploaded.status_code == 200, uploaded.text
    session, report = await both_views()
    assert (session["state"], session["frames"], session["end_seq"]) == ("ended", 8, 9)
    assert report["missing"] == [[5, 6]]
    # The gap is filled on A: the session completes, seen alike from B.
    on_a = await a.stream(sid)
    assert (await a.send_all(on_a, {s: payloads[s] for s in (5, 6)})).acked == {5, 6}
    await on_a.recv_type("complete")
    session, report = await both_views()
    assert (session["state"], session["frames"], session["bytes"]) == ("complete", 10, 3330)
    assert session["stream_crc32c"] == stream_crc(payloads[s] for s in range(10))
    assert session["metadata"] == {"call": "agree"}
    assert (report["complete"], report["missing"]) == (True, [])

    # Deleted on B: gone on A too.
    deleted = await b.http.delete(f"/v1/sessions/{sid}")
    assert deleted.status_code == 204, deleted.text
    for api in (a, b):
        gone = await api.http.get(f"/v1/sessions/{sid}")
        assert gone.status_code == 410, gone.text


async def test_a_session_completed_by_an_upload_on_b_is_complete_for_a_stream_on_a(
    a: Api, b: Api
) -> None:
    # docs/api.md: the stream learns it with the answer to its next frame (or on reconnecting).
    sid = await a.new_session()
    payloads = {seq: payload_for(sid, seq, 90) for seq in range(3)}
    stream = await a.stream(sid)
    await stream.send(frame(0, payloads[0]), frame(2, payloads[2], end=True))
    assert (await stream.collect([0, 2])).acked == {0, 2}
    uploaded = await b.upload(sid, frame(1, payloads[1]), token=await a.mint_token(sid))
    assert uploaded.json()["acked"] == [[1, 1]], uploaded.text

    await stream.send(frame(2, payloads[2], end=True))
    assert (await stream.collect([2])).duplicate == {2}
    complete = await stream.recv_type("complete")
    assert (complete["last_seq"], complete["frames"]) == (2, 3)
    assert complete["stream_crc32c"] == stream_crc(payloads[seq] for seq in range(3))
