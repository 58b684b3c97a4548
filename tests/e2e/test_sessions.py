"""The sessions API (PROTOCOL 2.3, docs/api.md): create, get, list, delete, API keys."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from e2e.wire import Api, assert_problem, frame, payload_for
from servers import API_KEY, Server


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_health_needs_no_key(server: Server) -> None:
    async with httpx.AsyncClient() as bare:
        response = await bare.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_create_answers_201_with_the_session(api: Api) -> None:
    before = datetime.now(UTC)
    session = await api.create_session(
        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={"call": "abc", "n": 3}
    )
    created = datetime.fromisoformat(session["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None
    assert before - timedelta(seconds=5) <= created <= datetime.now(UTC) + timedelta(seconds=5)
    expected = {
        "state": "open",
        "codec": "pcm_s16le",
        "sample_rate": 16000,
        "channels": 1,
        "metadata": {"call": "abc", "n": 3},
        "next_seq": 0,
        "frames": 0,
        "bytes": 0,
        "end_seq": None,
        "stream_crc32c": None,
    }
    assert {k: session.get(k, "<absent>") for k in expected} == expected

    again = await api.get_session(session["id"])
    assert again["id"] == session["id"]
    assert {k: again.get(k, "<absent>") for k in expected} == expected


async def test_create_with_an_empty_body(api: Api) -> None:
    response = await api.http.post("/v1/sessions", json={})
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "open"


async def test_create_without_a_body(api: Api) -> None:
    # PROTOCOL 2.3: every field is optional, so the body may be left out entirely.
    response = await api.http.post("/v1/sessions")
    assert response.status_code == 201, response.text
    assert response.json()["state"] == "open"


@pytest.mark.parametrize("codec", ["pcm_s16le", "opus", "webm", "mulaw", "other"])
async def test_every_codec_the_contract_names_is_accepted(api: Api, codec: str) -> None:
    session = await api.create_session(codec=codec)
    assert session["codec"] == codec
    assert (await api.get_session(session["id"]))["codec"] == codec


async def test_ids_are_unique(api: Api) -> None:
    ids = [await api.new_session() for _ in range(10)]
    assert len(set(ids)) == 10


@pytest.mark.parametrize(
    "body",
    [
        {"sample_rate": "fast"},
        {"channels": -1},
        {"metadata": "not an object"},
    ],
)
async def test_bad_create_body_is_a_client_error(api: Api, body: dict[str, object]) -> None:
    response = await api.http.post("/v1/sessions", json=body)
    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code)


async def test_get_unknown_session_is_404(api: Api) -> None:
    assert_problem(await api.http.get("/v1/sessions/ses_does_not_exist"), 404)
    assert_problem(await api.http.get("/v1/sessions/ses_does_not_exist/missing"), 404)


async def test_list_pages_with_after(api: Api) -> None:
    mine = [await api.new_session() for _ in range(5)]
    seen: list[str] = []
    after: str | None = None
    for _ in range(1000):
        params = {"limit": "2"}
        if after is not None:
            params["after"] = after
        response = await api.http.get("/v1/sessions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        ids = [s["id"] for s in page["sessions"]]
        assert len(ids) <= 2
        assert all(after is None or i > after for i in ids), (after, ids)
        seen.extend(ids)
        after = page["next"]
        if after is None:
            break
        assert after == ids[-1], page
    assert seen == sorted(seen), "sessions are listed by id"
    assert len(seen) == len(set(seen)), "a session appeared on two pages"
    assert set(mine) <= set(seen)


@pytest.mark.parametrize("limit", ["0", "501", "x"])
async def test_list_limit_out_of_range_is_a_client_error(api: Api, limit: str) -> None:
    response = await api.http.get("/v1/sessions", params={"limit": limit})
    assert response.status_code in (400, 422), response.text


async def test_delete_removes_every_payload_byte(api: Api, server: Server) -> None:
    sid = await api.new_session()
    marker = f"DELETE-ME-{uuid.uuid4().hex}".encode()
    payloads = {seq: marker + payload_for(sid, seq, 200) for seq in range(6)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq], end=seq == 5) for seq in range(6)))
    assert (await stream.collect(range(6))).acked == set(range(6))
    await stream.close()
    assert files_containing(server.data_dir, marker), "payloads are not in the data dir at all"

    response = await api.http.delete(f"/v1/sessions/{sid}")
    assert response.status_code == 204, response.text
    await asyncio.sleep(0.5)
    left = files_containing(server.data_dir, marker)
    assert not left, f"deleted payload bytes still in {left}"

    assert_problem(await api.http.get(f"/v1/sessions/{sid}"), 410)
    assert_problem(await api.http.delete(f"/v1/sessions/{sid}"), 410)
    listed = await api.http.get("/v1/sessions", params={"limit": "500"})
    assert sid not in [s["id"] for s in listed.json()["sessions"]]
    audio = await api.audio(sid, {"allow_gaps": "true"})
    assert audio.status_code in (404, 410)


async def test_delete_unknown_session_is_404(api: Api) -> None:
    assert_problem(await api.http.delete("/v1/sessions/ses_does_not_exist"), 404)


async def test_streaming_to_a_deleted_session_closes_4410(api: Api) -> None:
    sid = await api.new_session()
    token = await api.mint_token(sid)
    open_stream = await api.stream(sid)
    await open_stream.send(frame(0, payload_for(sid, 0)))
    await open_stream.collect([0])

    response = await api.http.delete(f"/v1/sessions/{sid}")
    assert response.status_code == 204, response.text

    # The stream that was open when the session was deleted stores nothing more.
    await open_stream.send(frame(1, payload_for(sid, 1)))
    await open_stream.expect_close(4410)
    # A token minted before the delete opens no stream.
    late = await api.connect(sid, token)
    await late.expect_close(4410)


async def test_token_for_a_deleted_session_is_refused(api: Api) -> None:
    sid = await api.new_session()
    assert (await api.http.delete(f"/v1/sessions/{sid}")).status_code == 204
    assert_problem(await api.mint_token_response(sid), 410)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", API_KEY, "Basic dGVzdC1rZXk="])
async def test_management_calls_need_the_api_key(
    api: Api, server: Server, authorization: str | None
) -> None:
    sid = await api.new_session()
    headers = {} if authorization is None else {"Authorization": authorization}
    calls = [
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions"),
        ("GET", f"/v1/sessions/{sid}"),
        ("POST", f"/v1/sessions/{sid}/tokens"),
        ("GET", f"/v1/sessions/{sid}/missing"),
        ("GET", f"/v1/sessions/{sid}/audio"),
        ("DELETE", f"/v1/sessions/{sid}"),
    ]
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as bare:
        for method, path in calls:
            response = await bare.request(method, path, json={} if method == "POST" else None)
            assert_problem(response, 401)
    # Nothing happened: the session is still there.
    assert (await api.get_session(sid))["state"] == "open"
