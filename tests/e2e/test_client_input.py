"""Parsing what a client sends never ends in a 5xx: numbers of any length in headers and
queries, deeply nested JSON, malformed chunked bodies, a client that goes away mid-body.

Each case is answered with a 4xx (or, for a client that left, nothing) and the
server's own count of 5xx answers stays where it was.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest

from e2e.wire import FRAMES_CONTENT_TYPE, Api, assert_problem, frame, payload_for
from servers import Server

# Longer than Python converts to int at all (4300 digits), and a few lengths around 2**63.
NUMBERS = ["9" * 5000, "9" * 19, str(1 << 63), str((1 << 64) + 1), "0" * 3000 + "1", "\u00b2"]


def server_errors(server: Server) -> float:
    """How many 5xx answers the server has counted."""
    total = 0.0
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith("voxgate_http_requests_total{") and 'status="5' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def no_5xx(server: Server) -> Iterator[None]:
    before = server_errors(server)
    yield
    assert server_errors(server) == before, "a client's input was answered with a 5xx"
    assert "Traceback" not in server.log_text()


async def audio_session(api: Api) -> str:
    sid = await api.new_session()
    answer = await api.upload(sid, frame(0, payload_for(sid, 0)) + frame(1, payload_for(sid, 1)))
    assert answer.status_code == 200, answer.text
    return sid


@pytest.mark.usefixtures("no_5xx")
@pytest.mark.parametrize("number", NUMBERS)
async def test_numbers_of_any_length_in_headers_and_queries(api: Api, number: str) -> None:
    sid = await audio_session(api)
    total = len(await api.audio_bytes(sid))
    for path in (f"/v1/sessions/{sid}/audio", f"/v1/sessions/{sid}/archive"):
        for value in (f"bytes={number}-", f"bytes=0-{number}", f"bytes=-{number}"):
            answer = await api.http.get(path, headers={b"Range": value.encode()})
            assert answer.status_code in (200, 206, 416), (path, value[:40], answer.text)
            if answer.status_code == 206:  # a range past the end is the whole rest
                assert answer.headers["Content-Range"].endswith(f"/{total}")
    queries = [
        ("/v1/sessions", {"after": number}),
        ("/v1/sessions", {"limit": number}),
        (f"/v1/sessions/{sid}/transcripts", {"after": number}),
        (f"/v1/sessions/{sid}/transcripts", {"limit": number}),
        (f"/v1/sessions/{sid}/events", {"from_seq": number}),
        (f"/v1/sessions/{sid}/events", {"last_event_id": number}),
        (f"/v1/sessions/{sid}/audio", {"allow_gaps": number}),
    ]
    for path, params in queries:
        answer = await api.http.get(path, params=params)
        assert answer.status_code in (200, 400), (path, params, answer.status_code)
        if answer.status_code == 200 and path.endswith("/events"):
            pytest.fail("a number out of range resumed a listener")
    events = await api.http.get(
        f"/v1/sessions/{sid}/events", headers={b"Last-Event-ID": number.encode()}
    )
    assert_problem(events, 400)
    ttl = await api.http.post(
        f"/v1/sessions/{sid}/tokens",
        content=b'{"ttl_s": ' + number.encode() + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert ttl.status_code in (400, 422), ttl.text


@pytest.mark.usefixtures("no_5xx")
@pytest.mark.parametrize("depth", [65, 999, 1000, 1025, 100_000])
async def test_deeply_nested_json_is_400_on_every_json_route(api: Api, depth: int) -> None:
    sid = await api.new_session()
    nested = b"[" * depth + b"]" * depth
    metadata = b'{"metadata": {"a": ' + nested + b"}}"
    transcript = b'{"role": "user", "text": "x", "is_final": true, "timestamp": ' + nested + b"}"
    cases = [
        ("/v1/sessions", nested),
        ("/v1/sessions", metadata),
        (f"/v1/sessions/{sid}/tokens", nested),
        (f"/v1/sessions/{sid}/listen-tokens", nested),
        (f"/v1/sessions/{sid}/transcripts", transcript),
        (f"/voice/transcript/relay/{sid}", transcript),
    ]
    before = await api.http.get("/v1/sessions", params={"limit": 500})
    for path, body in cases:
        answer = await api.http.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
        problem = assert_problem(answer, 400)
        assert problem["type"] == "urn:voxgate:error:too_deep", (path, problem)
    after = await api.http.get("/v1/sessions", params={"limit": 500})
    assert after.json()["sessions"] == before.json()["sessions"]


async def test_metadata_nested_within_the_bound_is_kept(api: Api) -> None:
    value: object = "leaf"
    for _ in range(31):  # 62 levels, and the body and metadata objects: 64
        value = {"v": [value]}
    created = await api.create_session(metadata={"deep": value})
    assert created["metadata"] == {"deep": value}


def raw_request(server: Server, request: bytes, *, wait_answer: bool = True) -> bytes:
    """Send ``request`` bytes on a fresh connection; the status line of the answer, if any."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        if not wait_answer:
            return b""
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer.split(b"\r\n", 1)[0]


@pytest.mark.usefixtures("no_5xx")
@pytest.mark.parametrize(
    "chunks",
    [
        b"ZZ\r\nabc\r\n0\r\n\r\n",  # size not hex
        b"2\r\n{}\r\nFFFFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",  # size beyond any body
        b"5\r\n{}\r\n0\r\n\r\n",  # shorter than announced
        b"2\r\n{}XX0\r\n\r\n",  # no CRLF after the data
        b"-2\r\n{}\r\n0\r\n\r\n",  # negative size
    ],
)
async def test_malformed_chunked_bodies_are_4xx(api: Api, server: Server, chunks: bytes) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    targets = [
        ("/v1/sessions", server.api_key, "application/json"),
        (f"/v1/sessions/{sid}/transcripts", server.api_key, "application/json"),
        (f"/v1/sessions/{sid}/frames", token, FRAMES_CONTENT_TYPE),
    ]
    for path, credential, content_type in targets:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {credential}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        status = await asyncio.to_thread(raw_request, server, head + chunks)
        # An answer is a 4xx; a connection closed without one is a quiet refusal.
        assert status == b"" or status.split(b" ")[1].startswith(b"4"), (path, status)
    assert (await api.get_session(sid))["frames"] == 0


@pytest.mark.usefixtures("no_5xx")
async def test_a_client_that_goes_away_mid_body_keeps_its_token(api: Api, server: Server) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    head = (
        f"POST /v1/sessions/{sid}/frames HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: {FRAMES_CONTENT_TYPE}\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    # Headers only, then gone: the upload never arrived.
    await asyncio.to_thread(raw_request, server, head, wait_answer=False)
    # A JSON body cut short, then gone.
    create = (
        f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.api_key}\r\n"
        'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"metadata": {"a": '
    ).encode()
    await asyncio.to_thread(raw_request, server, create, wait_answer=False)
    # Once the server is done with both (their access lines are written)...
    for _ in range(200):
        log = server.log_text()
        if f'"path":"/v1/sessions/{sid}/frames"' in log and '"status":400' in log:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the server did not finish the abandoned upload")
    # ... the token is still good for the upload that does arrive.
    answer = await api.upload(sid, frame(0, payload_for(sid, 0)), token=token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["acked"] == [[0, 0]]
