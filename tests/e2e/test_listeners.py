"""Listeners on one server: events and audio in order, resume, auth, deletion, counts."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from e2e.listening import SseListener, Via, WsListener
from e2e.wire import Api, assert_problem, frame, payload_for, stream_crc
from servers import Server

UNKNOWN = "ses_00000000000000000000000000"


async def post_transcript(
    http: httpx.AsyncClient, session_id: str, text: str, *, final: bool, seq: int | None = None
) -> int:
    body = {"role": "user", "text": text, "is_final": final, "timestamp": 1.5, "seq": seq}
    response = await http.post(f"/v1/sessions/{session_id}/transcripts", json=body)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def listener_counts(http: httpx.AsyncClient) -> tuple[int, int]:
    stats = (await http.get("/v1/listeners")).json()
    return stats["listeners"], stats["feeds"]


@pytest.mark.xfail(
    reason="open: fails on main after the performance merge (8 of 10 frames heard)",
    strict=False,
)
async def test_audio_waits_for_gaps_and_arrives_in_order(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 100 + seq) for seq in range(10)}
    listener = await WsListener.open(api.server, sid, audio=True)
    stream = await api.stream(sid)
    try:
        # Frames 5 and 6 come last: audio stops at 4 until they are stored.
        await api.send_all(stream, {s: payloads[s] for s in (0, 1, 2, 3, 4, 7, 8, 9)}, end_seq=9)
        await listener.until(lambda h: h.latest()["missing"] == [[5, 6]])
        await listener.until(lambda h: len(h.frames) == 5)
        assert listener.heard.latest()["next_seq"] == 10
        assert listener.heard.latest()["ended"] is True
        assert listener.heard.states == ["ended"]

        await api.send_all(stream, {5: payloads[5], 6: payloads[6]})
        await listener.until(lambda h: len(h.frames) == 10 and "complete" in h.states)
    finally:
        await listener.close()
    heard = listener.heard
    assert [(seq, payload) for seq, _, _, payload in heard.frames] == sorted(payloads.items())
    assert [flags for _, flags, _, _ in heard.frames] == [0] * 9 + [1]
    assert [pts for _, _, pts, _ in heard.frames] == [seq * 20_000 for seq in range(10)]
    complete = heard.of_type("state")[-1]
    assert complete["last_seq"] == 9
    assert complete["frames"] == 10
    assert complete["stream_crc32c"] == stream_crc(payloads[s] for s in range(10))
    acked = sorted(
        seq for event in heard.progress for a, b in event["acked"] for seq in range(a, b + 1)
    )
    assert acked == list(range(10)), "each stored frame is announced exactly once"
    assert heard.latest()["missing"] == []
    assert heard.latest()["complete"] is True


async def test_transcripts_reach_ws_and_sse_listeners(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    earlier = await post_transcript(http, sid, "before anyone listened", final=True)
    ws = await WsListener.open(api.server, sid)
    async with SseListener.open(http, sid) as sse:
        interim = await post_transcript(http, sid, "I'd li", final=False, seq=1)
        final = await post_transcript(http, sid, "I'd like that", final=True, seq=1)
        retry = {
            "role": "user",
            "text": "I'd like that",
            "is_final": True,
            "timestamp": 2,
            "seq": 1,
        }
        response = await http.post(f"/v1/sessions/{sid}/transcripts", json=retry)
        assert response.status_code == 200, "a retry stores (and publishes) nothing"

        def got_all(texts: list[str]) -> bool:
            return texts == ["before anyone listened", "I'd li", "I'd like that"]

        await ws.until(lambda h: got_all([t["text"] for t in h.transcripts]))
        await sse.until(lambda s: got_all([t["text"] for t in s.heard.transcripts]))
        assert sse.ids == [earlier, interim, final]
        await ws.close()
    assert [t["id"] for t in ws.heard.transcripts] == [earlier, interim, final]
    assert ws.heard.transcripts[2]["supersedes"] == interim
    assert ws.heard.transcripts[2]["session_id"] == sid


async def test_resume_points(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    ids = [await post_transcript(http, sid, f"line {i}", final=True) for i in range(5)]
    payloads = {seq: payload_for(sid, seq) for seq in range(20)}
    stream = await api.stream(sid)
    await api.send_all(stream, payloads)

    listener = await WsListener.open(api.server, sid, audio=True, from_seq=12, last_event_id=ids[2])
    await listener.until(lambda h: len(h.frames) == 8 and len(h.transcripts) == 2)
    assert [seq for seq, *_ in listener.heard.frames] == list(range(12, 20))
    assert [t["id"] for t in listener.heard.transcripts] == ids[3:]
    assert listener.heard.hello is not None
    assert listener.heard.hello["last_event_id"] == ids[2]
    assert listener.heard.hello["from_seq"] == 12
    await listener.close()

    # SSE: the browser's Last-Event-ID header, or last_event_id in the query.
    headers = {"Last-Event-ID": str(ids[3])}
    async with SseListener.open(http, sid, headers=headers, last_event_id=ids[3]) as sse:
        await sse.until(lambda s: len(s.heard.transcripts) == 1)
        assert sse.ids == [ids[4]]
    async with SseListener.open(
        http, sid, params={"last_event_id": str(ids[1])}, last_event_id=ids[1]
    ) as sse:
        await sse.until(lambda s: len(s.heard.transcripts) == 3)
        assert sse.ids == ids[2:]


async def test_a_dropped_listener_resumes_without_gap_or_repeat(
    api: Api, http: httpx.AsyncClient
) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 320) for seq in range(300)}
    stream = await api.stream(sid)
    first = await WsListener.open(api.server, sid, audio=True)
    await api.send_all(stream, {s: payloads[s] for s in range(100)})
    await post_transcript(http, sid, "one", final=True)
    await first.until(lambda h: len(h.frames) >= 50 and len(h.transcripts) == 1)
    # The network goes: no close handshake.
    first.ws.transport.abort()
    heard_first = first.heard
    await post_transcript(http, sid, "two", final=True)
    await api.send_all(stream, {s: payloads[s] for s in range(100, 200)})

    assert heard_first.next_audio is not None
    second = await WsListener.open(
        api.server,
        sid,
        audio=True,
        from_seq=heard_first.next_audio,
        last_event_id=heard_first.last_id,
    )
    await api.send_all(stream, {s: payloads[s] for s in range(200, 300)}, end_seq=299)
    await post_transcript(http, sid, "three", final=True)
    await second.until(lambda h: len(h.transcripts) == 2 and h.next_audio == 300)
    await second.close()
    frames = [(seq, p) for seq, _, _, p in heard_first.frames + second.heard.frames]
    assert frames == sorted(payloads.items())
    texts = [t["text"] for t in heard_first.transcripts + second.heard.transcripts]
    assert texts == ["one", "two", "three"]


async def test_http_uploads_are_heard_too(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    listener = await WsListener.open(api.server, sid, audio=True)
    body = b"".join(frame(seq, payload_for(sid, seq), end=seq == 4) for seq in range(5))
    response = await api.upload(sid, body)
    assert response.status_code == 200, response.text
    await listener.until(lambda h: len(h.frames) == 5 and "complete" in h.states)
    await listener.close()


async def listen_token(http: httpx.AsyncClient, session_id: str) -> str:
    response = await http.post(f"/v1/sessions/{session_id}/listen-tokens", json={"ttl_s": 30})
    assert response.status_code == 201, response.text
    assert response.json()["ttl_s"] == 30
    return str(response.json()["token"])


@pytest.mark.parametrize("via", ["header", "query", "subprotocol"])
async def test_listen_tokens_are_single_use(
    http: httpx.AsyncClient, api: Api, server: Server, via: Via
) -> None:
    sid = await api.new_session()
    token = await listen_token(http, sid)
    listener = await WsListener.open(server, sid, token=token, via=via)
    await listener.close()
    again = await WsListener.open(server, sid, token=token, via=via, read_hello=False)
    assert await again.until_closed() == 4401
    assert again.error is not None
    assert again.error["code"] == "unauthorized"


async def test_refused_credentials(api: Api, http: httpx.AsyncClient, server: Server) -> None:
    sid = await api.new_session()
    other = await api.new_session()
    refused = {
        "no credentials": (None, 4401),
        "a wrong key": ("not-a-key", 4401),
        "a stream token": (await api.mint_token(sid), 4403),
        "another session's listen token": (await listen_token(http, other), 4403),
    }
    for what, (credential, code) in refused.items():
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        async with connect(
            f"{server.ws_url}/v1/sessions/{sid}/listen", additional_headers=headers
        ) as ws:
            error = json.loads(await ws.recv())
            assert error["type"] == "error", what
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == code, what
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        assert_problem(await anonymous.get(f"/v1/sessions/{sid}/events"), 401)
        wrong = {"Authorization": "Bearer not-a-key"}
        assert_problem(await anonymous.get(f"/v1/sessions/{sid}/events", headers=wrong), 401)
        # An API key goes in Authorization only, never in the query.
        key = {"token": server.api_key}
        assert_problem(await anonymous.get(f"/v1/sessions/{sid}/events", params=key), 401)
        stream_token = {"token": await api.mint_token(sid)}
        response = await anonymous.get(f"/v1/sessions/{sid}/events", params=stream_token)
        assert_problem(response, 403)
        # SSE with a listen token in the query, as EventSource must send it.
        token = await listen_token(http, sid)
        async with SseListener.open(anonymous, sid, params={"token": token}) as sse:
            await sse.until(lambda s: s.heard.hello is not None)
        used = await anonymous.get(f"/v1/sessions/{sid}/events", params={"token": token})
        assert_problem(used, 401)
    # A listen token cannot stream.
    stream = await api.connect(sid, await listen_token(http, sid))
    await stream.expect_close(4403)


async def test_unknown_and_deleted_sessions(api: Api, http: httpx.AsyncClient) -> None:
    assert_problem(await http.get(f"/v1/sessions/{UNKNOWN}/events"), 404)
    listener = await WsListener.open(api.server, UNKNOWN, read_hello=False)
    assert await listener.until_closed() == 4404
    assert_problem(await http.post(f"/v1/sessions/{UNKNOWN}/listen-tokens"), 404)

    sid = await api.new_session()
    ws = await WsListener.open(api.server, sid, audio=True)
    async with SseListener.open(http, sid) as sse:
        await sse.until(lambda s: s.heard.hello is not None)
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
        await sse.until(lambda s: s.ended)
        assert sse.heard.states == ["deleted"]
        assert [e["code"] for e in sse.errors] == ["gone"]
    assert await ws.until_closed() == 4410
    assert ws.heard.states == ["deleted"]
    assert ws.error is not None
    assert ws.error["code"] == "gone"
    assert_problem(await http.get(f"/v1/sessions/{sid}/events"), 410)
    late = await WsListener.open(api.server, sid, read_hello=False)
    assert await late.until_closed() == 4410


async def test_bad_parameters_and_controls(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    for query in ("audio=maybe", "from_seq=-1", "last_event_id=x", "from_seq=1e3"):
        response = await http.get(f"/v1/sessions/{sid}/events?{query}")
        assert_problem(response, 400)
    assert_problem(await http.get(f"/v1/sessions/{sid}/events?audio=true"), 400)
    listener = await WsListener.open(api.server, sid, from_seq=-1, audio=True, read_hello=False)
    assert await listener.until_closed() == 4400

    listener = await WsListener.open(api.server, sid)
    await listener.send_json({"type": "ping", "t": 42})
    await listener.until(lambda h: any(e.get("type") == "pong" for e in h.events))
    assert [e for e in listener.heard.events if e["type"] == "pong"] == [{"type": "pong", "t": 42}]
    await listener.send_json({"type": "subscribe"})
    assert await listener.until_closed() == 4400
    assert listener.error is not None
    assert listener.error["code"] == "bad_control"


@pytest.mark.parametrize("kind", ["ws", "sse"])
async def test_feeds_go_when_their_listeners_leave(
    api: Api, http: httpx.AsyncClient, kind: str
) -> None:
    before = await listener_counts(http)
    sids = [await api.new_session() for _ in range(3)]
    if kind == "ws":
        listeners = [await WsListener.open(api.server, sid) for sid in sids for _ in range(2)]
        assert await listener_counts(http) == (before[0] + 6, before[1] + 3)
        for listener in listeners:
            await listener.close()
    else:
        async with SseListener.open(http, sids[0]) as one, SseListener.open(http, sids[0]) as two:
            await one.until(lambda s: s.heard.hello is not None)
            await two.until(lambda s: s.heard.hello is not None)
            assert await listener_counts(http) == (before[0] + 2, before[1] + 1)
    for _ in range(100):
        if await listener_counts(http) == before:
            break
        await asyncio.sleep(0.05)
    assert await listener_counts(http) == before
