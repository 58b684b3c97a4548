"""Abuse limits on a real server: request rates, streams per IP, connections per session.

The module's server trusts 127.0.0.1 as a proxy, so each test speaks as its
own client address through ``X-Forwarded-For`` and has its own allowance.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from e2e.wire import Api, assert_problem, frame, payload_for
from servers import Server, start_server, two_instances
from services import RedisServer

SESSIONS_PER_MIN = 3
TOKENS_PER_MIN = 6
CONNECTS_PER_MIN = 3
STREAMS_PER_IP = 2
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_RATE_LIMIT_SESSIONS": f"{SESSIONS_PER_MIN}/1m",
        "VOXGATE_RATE_LIMIT_TOKENS": f"{TOKENS_PER_MIN}/1m",
        "VOXGATE_RATE_LIMIT_SESSION_CONNECTS": f"{CONNECTS_PER_MIN}/1m",
        "VOXGATE_MAX_STREAMS_PER_IP": str(STREAMS_PER_IP),
        "VOXGATE_TRUSTED_PROXIES": "127.0.0.1/32",
    }
    with start_server(tmp_path_factory.mktemp("limits"), env=env) as running:
        yield running


@pytest.fixture
def address() -> str:
    """A client address of this test's own, as the trusted proxy reports it."""
    return next(_addresses)


@pytest.fixture
async def http(server: Server, address: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {server.api_key}", "X-Forwarded-For": address}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
        yield client


def assert_rate_limited(response: httpx.Response, limit: int) -> None:
    problem = assert_problem(response, 429)
    assert problem["type"] == "urn:voxgate:error:rate_limited", problem
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60


async def session_ids(api: Api) -> set[str]:
    response = await api.http.get("/v1/sessions", params={"limit": 500})
    assert response.status_code == 200, response.text
    return {s["id"] for s in response.json()["sessions"]}


async def test_session_creation_is_limited_per_client(api: Api, server: Server) -> None:
    created = []
    for left in range(SESSIONS_PER_MIN - 1, -1, -1):
        response = await api.http.post("/v1/sessions", json={})
        assert response.status_code == 201, response.text
        assert response.headers["RateLimit-Limit"] == str(SESSIONS_PER_MIN)
        assert response.headers["RateLimit-Remaining"] == str(left)
        created.append(response.json()["id"])
    before = await session_ids(api)
    refused = await api.http.post("/v1/sessions", json={"codec": "opus"})
    assert_rate_limited(refused, SESSIONS_PER_MIN)
    assert await session_ids(api) == before, "a refused request stored a session"
    # Another client is not affected.
    other = {"Authorization": f"Bearer {server.api_key}", "X-Forwarded-For": next(_addresses)}
    async with httpx.AsyncClient(base_url=server.base_url, headers=other) as client:
        assert (await client.post("/v1/sessions", json={})).status_code == 201


async def test_token_minting_is_limited_per_client(api: Api) -> None:
    sid = await api.new_session()
    tokens = [await api.mint_token(sid) for _ in range(TOKENS_PER_MIN)]
    assert len(set(tokens)) == TOKENS_PER_MIN
    assert_rate_limited(await api.mint_token_response(sid), TOKENS_PER_MIN)
    # Reads are not limited.
    for _ in range(10):
        assert (await api.http.get(f"/v1/sessions/{sid}")).status_code == 200


async def test_forwarded_for_from_an_untrusted_peer_does_not_reset_the_limit(
    tmp_path: Path,
) -> None:
    env = {"VOXGATE_RATE_LIMIT_SESSIONS": "2/1m"}  # no trusted proxies
    with start_server(tmp_path, env=env) as plain:
        headers = {"Authorization": f"Bearer {plain.api_key}"}
        async with httpx.AsyncClient(base_url=plain.base_url, headers=headers) as client:
            answers = []
            for n in range(4):
                spoof = {"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=192.0.2.{n}"}
                answers.append(await client.post("/v1/sessions", json={}, headers=spoof))
        assert [r.status_code for r in answers] == [201, 201, 429, 429]


async def test_a_client_cannot_prepend_its_way_past_a_trusted_proxy(
    api: Api, server: Server, address: str
) -> None:
    sid = await api.new_session()
    for _ in range(TOKENS_PER_MIN):
        await api.mint_token(sid)
    # The client sends its own X-Forwarded-For; the proxy appends the real address.
    spoof = {"X-Forwarded-For": f"1.2.3.4, {address}"}
    response = await api.http.post(f"/v1/sessions/{sid}/tokens", json={}, headers=spoof)
    assert_rate_limited(response, TOKENS_PER_MIN)


async def test_streams_per_ip_are_capped_with_4429(api: Api, address: str) -> None:
    sessions = [await api.new_session() for _ in range(STREAMS_PER_IP + 1)]
    via = {"X-Forwarded-For": address}
    open_streams = [await api.stream(sid, headers=via) for sid in sessions[:STREAMS_PER_IP]]
    refused = await api.connect(sessions[-1], headers=via)
    messages = await refused.expect_close(4429)
    assert messages[-1]["code"] == "too_many_streams"
    # Another address may still stream, and a freed slot is usable again.
    other = await api.stream(sessions[-1], headers={"X-Forwarded-For": next(_addresses)})
    await other.close()
    await open_streams[0].close()
    # The slot is free once the server has finished its side of that close.
    for _ in range(100):
        mint = {"X-Forwarded-For": next(_addresses)}  # tokens from elsewhere: no token limit
        url = f"/v1/sessions/{sessions[0]}/tokens"
        token = (await api.http.post(url, json={}, headers=mint)).json()["token"]
        again = await api.connect(sessions[0], token, headers=via)
        first = await again.recv_wire(5.0)
        if first["type"] == "hello":
            break
        assert first["code"] == "too_many_streams", first
        await asyncio.sleep(0.05)
    await again.send(frame(0, payload_for(sessions[0], 0)))
    assert (await again.collect([0])).acked == {0}


async def test_connections_per_session_are_limited_with_4429(api: Api) -> None:
    sid = await api.new_session()
    streams = []
    # Each connection from an address of its own: superseded streams linger while they
    # quiesce, and this test is about the per-session count, not the per-IP cap.
    for _ in range(CONNECTS_PER_MIN):
        token = await api.mint_token(sid)
        via = {"X-Forwarded-For": next(_addresses)}
        streams.append(await api.stream(sid, token=token, headers=via))
    refused = await api.connect(
        sid, await api.mint_token(sid), headers={"X-Forwarded-For": next(_addresses)}
    )
    messages = await refused.expect_close(4429)
    assert messages[-1]["code"] == "rate_limited"
    # The newest accepted connection still streams: the refusal superseded nothing.
    await streams[-1].send(frame(0, payload_for(sid, 0)))
    assert (await streams[-1].collect([0])).acked == {0}


async def test_limits_are_shared_by_two_instances_through_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = {
        "VOXGATE_REDIS_URL": redis_server.url,
        "VOXGATE_RATE_LIMIT_SESSIONS": "4/1m",
        "VOXGATE_TRUSTED_PROXIES": "127.0.0.1",
    }
    client_ip = str(ipaddress.IPv6Address(uuid.uuid4().int))  # fresh in the shared Redis
    with two_instances(tmp_path, env) as (first, second):
        headers = {"Authorization": f"Bearer {first.api_key}", "X-Forwarded-For": client_ip}
        statuses = []
        async with httpx.AsyncClient(headers=headers) as client:
            for instance in (first, second, first, second, first, second):
                response = await client.post(f"{instance.base_url}/v1/sessions", json={})
                statuses.append(response.status_code)
        assert statuses == [201, 201, 201, 201, 429, 429]


async def test_streams_per_process_are_capped_with_4429(tmp_path: Path) -> None:
    with start_server(tmp_path, env={"VOXGATE_MAX_STREAMS": "1"}) as capped:
        headers = {"Authorization": f"Bearer {capped.api_key}"}
        async with httpx.AsyncClient(base_url=capped.base_url, headers=headers) as http:
            api = Api(capped, http)
            first = await api.stream(await api.new_session())
            refused = await api.connect(await api.new_session())
            messages = await refused.expect_close(4429)
            assert messages[-1]["code"] == "too_many_streams"
            await first.close()
            await api.close_streams()


async def test_workers_of_one_host_share_limits_without_redis(tmp_path: Path) -> None:
    env = {"VOXGATE_RATE_LIMIT_SESSIONS": "3/1m"}
    with start_server(tmp_path, env=env, workers=2) as server:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        statuses = []
        for _ in range(8):  # a connection each, so both workers take some
            async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
                statuses.append((await client.post("/v1/sessions", json={})).status_code)
        assert statuses == [201] * 3 + [429] * 5
