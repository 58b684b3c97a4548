"""Two instances sharing Redis and a store: what is ingested on A is heard on B.

Both servers are real ``voxgate serve`` processes over one store (a data dir
the embedded store shares between processes, or one PostgreSQL database) and
one real Redis.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from e2e.listening import Heard, SseListener, WsListener
from e2e.wire import Api, frame, payload_for, stream_crc
from servers import Server, two_instances
from services import PostgresServer, RedisServer

FRAMES = 1500


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def pair(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
) -> Iterator[tuple[Server, Server]]:
    """Two servers on one store: a shared data dir, or one PostgreSQL database."""
    env = {"VOXGATE_REDIS_URL": redis_server.url, "VOXGATE_DURABILITY": "process"}
    if request.param == "sqlite":
        env["VOXGATE_DATA_DIR"] = str(tmp_path_factory.mktemp("shared") / "data")
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        env["VOXGATE_DATABASE_URL"] = postgres.create_database("fanout_pair")
    with two_instances(tmp_path_factory.mktemp("pair"), env) as servers:
        yield servers


@pytest.fixture
async def apis(pair: tuple[Server, Server]) -> AsyncIterator[tuple[Api, Api]]:
    a, b = pair
    headers = {"Authorization": f"Bearer {a.api_key}"}
    async with (
        httpx.AsyncClient(base_url=a.base_url, headers=headers, timeout=30) as http_a,
        httpx.AsyncClient(base_url=b.base_url, headers=headers, timeout=30) as http_b,
    ):
        api_a, api_b = Api(a, http_a), Api(b, http_b)
        yield api_a, api_b
        await api_a.close_streams()
        await api_b.close_streams()


def channels(redis_server: RedisServer) -> list[bytes]:
    with redis.Redis.from_url(redis_server.url) as client:
        found: list[bytes] = client.pubsub_channels("voxgate:events:*")
        return found


async def post_transcript(api: Api, session_id: str, text: str, final: bool, seq: int) -> int:
    body = {"role": "agent", "text": text, "is_final": final, "timestamp": seq, "seq": seq}
    response = await api.http.post(f"/v1/sessions/{session_id}/transcripts", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def ingest(api: Api, session_id: str, payloads: dict[int, bytes], seed: int) -> None:
    """Stream every frame into ``api``'s server, shuffled in windows of 40 (gaps come and go)."""
    order = list(payloads)
    rng = random.Random(seed)
    for start in range(0, len(order), 40):
        window = order[start : start + 40]
        rng.shuffle(window)
        order[start : start + 40] = window
    stream = await api.stream(session_id)
    last = max(payloads)
    for start in range(0, len(order), 20):
        chunk = order[start : start + 20]
        await stream.send(*(frame(seq, payloads[seq], end=seq == last) for seq in chunk))
        await stream.collect(chunk)
    await stream.recv_type("complete")


async def test_ingest_on_a_is_heard_on_b_in_order(
    apis: tuple[Api, Api], redis_server: RedisServer
) -> None:
    api_a, api_b = apis
    sid = await api_a.new_session()
    payloads = {seq: payload_for(sid, seq, 160 + seq % 7) for seq in range(FRAMES)}
    audio = await WsListener.open(api_b.server, sid, audio=True)
    events = await WsListener.open(api_b.server, sid)
    async with SseListener.open(api_b.http, sid) as sse:

        async def talk() -> tuple[list[int], list[int]]:
            interims, finals = [], []
            for seq in range(10):
                interims.append(await post_transcript(api_a, sid, f"utter {seq}", False, seq))
                # Finals come in through B: both instances publish.
                finals.append(await post_transcript(api_b, sid, f"utterance {seq}", True, seq))
            return interims, finals

        (interims, finals), _ = await asyncio.gather(talk(), ingest(api_a, sid, payloads, seed=1))

        def done(heard: Heard) -> bool:
            return heard.last_id == finals[-1] and "complete" in heard.states

        await audio.until(lambda h: h.next_audio == FRAMES and done(h))
        await events.until(done)
        await sse.until(lambda s: done(s.heard))
        assert channels(redis_server), "B subscribed to the session's channel"
        assert sse.ids == [t["id"] for t in sse.heard.transcripts]

    for heard in (audio.heard, events.heard, sse.heard):
        # Ids only grow (Heard checks), every final comes; an interim may not, when the
        # final replacing it was stored before this listener could get it (A and B
        # publish independently, so B's final can reach B's listeners first).
        got = [t["id"] for t in heard.transcripts]
        assert [i for i in got if i in finals] == finals
        assert set(got) <= set(interims) | set(finals)
        assert heard.states == ["complete"]
        latest = heard.latest()
        assert (latest["next_seq"], latest["frames"], latest["missing"]) == (FRAMES, FRAMES, [])
        complete = heard.of_type("state")[-1]
        assert complete["stream_crc32c"] == stream_crc(payloads[s] for s in range(FRAMES))
    assert [(seq, payload) for seq, _, _, payload in audio.heard.frames] == sorted(payloads.items())
    # Every stored frame was announced to B at most once, and exactly once unless B's
    # listener fell behind and was told how many progress events it missed.
    for heard in (audio.heard, events.heard):
        acked = [s for e in heard.progress for a, b in e["acked"] for s in range(a, b + 1)]
        assert len(acked) == len(set(acked))
        if not any(e.get("dropped") for e in heard.progress):
            assert sorted(acked) == list(range(FRAMES))
    await audio.close()
    await events.close()
    for _ in range(100):
        if not channels(redis_server):
            break
        await asyncio.sleep(0.05)
    assert channels(redis_server) == [], "the last listener leaving unsubscribes"


async def test_listeners_recover_when_redis_restarts(
    apis: tuple[Api, Api], redis_server: RedisServer
) -> None:
    api_a, api_b = apis
    sid = await api_a.new_session()
    payloads = {seq: payload_for(sid, seq, 200) for seq in range(600)}
    listener = await WsListener.open(api_b.server, sid, audio=True)
    first = {s: payloads[s] for s in range(300)}
    stream = await api_a.stream(sid)
    await api_a.send_all(stream, first)
    await post_transcript(api_a, sid, "before", True, 0)
    await listener.until(lambda h: h.next_audio == 300 and len(h.transcripts) == 1)

    redis_server.restart()
    # While B's subscriber reconnects, A keeps ingesting; what A publishes meanwhile is lost.
    await api_a.send_all(stream, {s: payloads[s] for s in range(300, 600)}, end_seq=599)
    await post_transcript(api_a, sid, "during", True, 1)
    await listener.until(lambda h: h.next_audio == 600 and len(h.transcripts) == 2, within=30)
    await post_transcript(api_a, sid, "after", True, 2)
    await listener.until(lambda h: len(h.transcripts) == 3 and "complete" in h.states)
    await listener.close()
    assert [(seq, p) for seq, _, _, p in listener.heard.frames] == sorted(payloads.items())
    assert [t["text"] for t in listener.heard.transcripts] == ["before", "during", "after"]
    stats = (await api_b.http.get("/v1/stats")).json()["fanout"]
    assert stats["bus"]["reconnects"] >= 1


async def test_listener_counts_on_both_instances_return_to_zero(
    apis: tuple[Api, Api], pair: tuple[Server, Server]
) -> None:
    api_a, _ = apis
    sids = [await api_a.new_session() for _ in range(5)]
    listeners = [await WsListener.open(server, sid) for sid in sids for server in pair]
    for api in apis:
        stats = (await api.http.get("/v1/stats")).json()["fanout"]
        assert (stats["listeners"], stats["feeds"]) == (5, 5)
        assert stats["bus"]["subscriptions"] == 5
    for listener in listeners:
        await listener.close()
    for api in apis:
        for _ in range(100):
            stats = (await api.http.get("/v1/stats")).json()["fanout"]
            if stats["listeners"] == 0:
                break
            await asyncio.sleep(0.05)
        assert (stats["listeners"], stats["feeds"], stats["bus"]["subscriptions"]) == (0, 0, 0)


async def test_a_listen_token_minted_on_a_opens_a_listener_on_b(apis: tuple[Api, Api]) -> None:
    api_a, api_b = apis
    sid = await api_a.new_session()
    response = await api_a.http.post(f"/v1/sessions/{sid}/listen-tokens")
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    listener = await WsListener.open(api_b.server, sid, token=token, via="query")
    await post_transcript(api_a, sid, "hello B", True, 0)
    await listener.until(lambda h: [t["text"] for t in h.transcripts] == ["hello B"])
    await listener.close()
    again = await WsListener.open(api_a.server, sid, token=token, read_hello=False)
    assert await again.until_closed() == 4401, "single use across instances"
