"""Abuse limits on a real server: rates per API key and per client IP, streams per IP,
connections per session.

The module's server trusts 127.0.0.1 as a proxy, so each test speaks as its
own client address through ``X-Forwarded-For``, and it holds many API keys,
so each test calls with a key of its own: each has its own allowances.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.wire import Api, assert_problem, frame, payload_for
from servers import API_KEY, Server, start_server, two_instances
from services import RedisServer
from voxgate.rates import RATE_NAMES
from voxgate.settings import Settings

SESSIONS_PER_MIN = 3
TOKENS_PER_MIN = 6
CONNECTS_PER_MIN = 3
AUTH_FAILURES_PER_MIN = 3
LISTENS_PER_MIN = 3
STREAMS_PER_IP = 2
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))
# The module server's API keys beside the default one: a fresh one per use.
KEYS = [f"k{n}:admin:{n:04d}-{uuid.uuid4().hex}" for n in range(200)]
_keys = iter(KEYS)


def secret_of(entry: str) -> str:
    return entry.rsplit(":", 1)[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_API_KEYS": ",".join([API_KEY, *KEYS]),
        "VOXGATE_RATE_LIMIT_SESSIONS": f"{SESSIONS_PER_MIN}/1m",
        "VOXGATE_RATE_LIMIT_TOKENS": f"{TOKENS_PER_MIN}/1m",
        "VOXGATE_RATE_LIMIT_SESSION_CONNECTS": f"{CONNECTS_PER_MIN}/1m",
        "VOXGATE_RATE_LIMIT_AUTH_FAILURES": f"{AUTH_FAILURES_PER_MIN}/1m",
        "VOXGATE_RATE_LIMIT_LISTEN_CONNECTS": f"{LISTENS_PER_MIN}/1m",
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
def key() -> str:
    """An API key (secret) of this test's own."""
    return secret_of(next(_keys))


@pytest.fixture
async def http(server: Server, address: str, key: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": address}
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


async def test_session_creation_is_limited_per_api_key(api: Api, server: Server) -> None:
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
    # The same key from another address is still refused: the limit is the key's.
    moved = await api.http.post("/v1/sessions", json={}, headers={"X-Forwarded-For": "192.0.2.9"})
    assert_rate_limited(moved, SESSIONS_PER_MIN)
    # Another key from the same address is not affected.
    other = {"Authorization": f"Bearer {secret_of(next(_keys))}"}
    assert (await api.http.post("/v1/sessions", json={}, headers=other)).status_code == 201


async def failures_until_refused(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> list[int]:
    statuses = []
    for n in range(AUTH_FAILURES_PER_MIN + 2):
        bad = {"Authorization": f"Bearer wrong-{n}-{uuid.uuid4().hex}", **(headers or {})}
        statuses.append((await client.get("/v1/sessions", headers=bad)).status_code)
    return statuses


async def test_failed_authentications_are_limited_per_client_address(
    server: Server, http: httpx.AsyncClient, key: str
) -> None:
    statuses = await failures_until_refused(http)
    assert statuses == [401] * AUTH_FAILURES_PER_MIN + [429] * 2
    refused = await http.get("/v1/sessions", headers={"Authorization": "Bearer another-guess"})
    problem = assert_problem(refused, 429)
    assert problem["type"] == "urn:voxgate:error:too_many_auth_failures"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Blocked means blocked: even the right key is not looked at from this address,
    # and a stream token (upload) or listen attempt is refused alike.
    assert (await http.get("/v1/sessions")).status_code == 429
    # Another address is not affected.
    elsewhere = {"X-Forwarded-For": next(_addresses)}
    assert (await http.get("/v1/sessions", headers=elsewhere)).status_code == 200


async def test_bad_stream_tokens_count_as_failed_authentications(api: Api) -> None:
    sid = await api.new_session()
    via = {"X-Forwarded-For": next(_addresses)}
    codes = []
    for n in range(AUTH_FAILURES_PER_MIN + 1):
        guess = await api.connect(sid, f"guess-{n}-{uuid.uuid4().hex}", headers=via)
        messages = await guess.expect_close(4401 if n < AUTH_FAILURES_PER_MIN else 4429)
        codes.append(messages[-1]["code"])
    assert codes == ["unauthorized"] * AUTH_FAILURES_PER_MIN + ["too_many_auth_failures"]
    # Blocked means blocked: a good token from that address is refused and not used up,
    # so the same token still opens the stream from another address.
    token = await api.mint_token(sid)
    refused = await api.connect(sid, token, headers=via)
    assert (await refused.expect_close(4429))[-1]["code"] == "too_many_auth_failures"
    stream = await api.stream(sid, token=token, headers={"X-Forwarded-For": next(_addresses)})
    await stream.send(frame(0, payload_for(sid, 0)))
    assert (await stream.collect([0])).acked == {0}


async def test_token_minting_is_limited_per_api_key(api: Api) -> None:
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
    env = {"VOXGATE_RATE_LIMIT_AUTH_FAILURES": "2/1m"}  # no trusted proxies
    with start_server(tmp_path, env=env) as plain:
        async with httpx.AsyncClient(base_url=plain.base_url) as client:
            answers = []
            for n in range(4):
                spoof = {
                    "Authorization": f"Bearer wrong-{n}",
                    "X-Forwarded-For": f"203.0.113.{n}",
                    "Forwarded": f"for=192.0.2.{n}",
                }
                answers.append(await client.get("/v1/sessions", headers=spoof))
        assert [r.status_code for r in answers] == [401, 401, 429, 429]


async def test_a_client_cannot_prepend_its_way_past_a_trusted_proxy(
    http: httpx.AsyncClient, address: str
) -> None:
    await failures_until_refused(http)
    # The client sends its own X-Forwarded-For; the proxy appends the real address.
    spoof = {"X-Forwarded-For": f"1.2.3.4, {address}", "Authorization": "Bearer wrong"}
    assert (await http.get("/v1/sessions", headers=spoof)).status_code == 429


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
        # Tokens with other keys: this test is not about the token limit.
        mint = {"Authorization": f"Bearer {secret_of(next(_keys))}"}
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
    secret = uuid.uuid4().hex * 2
    env = {
        # A key name of its own: fresh in the shared Redis.
        "VOXGATE_API_KEYS": f"k{uuid.uuid4().hex}:{secret}",
        "VOXGATE_REDIS_URL": redis_server.url,
        "VOXGATE_RATE_LIMIT_SESSIONS": "4/1m",
        "VOXGATE_TRUSTED_PROXIES": "127.0.0.1",
    }
    client_ip = str(ipaddress.IPv6Address(uuid.uuid4().int))
    with two_instances(tmp_path, env) as (first, second):
        headers = {"Authorization": f"Bearer {secret}", "X-Forwarded-For": client_ip}
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


async def test_the_long_session_shape_passes_on_default_settings(tmp_path: Path) -> None:
    """One backend (one key, one address) creating 50 sessions and minting 200 tokens
    at once: what the long-session tool does; the per-IP defaults of old refused it."""
    defaults = Settings()
    env = {
        f"VOXGATE_RATE_LIMIT_{name.upper()}": getattr(defaults, f"rate_limit_{name}")
        for name in RATE_NAMES
    }
    with start_server(tmp_path, env=env) as plain:
        headers = {"Authorization": f"Bearer {plain.api_key}"}
        async with httpx.AsyncClient(base_url=plain.base_url, headers=headers) as http:
            api = Api(plain, http)
            sessions = await asyncio.gather(*(api.new_session() for _ in range(50)))
            answers = await asyncio.gather(
                *(
                    http.post(f"/v1/sessions/{sid}/{kind}", json={})
                    for sid in sessions
                    for kind in ("tokens", "tokens", "tokens", "listen-tokens")
                )
            )
            assert [r.status_code for r in answers] == [201] * 200
            remaining = int(answers[-1].headers["RateLimit-Remaining"])
            assert remaining > 1000  # far from the limit


async def listen_status(http: httpx.AsyncClient, sid: str, **options: Any) -> int:
    """Open the session's events and leave at once: the status of the connect."""
    async with http.stream("GET", f"/v1/sessions/{sid}/events", **options) as answer:
        return answer.status_code


async def test_listener_connects_count_per_key_and_per_address_for_tokens(
    api: Api, http: httpx.AsyncClient
) -> None:
    sid = await api.new_session()
    with_key = [await listen_status(http, sid) for _ in range(LISTENS_PER_MIN + 1)]
    assert with_key == [200] * LISTENS_PER_MIN + [429]
    # The same key from another address: still this key's allowance.
    moved = {"X-Forwarded-For": next(_addresses)}
    assert await listen_status(http, sid, headers=moved) == 429
    # Another key is not affected.
    other = {"Authorization": f"Bearer {secret_of(next(_keys))}"}
    assert await listen_status(http, sid, headers=other) == 200
    # Listen tokens count per client address.
    tokens = [
        (await http.post(f"/v1/sessions/{sid}/listen-tokens", json={})).json()["token"]
        for _ in range(LISTENS_PER_MIN + 2)
    ]
    device = {"X-Forwarded-For": next(_addresses), "Authorization": ""}
    statuses = [
        await listen_status(http, sid, params={"token": token}, headers=device)
        for token in tokens[: LISTENS_PER_MIN + 1]
    ]
    assert statuses == [200] * LISTENS_PER_MIN + [429]
    elsewhere = {"X-Forwarded-For": next(_addresses), "Authorization": ""}
    last = tokens[-1]
    assert await listen_status(http, sid, params={"token": last}, headers=elsewhere) == 200
