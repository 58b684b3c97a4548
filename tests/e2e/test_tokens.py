"""Stream tokens and stream authentication (PROTOCOL sections 2.1, 5 and 7)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from e2e.wire import Api, assert_problem, frame, payload_for
from servers import Server, start_server
from services import RedisServer
from voxgate.settings import Settings

DEFAULTS = Settings()


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Every test here runs against in-process tokens and against tokens in a real Redis."""
    env: dict[str, str] = {}
    if request.param == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        env["VOXGATE_REDIS_URL"] = redis.url
    with start_server(tmp_path_factory.mktemp(f"tokens-{request.param}"), env=env) as running:
        yield running


def parse_time(value: object) -> datetime:
    assert isinstance(value, str), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"{value!r} has no offset (RFC 3339 needs one)"
    return parsed


async def test_token_answer_shape_and_default_ttl(api: Api) -> None:
    sid = await api.new_session()
    before = datetime.now(UTC)
    response = await api.mint_token_response(sid)
    assert response.status_code == 201, response.text
    body = response.json()
    assert isinstance(body.get("token"), str)
    assert len(body["token"]) >= 16, "a token must not be guessable"
    assert body.get("ttl_s") == DEFAULTS.token_ttl_s
    expires = parse_time(body.get("expires_at"))
    lifetime = (expires - before).total_seconds()
    assert DEFAULTS.token_ttl_s - 5 <= lifetime <= DEFAULTS.token_ttl_s + 5, body

    custom = await api.mint_token_response(sid, ttl_s=120)
    assert custom.status_code == 201, custom.text
    assert custom.json()["ttl_s"] == 120


async def test_every_token_is_different(api: Api) -> None:
    sid = await api.new_session()
    tokens = {await api.mint_token(sid) for _ in range(5)}
    assert len(tokens) == 5


async def test_ttl_above_the_maximum_is_422(api: Api) -> None:
    sid = await api.new_session()
    response = await api.mint_token_response(sid, ttl_s=DEFAULTS.token_max_ttl_s + 1)
    assert_problem(response, 422)
    at_max = await api.mint_token_response(sid, ttl_s=DEFAULTS.token_max_ttl_s)
    assert at_max.status_code == 201, at_max.text


async def test_token_request_without_a_body_gets_the_default_ttl(api: Api) -> None:
    # PROTOCOL 5: the body MAY ask for a lifetime, so a POST without one is complete.
    sid = await api.new_session()
    response = await api.http.post(f"/v1/sessions/{sid}/tokens")
    assert response.status_code == 201, response.text
    assert response.json()["ttl_s"] == DEFAULTS.token_ttl_s
    stream = await api.stream(sid, token=response.json()["token"])
    assert stream.hello is not None


@pytest.mark.parametrize("ttl_s", [0, -1])
async def test_ttl_below_one_second_is_422(api: Api, ttl_s: int) -> None:
    sid = await api.new_session()
    assert_problem(await api.mint_token_response(sid, ttl_s=ttl_s), 422)


async def test_token_for_an_unknown_session_is_404(api: Api) -> None:
    response = await api.mint_token_response("ses_does_not_exist")
    assert_problem(response, 404)


async def test_expired_token_closes_4401(api: Api) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid, ttl_s=1)
    await asyncio.sleep(2.2)
    stream = await api.connect(sid, token)
    await stream.expect_close(4401)


async def test_reused_token_closes_4401(api: Api) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    first = await api.connect(sid, token)
    await first.read_hello()
    await first.close()
    second = await api.connect(sid, token)
    await second.expect_close(4401)


async def test_token_is_consumed_by_the_upgrade_even_when_the_stream_stays_open(api: Api) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    first = await api.connect(sid, token)
    await first.read_hello()
    second = await api.connect(sid, token)
    await second.expect_close(4401)
    # The refused attempt does not supersede the rightful connection.
    await first.send(frame(0, payload_for(sid, 0)))
    assert (await first.collect([0])).acked == {0}


async def test_token_for_another_session_closes_4403(api: Api) -> None:
    mine = await api.new_session()
    other = await api.new_session()
    token = await api.mint_token(other)
    stream = await api.connect(mine, token)
    await stream.expect_close(4403)


async def test_unknown_session_closes_4404(api: Api) -> None:
    token = await api.mint_token(await api.new_session())
    stream = await api.connect("ses_does_not_exist", token)
    await stream.expect_close(4404)


async def test_missing_token_closes_4401(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.connect(sid, mint=False)
    await stream.expect_close(4401)


async def test_garbage_token_closes_4401(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.connect(sid, "not-a-real-token")
    await stream.expect_close(4401)


async def test_api_key_is_not_a_stream_token(api: Api, server: Server) -> None:
    sid = await api.new_session()
    stream = await api.connect(sid, server.api_key)
    await stream.expect_close(4401)


async def test_subprotocol_auth_selects_voxgate_v1(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.connect(sid, via="subprotocol")
    assert stream.ws.subprotocol == "voxgate.v1"
    hello = await stream.read_hello()
    assert hello["session_id"] == sid
    await stream.send(frame(0, payload_for(sid, 0)))
    assert (await stream.collect([0])).acked == {0}


async def test_query_parameter_token_works_and_is_never_logged(api: Api, server: Server) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    stream = await api.connect(sid, token, via="query")
    await stream.read_hello()
    await stream.send(frame(0, payload_for(sid, 0)))
    assert (await stream.collect([0])).acked == {0}
    await stream.close()
    # A refused one too (reuse), which servers like to log in full.
    refused = await api.connect(sid, token, via="query")
    await refused.expect_close(4401)
    await asyncio.sleep(0.3)  # let the server's log lines reach the file
    assert token not in server.log_text(), "the query token appears in the server log"
