"""A fuzz test of the whole HTTP surface against a real server process.

Hypothesis makes up requests: known and invented methods, the API's paths
with good, foreign, deleted and garbage session ids, query parameters and
headers the API reads (and others) with any values, and bodies of any
shape: JSON of any nesting, frames, arbitrary bytes. The one property: the
server never answers a client's mistake with a 5xx, and logs no traceback.
Bounded: a fixed number of examples, each one request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e.wire import FRAMES_CONTENT_TYPE, frame, payload_for
from servers import Server, start_server

EXAMPLES = settings(
    max_examples=800,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class World:
    """The state the made-up requests refer to: sessions of every kind, tokens."""

    def __init__(self, server: Server) -> None:
        self.server = server
        headers = {"Authorization": f"Bearer {server.api_key}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            self.live = http.post("/v1/sessions", json={"codec": "pcm_s16le"}).json()["id"]
            token = http.post(f"/v1/sessions/{self.live}/tokens", json={}).json()["token"]
            body = frame(0, payload_for(self.live, 0)) + frame(1, payload_for(self.live, 1))
            upload = http.post(
                f"/v1/sessions/{self.live}/frames",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": FRAMES_CONTENT_TYPE},
            )
            assert upload.status_code == 200, upload.text
            self.deleted = http.post("/v1/sessions", json={}).json()["id"]
            assert http.delete(f"/v1/sessions/{self.deleted}").status_code == 204
            self.tokens = [
                http.post(f"/v1/sessions/{self.live}/{kind}", json={}).json()["token"]
                for kind in ("tokens", "listen-tokens")
                for _ in range(3)
            ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"VOXGATE_CORS_ORIGINS": "https://app.example", "VOXGATE_HTTP_BODY_TIMEOUT_S": "5"}
    with start_server(tmp_path_factory.mktemp("fuzz-http"), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def world(server: Server) -> World:
    return World(server)


# -- strategies ---------------------------------------------------------------------

TEMPLATES = [
    "/v1/sessions",
    "/v1/sessions/{sid}",
    "/v1/sessions/{sid}/tokens",
    "/v1/sessions/{sid}/listen-tokens",
    "/v1/sessions/{sid}/missing",
    "/v1/sessions/{sid}/audio",
    "/v1/sessions/{sid}/archive",
    "/v1/sessions/{sid}/frames",
    "/v1/sessions/{sid}/transcripts",
    "/v1/sessions/{sid}/events",
    "/voice/transcript/relay/{sid}",
    "/v1/stats",
    "/v1/storage",
    "/health",
    "/ready",
    "/metrics",
    "/schema/openapi.json",
    "/{sid}",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
PARAMS = ["limit", "after", "from_seq", "last_event_id", "token", "audio", "format", "allow_gaps"]
HEADERS = [
    "Authorization",
    "Content-Type",
    "Range",
    "Last-Event-ID",
    "Origin",
    "X-Forwarded-For",
    "Forwarded",
    "X-Request-ID",
    "Accept",
    "Access-Control-Request-Method",
]
# Header values httpx can put on the wire: visible Latin-1 and spaces, no CR or LF.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
numbers = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70).map(str),
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
)
values = st.one_of(header_text, numbers)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
FIELDS = ["codec", "sample_rate", "channels", "metadata", "ttl_s", "role", "text", "is_final"]
FIELDS += ["timestamp", "seq", "session_id"]


@st.composite
def requests(draw: st.DrawFn, world: World) -> dict[str, Any]:
    sid = draw(
        st.sampled_from([world.live, world.deleted, "ses_" + "0" * 26, "..", "%00", "%E2%82"])
        | st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#"),
            min_size=1,
            max_size=40,
        )
    )
    path = draw(st.sampled_from(TEMPLATES)).format(sid=sid)
    method = draw(st.sampled_from(METHODS) | st.from_regex(r"\A[A-Z]{1,12}\Z"))
    params = draw(
        st.dictionaries(st.sampled_from(PARAMS) | st.text(max_size=8), values, max_size=4)
    )
    headers = draw(st.dictionaries(st.sampled_from(HEADERS), values, max_size=5))
    if "Authorization" in headers and draw(st.booleans()):
        credential = draw(st.sampled_from([world.server.api_key, *world.tokens]))
        headers["Authorization"] = f"Bearer {credential}"
    if "Content-Type" in headers and draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", FRAMES_CONTENT_TYPE, "text/plain"])
        )
    kind = draw(st.sampled_from(["none", "json", "fields", "deep", "frames", "bytes"]))
    body: bytes | None = None
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "fields":
        body = json.dumps(draw(st.dictionaries(st.sampled_from(FIELDS), json_values))).encode()
    elif kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=3000))
        body = b"[" * depth + b"]" * draw(st.integers(min_value=0, max_value=depth))
    elif kind == "frames":
        seq = draw(st.integers(min_value=0, max_value=(1 << 32) - 1))  # a u32 on the wire
        body = frame(seq, draw(st.binary(max_size=64))) + draw(st.binary(max_size=24))
    elif kind == "bytes":
        body = draw(st.binary(max_size=256))
    # Latin-1 bytes: what any client can put in a header, beyond ASCII too.
    # (HTTP trims the spaces around a value: h11 refuses to send them.)
    raw_headers = [(k.encode(), v.strip(" ").encode("latin-1")) for k, v in headers.items()]
    return {
        "method": method,
        "url": path,
        "params": params,
        "headers": raw_headers,
        "content": body,
    }


def server_errors(server: Server) -> float:
    total = 0.0
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith("voxgate_http_requests_total{") and 'status="5' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_no_request_a_client_can_make_gets_a_5xx(server: Server, world: World) -> None:
    http = httpx.Client(base_url=server.base_url, timeout=30)

    @EXAMPLES
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        request = data.draw(requests(world))
        with http.stream(**request) as answer:
            # Streams (events) are left at once: only the status matters here.
            assert answer.status_code < 500, (request, answer.status_code, answer.read()[:300])

    try:
        one()
    finally:
        http.close()
    assert server_errors(server) == 0
    assert "Traceback" not in server.log_text()
