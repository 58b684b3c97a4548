"""Structured logs of a real server: JSON lines, request ids, stream lifecycle, and no secrets.

One full scenario (sessions, tokens by every route the protocol names, a
``?token=`` stream, refusals, uploads, downloads, a malformed message, a
deletion) runs against a server; then its whole output is read back.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.wire import FRAMES_CONTENT_TYPE, Api, frame, raw_frame
from servers import Server

API_KEY = "logscan-" + uuid.uuid4().hex
SENTINEL = b"PAYLOAD-SENTINEL-" + uuid.uuid4().hex.encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(tmp_path_factory.mktemp("logs"), env={"VOXGATE_API_KEYS": API_KEY})
    running.api_key = API_KEY
    with running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
        yield client


def payload(seq: int) -> bytes:
    return SENTINEL + b"#" + str(seq).encode() + SENTINEL


async def scenario(api: Api, server: Server) -> tuple[list[str], str]:
    """Everything a client can do, good and bad; returns the tokens used and one session id."""
    tokens: list[str] = []

    async def mint(sid: str) -> str:
        tokens.append(await api.mint_token(sid))
        return tokens[-1]

    created = await api.http.post(
        "/v1/sessions", json={"codec": "pcm_s16le"}, headers={"X-Request-ID": "req-scenario-1"}
    )
    assert created.status_code == 201
    assert created.headers["X-Request-ID"] == "req-scenario-1"
    sid = created.json()["id"]

    # Stream with the token in the query string, then by subprotocol, then by header.
    for via, seqs in (("query", range(0, 3)), ("subprotocol", range(3, 6)), ("header", [6])):
        request_id = {"X-Request-ID": f"req-ws-{via}"}
        stream = await api.stream(sid, token=await mint(sid), via=via, headers=request_id)
        await stream.send(*(frame(seq, payload(seq), end=seq == 6) for seq in seqs))
        assert (await stream.collect(seqs)).acked == set(seqs)
        await stream.send_json({"type": "ping", "t": 1})
        await stream.recv_type("pong")
        await stream.close()
    # A used token again, in the query string: refused.
    refused = await api.connect(sid, tokens[0], via="query")
    await refused.expect_close(4401)
    # A malformed message closes 4400.
    other = await api.new_session()
    broken = await api.stream(other, token=await mint(other))
    await broken.send(raw_frame(0, payload(99), magic=b"XX"))
    await broken.expect_close(4400)

    # Upload with a token, and with a token in the query string (not a place for it).
    body = frame(0, payload(100)) + frame(1, payload(101))
    assert (await api.upload(other, body, token=await mint(other))).status_code == 200
    query_token = await mint(other)
    response = await api.http.post(
        f"/v1/sessions/{other}/frames?token={query_token}",
        content=body,
        headers={"Content-Type": FRAMES_CONTENT_TYPE, "Authorization": ""},
    )
    assert response.status_code == 401

    # Downloads, reports, refusals with bad keys, unknown ids, deletion.
    assert (await api.audio(sid)).status_code == 200
    assert (await api.http.get(f"/v1/sessions/{sid}/missing")).status_code == 200
    async with httpx.AsyncClient(base_url=server.base_url) as bare:
        wrong = {"Authorization": "Bearer " + API_KEY[::-1]}
        assert (await bare.get("/v1/sessions", headers=wrong)).status_code == 401
        stream_token_as_key = {"Authorization": f"Bearer {await mint(sid)}"}
        assert (await bare.get("/v1/sessions", headers=stream_token_as_key)).status_code == 401
        assert (await bare.get(f"/v1/sessions?api_key={API_KEY}")).status_code == 401
    assert (await api.http.get("/v1/sessions/ses_unknown")).status_code == 404
    assert (await api.http.delete(f"/v1/sessions/{other}")).status_code == 204
    return tokens, sid


def lines_of(server: Server) -> list[dict[str, Any]]:
    out = []
    for raw in server.log_text().splitlines():
        if not raw.strip() or raw.startswith("=== start #"):  # the harness's own marker
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            raise AssertionError(f"log line is not JSON: {raw!r}") from None
        assert isinstance(line, dict), raw
        for key in ("timestamp", "level", "message", "logger"):
            assert key in line, f"log line without {key}: {raw}"
        out.append(line)
    return out


async def test_a_full_scenario_logs_json_with_request_ids_and_no_secret(tmp_path: Path) -> None:
    server = Server(tmp_path, env={"VOXGATE_API_KEYS": API_KEY})
    server.api_key = API_KEY
    with server:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
            api = Api(server, client)
            tokens, sid = await scenario(api, server)
            await api.close_streams()
    # Stopped: everything the server had to say is in the file.
    text = server.log_text()
    lines = lines_of(server)

    secrets = {"the API key": API_KEY, "the reversed API key": API_KEY[::-1]}
    secrets |= {f"token {n}": token for n, token in enumerate(tokens)}
    secrets |= {
        "payload bytes": SENTINEL.decode(),
        "payload hex": SENTINEL.hex(),
        "payload base64": base64.b64encode(SENTINEL).decode()[:24],
    }
    for what, secret in secrets.items():
        assert secret not in text, f"{what} appears in the server log"
    assert "token=" not in text.replace("token=[redacted]", ""), "a token parameter was logged"

    # Every line about a request or stream carries its request id.
    request_lines = [ln for ln in lines if ln["logger"].startswith("voxgate.")]
    assert request_lines
    for line in request_lines:
        if line["logger"] in ("voxgate.access", "voxgate.stream"):
            assert isinstance(line.get("request_id"), str), line
            assert line["request_id"], line
            assert line.get("client_ip") == "127.0.0.1", line
    created = [ln for ln in lines if ln.get("request_id") == "req-scenario-1"]
    assert [ln["message"] for ln in created] == ["http.request"]
    assert created[0]["path"] == "/v1/sessions"
    assert created[0]["status"] == 201

    # The WebSocket lifecycle: open with the resume point, close with code, frames and bytes.
    opens = [ln for ln in lines if ln["message"] == "stream.open" and ln["session_id"] == sid]
    closes = [ln for ln in lines if ln["message"] == "stream.close" and ln["session_id"] == sid]
    assert [ln["next_seq"] for ln in opens] == [0, 3, 6]
    assert [(ln["code"], ln["by"], ln["frames"]) for ln in closes] == [
        (1000, "client", 3),
        (1000, "client", 3),
        (1000, "client", 1),
    ]
    assert closes[0]["bytes"] == sum(len(payload(seq)) for seq in range(3))
    for open_line, close_line in zip(opens, closes, strict=True):
        assert open_line["request_id"] == close_line["request_id"]
    assert [ln["request_id"] for ln in opens] == [
        "req-ws-query",
        "req-ws-subprotocol",
        "req-ws-header",
    ]
    refusals = [(ln["code"], ln["error"]) for ln in lines if ln["message"] == "stream.refused"]
    assert (4401, "unauthorized") in refusals
    malformed = [ln for ln in lines if ln["message"] == "stream.close" and ln["code"] == 4400]
    assert malformed
    assert malformed[0]["by"] == "server"


async def test_request_ids_come_back_and_bad_ones_are_replaced(api: Api) -> None:
    mine = await api.http.get("/health", headers={"X-Request-ID": "abc.DEF-123:4_5"})
    assert mine.headers["X-Request-ID"] == "abc.DEF-123:4_5"
    for bad in ("x" * 200, "has space", "semi;colon"):
        response = await api.http.get("/health", headers={"X-Request-ID": bad})
        assert response.headers["X-Request-ID"] != bad
        assert len(response.headers["X-Request-ID"]) == 32
    unknown = await api.http.get("/no/such/route")
    assert unknown.status_code == 404
    assert len(unknown.headers["X-Request-ID"]) == 32
