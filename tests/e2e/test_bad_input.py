"""The bad-input matrix: every HTTP endpoint with wrong types, missing or unknown fields,
oversize bodies and unknown ids, and every header field of PROTOCOL section 1 with each
bad value. Each answers its documented error and stores nothing.

Missing fields: every member of the JSON bodies is optional (PROTOCOL 2.3), so there
is no missing-field error to give; missing headers are a missing Content-Type (415) and
a missing credential (401, test_upload.py and test_sessions.py).

(Cases already covered elsewhere are not repeated: see test_sessions.py for three bad
create bodies and list limits, test_conformance.py for malformed WebSocket messages,
test_upload.py for truncated bodies and missing tokens.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from e2e.wire import (
    Api,
    assert_problem,
    frame,
    payload_for,
    raw_frame,
)
from servers import Server, start_server

MAX_FRAME = 1024
MAX_UPLOAD = 64 * 1024
SEQ_AHEAD = 1000
JSON_LIMIT = 1024 * 1024  # request_max_body_size of the JSON endpoints


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_MAX_FRAME_BYTES": str(MAX_FRAME),
        "VOXGATE_WINDOW_BYTES": str(64 * MAX_FRAME),
        "VOXGATE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "VOXGATE_MAX_SEQ_AHEAD": str(SEQ_AHEAD),
    }
    with start_server(tmp_path_factory.mktemp("bad-input"), env=env) as running:
        yield running


def metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def post_json(api: Api, path: str, body: bytes | str) -> httpx.Response:
    # An oversize body is refused before it is read; the server reads and drops the rest
    # so that its close does not reset the connection under the 413.
    return await api.http.post(path, content=body, headers={"Content-Type": "application/json"})


async def all_sessions(api: Api) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"after": after} if after else {})}
        page = (await api.http.get("/v1/sessions", params=params)).json()
        sessions += page["sessions"]
        after = page["next"]
        if after is None:
            return sessions


# --- JSON endpoints -------------------------------------------------------------------

BAD_CREATE: list[tuple[str, bytes | str, int]] = [
    ("codec not a string", json.dumps({"codec": 5}), 400),
    ("codec unknown", json.dumps({"codec": "mp4a-latm"}), 400),
    ("sample_rate zero", json.dumps({"sample_rate": 0}), 400),
    ("sample_rate too high", json.dumps({"sample_rate": 10**9}), 400),
    ("sample_rate float", json.dumps({"sample_rate": 16000.5}), 400),
    ("channels zero", json.dumps({"channels": 0}), 400),
    ("channels above 255", json.dumps({"channels": 256}), 400),
    ("channels a string", json.dumps({"channels": "2"}), 400),
    ("metadata a list", json.dumps({"metadata": [1, 2]}), 400),
    ("unknown field", json.dumps({"codec": "opus", "priority": "high"}), 400),
    ("body a list", json.dumps([{"codec": "opus"}]), 400),
    ("body a string", json.dumps("opus"), 400),
    ("body a number", "16000", 400),
    ("not JSON", "{codec: opus", 400),
    ("truncated JSON", '{"codec": "op', 400),
    ("oversize", json.dumps({"metadata": {"blob": "x" * JSON_LIMIT}}), 413),
]


@pytest.mark.parametrize(
    ("body", "status"), [c[1:] for c in BAD_CREATE], ids=[c[0] for c in BAD_CREATE]
)
async def test_bad_session_bodies_store_nothing(api: Api, body: bytes | str, status: int) -> None:
    before = await all_sessions(api)
    response = await post_json(api, "/v1/sessions", body)
    problem = assert_problem(response, status)
    assert problem["detail"], problem
    assert await all_sessions(api) == before


BAD_TOKEN: list[tuple[str, bytes | str, int]] = [
    ("ttl_s a string", json.dumps({"ttl_s": "60"}), 400),
    ("ttl_s a float", json.dumps({"ttl_s": 1.5}), 400),
    ("ttl_s null is the default", json.dumps({"ttl_s": None}), 201),
    ("ttl_s zero", json.dumps({"ttl_s": 0}), 422),
    ("ttl_s negative", json.dumps({"ttl_s": -5}), 422),
    ("ttl_s huge", json.dumps({"ttl_s": 2**70}), 422),
    ("unknown field", json.dumps({"ttl": 60}), 400),
    ("body a list", "[60]", 400),
    ("not JSON", "ttl_s=60", 400),
    ("oversize", json.dumps({"ttl_s": 60, "pad": "x" * JSON_LIMIT}), 413),
]


@pytest.mark.parametrize(
    ("body", "status"), [c[1:] for c in BAD_TOKEN], ids=[c[0] for c in BAD_TOKEN]
)
async def test_bad_token_bodies_mint_nothing(
    api: Api, server: Server, body: bytes | str, status: int
) -> None:
    sid = await api.new_session()
    minted = metric(server, "voxgate_tokens_minted_total")
    response = await post_json(api, f"/v1/sessions/{sid}/tokens", body)
    if status == 201:
        assert response.status_code == 201, response.text
        assert metric(server, "voxgate_tokens_minted_total") == minted + 1
        return
    assert_problem(response, status)
    assert metric(server, "voxgate_tokens_minted_total") == minted


UNKNOWN_IDS = [
    "ses_00000000000000000000000000",
    "nope",
    "ses_%E2%9C%93",
    "..%2F..%2Fetc",
    "x" * 300,
]


@pytest.mark.parametrize("sid", UNKNOWN_IDS)
async def test_unknown_ids_are_404_on_every_endpoint(api: Api, server: Server, sid: str) -> None:
    before = await all_sessions(api)
    minted = metric(server, "voxgate_tokens_minted_total")
    for method, path in [
        ("GET", f"/v1/sessions/{sid}"),
        ("DELETE", f"/v1/sessions/{sid}"),
        ("POST", f"/v1/sessions/{sid}/tokens"),
        ("GET", f"/v1/sessions/{sid}/missing"),
        ("GET", f"/v1/sessions/{sid}/audio"),
    ]:
        response = await api.http.request(method, path, json={} if method == "POST" else None)
        assert_problem(response, 404)
    # The upload checks its token first, then the session.
    other = await api.new_session()
    response = await api.upload(sid, frame(0, b"x"), token=await api.mint_token(other))
    assert_problem(response, 404)
    assert (await api.missing(other))["frames"] == 0
    minted += 1
    if "/" not in sid and "%2F" not in sid:  # a path that is no stream route has no stream
        stream = await api.connect(sid, token=await api.mint_token(other))
        await stream.expect_close(4404)
        minted += 1
    assert len(await all_sessions(api)) == len(before) + 1  # only `other`
    assert metric(server, "voxgate_tokens_minted_total") == minted


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({"format": "mp3"}, {}, 400),
        ({"format": ""}, {}, 400),
        ({"allow_gaps": "perhaps"}, {}, 400),
        ({"format": "wav"}, {}, 422),  # an opus session has no WAV form
        ({}, {"Range": "bytes=5000-6000"}, 416),
        ({}, {"Range": "bytes=10-5"}, 416),
    ],
)
async def test_bad_audio_requests(
    api: Api, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    sid = await api.new_session(codec="opus")
    assert (await api.upload(sid, frame(0, payload_for(sid, 0, 100)))).status_code == 200
    assert_problem(await api.audio(sid, params, headers), status)


@pytest.mark.parametrize("limit", ["1.5", "-1", "", "ten"])
async def test_bad_list_parameters(api: Api, limit: str) -> None:
    assert_problem(await api.http.get("/v1/sessions", params={"limit": limit}), 400)


# --- the HTTP upload ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "application/json", "text/plain"]
)
async def test_upload_with_the_wrong_content_type_is_415_and_keeps_its_token(
    api: Api, server: Server, content_type: str | None
) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    headers = {"Authorization": f"Bearer {token}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with httpx.AsyncClient(base_url=server.base_url) as bare:
        response = await bare.post(
            f"/v1/sessions/{sid}/frames", content=frame(0, b"x"), headers=headers
        )
    assert_problem(response, 415)
    assert (await api.missing(sid))["frames"] == 0
    assert (await api.upload(sid, frame(0, b"x"), token=token)).status_code == 200


async def test_upload_above_the_body_limit_is_413_and_stores_only_what_it_reports(
    api: Api,
) -> None:
    sid = await api.new_session()
    frames = [
        frame(seq, payload_for(sid, seq, MAX_FRAME)) for seq in range(MAX_UPLOAD // MAX_FRAME + 8)
    ]

    async def body() -> Any:
        for f in frames:
            yield f

    response = await api.upload(sid, body())
    problem = assert_problem(response, 413)
    acked = {s for first, last in problem["acked"] for s in range(first, last + 1)}
    assert len(acked) * (MAX_FRAME + 24) <= MAX_UPLOAD
    assert await api.stored_seqs(sid) == acked


# --- PROTOCOL section 1, field by field -------------------------------------------------

Build = Callable[[int, bytes], bytes]
# (field, case) -> (frame builder, what the answer must be): "4400:<kind>" for broken
# framing, a nack reason, or "acked".
HEADER_CASES: dict[str, tuple[Build, str]] = {
    "magic zero": (lambda s, p: raw_frame(s, p, magic=b"\0\0"), "4400:bad_magic"),
    "magic swapped": (lambda s, p: raw_frame(s, p, magic=b"FV"), "4400:bad_magic"),
    "magic half right": (lambda s, p: raw_frame(s, p, magic=b"VG"), "4400:bad_magic"),
    "version 0": (lambda s, p: raw_frame(s, p, version=0), "4400:bad_version"),
    "version 2": (lambda s, p: raw_frame(s, p, version=2), "4400:bad_version"),
    "version 255": (lambda s, p: raw_frame(s, p, version=255), "4400:bad_version"),
    **{
        f"flags bit {bit}": (
            (lambda b: lambda s, p: raw_frame(s, p, flags=1 << b))(bit),
            "4400:reserved_flags",
        )
        for bit in range(1, 8)
    },
    "flags all": (lambda s, p: raw_frame(s, p, flags=0xFF), "4400:reserved_flags"),
    "seq past max_seq_ahead": (lambda s, p: frame(s + SEQ_AHEAD + 1, p), "sequence"),
    "seq max": (lambda s, p: frame(2**32 - 1, p), "sequence"),
    "pts max (stored, not interpreted)": (lambda s, p: raw_frame(s, p, pts_us=2**64 - 1), "acked"),
    "length 0 without END": (lambda s, p: raw_frame(s, b"", flags=0), "4400:empty_frame"),
    "length past the end": (lambda s, p: raw_frame(s, p, length=len(p) + 1), "4400:truncated"),
    "length max": (lambda s, p: raw_frame(s, p, length=2**32 - 1), "4400:truncated"),
    "length above max_frame_bytes": (
        lambda s, p: frame(s, p * (MAX_FRAME // len(p) + 1)),
        "too_large",
    ),
    "crc off by one bit": (lambda s, p: raw_frame(s, p, crc=0x01), "checksum"),
    "crc of another payload": (lambda s, p: raw_frame(s, p, crc=0xE3069283), "checksum"),
    "header cut short": (lambda s, p: frame(s, p)[:23], "4400:truncated"),
}


def expected(case: str) -> tuple[str | None, str]:
    answer = HEADER_CASES[case][1]
    if answer.startswith("4400:"):
        return answer[5:], "broken"
    return None, answer


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
async def test_each_bad_header_value_over_upload(api: Api, case: str) -> None:
    sid = await api.new_session()
    good = payload_for(sid, 0, 100)
    build = HEADER_CASES[case][0]
    # A good frame before the bad one (seq 1) and, if framing survives, one after it.
    body = frame(0, good) + build(1, payload_for(sid, 1, 100))
    kind, answer = expected(case)
    if kind is None:
        body += frame(2, payload_for(sid, 2, 100))
    response = await api.upload(sid, body)
    stored = await api.stored_seqs(sid)
    if kind is not None:
        problem = assert_problem(response, 400)
        assert problem["type"] == f"urn:voxgate:error:{kind}", problem
        assert problem["acked"] == [[0, 0]], problem
        assert stored == {0}, "nothing from the broken frame on may be stored"
        return
    assert response.status_code == 200, response.text
    result = response.json()
    if answer == "acked":
        assert result["acked"] == [[0, 2]], result
        assert stored == {0, 1, 2}
    else:
        reasons = {r["reason"] for r in result["rejected"]}
        assert reasons == {answer}, result
        assert result["acked"] == [[0, 0], [2, 2]], result
        assert stored == {0, 2}


@pytest.mark.parametrize(
    "case",
    [c for c in sorted(HEADER_CASES) if HEADER_CASES[c][1] in ("acked", "sequence", "too_large")],
)
async def test_each_bad_header_value_over_websocket(api: Api, case: str) -> None:
    """The refusals that keep the stream open (the 4400 ones are in test_conformance.py)."""
    sid = await api.new_session()
    stream = await api.stream(sid)
    _, answer = expected(case)
    build = HEADER_CASES[case][0]
    raw = build(1, payload_for(sid, 1, 100))
    seq = int.from_bytes(raw[4:8], "big")
    await stream.send(frame(0, payload_for(sid, 0, 100)), raw)
    answers = await stream.collect([0, seq])
    assert answers.verdict(0) == "acked"
    assert answers.verdict(seq) == answer
    assert await api.stored_seqs(sid) == ({0, 1} if answer == "acked" else {0})


async def test_frames_after_end_are_refused_as_sequence_on_both_transports(api: Api) -> None:
    sid = await api.new_session()
    ended = frame(0, payload_for(sid, 0), end=True)
    assert (await api.upload(sid, ended)).status_code == 200
    response = await api.upload(sid, frame(1, payload_for(sid, 1)))
    assert response.json()["rejected"] == [{"ranges": [[1, 1]], "reason": "sequence"}]
    stream = await api.stream(sid)
    await stream.send(frame(5, payload_for(sid, 5)))
    assert (await stream.collect([5])).summary()["sequence"] == [[5, 5]]
    assert await api.stored_seqs(sid) == {0}
