"""Origins and credentials: CORS and the WebSocket Origin check from VOXGATE_CORS_ORIGINS,
and every credential accepted only where the protocol names it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from e2e.wire import FRAMES_CONTENT_TYPE, Api, assert_problem, frame, payload_for
from servers import Server, start_server

ALLOWED = "https://app.example"


def preflight(server: Server, origin: str) -> httpx.Response:
    return httpx.options(
        f"{server.base_url}/v1/sessions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


# --- the default: any origin --------------------------------------------------------


async def test_by_default_any_origin_may_call_and_stream(api: Api, server: Server) -> None:
    answer = preflight(server, "https://anywhere.example")
    assert answer.status_code == 204, answer.text
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "authorization" in answer.headers["Access-Control-Allow-Headers"].lower()
    created = await api.http.post(
        "/v1/sessions", json={}, headers={"Origin": "https://anywhere.example"}
    )
    assert created.headers["Access-Control-Allow-Origin"] == "*"
    exposed = created.headers["Access-Control-Expose-Headers"].lower()
    assert {"x-request-id", "retry-after", "ratelimit-remaining"} <= set(exposed.split(", "))
    stream = await api.stream(created.json()["id"], origin="https://anywhere.example")
    assert stream.hello is not None


# --- an allow-list ------------------------------------------------------------------


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"VOXGATE_CORS_ORIGINS": f"{ALLOWED}, https://other.example"}
    with start_server(tmp_path_factory.mktemp("origins"), env=env) as running:
        yield running


async def test_an_allow_list_admits_its_origins_only(listed: Server) -> None:
    allowed = preflight(listed, ALLOWED)
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    refused = preflight(listed, "https://evil.example")
    assert refused.status_code == 400
    assert "Access-Control-Allow-Origin" not in refused.headers
    headers = {"Authorization": f"Bearer {listed.api_key}"}
    async with httpx.AsyncClient(base_url=listed.base_url, headers=headers) as http:
        plain = await http.get("/health", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in plain.headers
        api = Api(listed, http)
        sid = await api.new_session()
        for origin in ("https://evil.example", "null", "https://app.example.evil.test"):
            refused_ws = await api.connect(sid, origin=origin)
            await refused_ws.expect_close(4403)
        origins: list[str | None] = [ALLOWED, "https://other.example", None]
        for maybe in origins:
            stream = await api.stream(sid, origin=maybe)
            await stream.close()
        await api.close_streams()


async def test_every_browser_facing_route_checks_the_origin(listed: Server) -> None:
    """HTTP routes refuse a listed server's unlisted Origin with 403 before doing
    anything, Server-Sent Events and uploads included; machine routes answer."""
    evil = {"Origin": "https://evil.example"}
    headers = {"Authorization": f"Bearer {listed.api_key}"}
    async with httpx.AsyncClient(base_url=listed.base_url, headers=headers) as http:
        api = Api(listed, http)
        sid = await api.new_session()
        token = await api.mint_token(sid)
        listen_token = (await http.post(f"/v1/sessions/{sid}/listen-tokens", json={})).json()
        body = frame(0, payload_for(sid, 0))
        refused = [
            await http.get(f"/v1/sessions/{sid}/events", headers=evil),
            await http.get(
                f"/v1/sessions/{sid}/events", params={"token": listen_token["token"]}, headers=evil
            ),
            await http.post(
                f"/v1/sessions/{sid}/frames",
                content=body,
                headers={
                    **evil,
                    "Authorization": f"Bearer {token}",
                    "Content-Type": FRAMES_CONTENT_TYPE,
                },
            ),
            await http.post("/v1/sessions", json={}, headers=evil),
            await http.get(f"/v1/sessions/{sid}", headers=evil),
            await http.delete(f"/v1/sessions/{sid}", headers=evil),
        ]
        for answer in refused:
            problem = assert_problem(answer, 403)
            assert problem["type"] == "urn:voxgate:error:origin", answer.request.url
        # Nothing happened: the tokens are unspent and the session unchanged.
        assert (await api.get_session(sid))["frames"] == 0
        assert (await api.upload(sid, body, token=token)).status_code == 200
        async with http.stream(
            "GET",
            f"/v1/sessions/{sid}/events",
            params={"token": listen_token["token"]},
            headers={"Origin": ALLOWED},
        ) as events:
            assert events.status_code == 200
        for path in ("/health", "/ready", "/metrics"):
            assert (await http.get(path, headers=evil)).status_code == 200


# --- credentials only where the protocol names them --------------------------------


async def test_upload_does_not_take_a_token_from_the_query(api: Api, server: Server) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    body = frame(0, payload_for(sid, 0))
    async with httpx.AsyncClient(base_url=server.base_url) as bare:
        response = await bare.post(
            f"/v1/sessions/{sid}/frames",
            params={"token": token},
            content=body,
            headers={"Content-Type": FRAMES_CONTENT_TYPE},
        )
    assert_problem(response, 401)
    assert (await api.missing(sid))["frames"] == 0
    # The token was not spent by that refusal: it still works where it belongs.
    assert (await api.upload(sid, body, token=token)).status_code == 200


async def test_management_calls_do_not_take_stream_tokens(api: Api, server: Server) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    as_key = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=as_key) as bare:
        for method, path in [
            ("GET", f"/v1/sessions/{sid}"),
            ("GET", f"/v1/sessions/{sid}/missing"),
            ("GET", f"/v1/sessions/{sid}/audio"),
            ("POST", f"/v1/sessions/{sid}/tokens"),
            ("DELETE", f"/v1/sessions/{sid}"),
        ]:
            assert_problem(await bare.request(method, path), 401)
    assert (await api.get_session(sid))["state"] == "open"
    # Still a good stream token afterwards.
    stream = await api.stream(sid, token=token)
    assert stream.hello is not None


async def test_management_calls_do_not_take_keys_from_elsewhere(server: Server) -> None:
    key = server.api_key
    async with httpx.AsyncClient(base_url=server.base_url) as bare:
        for params, headers in [
            ({"api_key": key}, {}),
            ({"token": key}, {}),
            ({"key": key}, {}),
            ({}, {"X-API-Key": key}),
            ({}, {"Cookie": f"api_key={key}"}),
            ({}, {"Authorization": f"Basic {key}"}),
            ({}, {"Authorization": key}),
        ]:
            response = await bare.get("/v1/sessions", params=params, headers=headers)
            assert_problem(response, 401)


async def test_streams_do_not_take_api_keys_or_tokens_from_elsewhere(
    api: Api, server: Server
) -> None:
    sid = await api.new_session()
    as_query = await api.connect(sid, server.api_key, via="query")
    await as_query.expect_close(4401)
    as_subprotocol = await api.connect(sid, server.api_key, via="subprotocol")
    await as_subprotocol.expect_close(4401)
    token = await api.mint_token(sid)
    for headers in (
        {"X-Token": token},
        {"Cookie": f"token={token}"},
        {"Authorization": f"Token {token}"},
    ):
        stream = await api.connect(sid, mint=False, headers=headers)
        await stream.expect_close(4401)
    # None of those spent the token.
    stream = await api.stream(sid, token=token)
    assert stream.hello is not None
