"""Redis going away and coming back under two running instances.

The instances use a Redis of this module alone (stopped and started here) and
share a store (the embedded one, then PostgreSQL). Redis runs without persistence, as a cache would:
tokens minted before its restart are gone afterwards, which is the documented
behaviour (with AOF, as deploy/compose.yaml runs it, they survive a restart).
The store poll for takeovers is off, so the takeover after the outage proves
that each instance's pub/sub subscription came back by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from e2e.wire import Api, Json, api_for, assert_problem, payload_for, stream_crc
from servers import Server, two_instances
from services import RedisServer


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def instances(
    tmp_path_factory: pytest.TempPathFactory,
    own_redis: RedisServer,
    shared_store_env: dict[str, str],
) -> Iterator[tuple[Server, Server]]:
    env = {
        **shared_store_env,
        "VOXGATE_REDIS_URL": own_redis.url,
        "VOXGATE_SUPERSEDE_POLL_S": "3600",  # takeovers only through Redis
    }
    with two_instances(tmp_path_factory.mktemp("instances"), env) as pair:
        yield pair


async def readiness(api: Api) -> tuple[int, Json]:
    response = await api.http.get("/ready")
    body = response.json()
    assert isinstance(body, dict), response.text
    return response.status_code, body


async def wait_until_ready(api: Api) -> Json:
    """Poll ``/ready`` until 200 with the takeover channel subscribed; fails after 30 s."""
    body: Json = {}
    for _ in range(300):
        status, body = await readiness(api)
        if status == 200 and body["components"]["redis"]["pubsub"]:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{api.server.base_url} not ready 30 s after Redis came back: {body}")


async def test_an_outage_refuses_new_tokens_keeps_open_streams_and_heals_itself(
    instances: tuple[Server, Server], own_redis: RedisServer
) -> None:
    async with api_for(instances[0]) as a, api_for(instances[1]) as b:
        for api in (a, b):
            body = await wait_until_ready(api)
            assert body["components"]["redis"]["connected"] is True, body

        sid = await a.new_session()
        payloads = {seq: payload_for(sid, seq, 400) for seq in range(30)}
        live = await a.stream(sid)
        before = await a.send_all(live, {s: payloads[s] for s in range(10)})
        assert before.acked == set(range(10))
        other = await a.new_session()
        early_token = await a.mint_token(other)

        own_redis.stop()

        # Readiness names Redis; liveness and the store stay fine.
        for api in (a, b):
            status, body = await readiness(api)
            assert status == 503, body
            assert body["status"] == "unavailable", body
            assert body["failing"] == ["redis"], body
            assert body["components"]["redis"]["connected"] is False, body
            assert body["components"]["redis"]["status"] == "down", body
            assert body["components"]["store"]["status"] == "up", body
            assert (await api.http.get("/health")).status_code == 200
        # Minting answers 503 with Retry-After, on either instance.
        for api in (a, b):
            response = await api.mint_token_response(other)
            problem = assert_problem(response, 503)
            assert problem["type"] == "urn:voxgate:error:token_store_unavailable", problem
            assert int(response.headers["Retry-After"]) > 0, response.headers
        # A stream upgrade cannot check its token: 1013, try again later.
        refused = await b.connect(other, early_token)
        messages = await refused.expect_close(1013)
        assert messages[-1]["code"] == "token_store_unavailable", messages
        # The stream opened before the outage goes on as if nothing happened.
        during = await a.send_all(live, {s: payloads[s] for s in range(10, 20)})
        assert during.acked == set(range(10, 20))
        await live.send_json({"type": "ping", "t": 7})
        assert await live.recv_type("pong") == {"type": "pong", "t": 7}
        for api in (a, b):
            assert (await api.missing(sid))["frames"] == 20

        own_redis.start()

        for api in (a, b):
            body = await wait_until_ready(api)
            assert body["failing"] == [], body
        # Redis kept nothing across its restart: the early token is gone (documented).
        lost = await b.connect(other, early_token)
        assert (await lost.expect_close(4401))[-1]["code"] == "unauthorized"
        # Minting works again on both, and so do streams and cross-instance takeovers.
        for api in (a, b):
            stream = await api.stream(other)
            await stream.close()
        newer = await b.stream(sid)
        assert newer.hello is not None
        assert newer.hello["next_seq"] == 20
        superseded = await live.expect_close(4409, within=10)
        assert superseded[-1]["code"] == "superseded", superseded
        after = await b.send_all(newer, {s: payloads[s] for s in range(20, 30)}, end_seq=29)
        assert after.acked == set(range(20, 30))
        complete = await newer.recv_type("complete")
        assert complete["frames"] == 30
        assert complete["stream_crc32c"] == stream_crc(payloads[s] for s in range(30))
