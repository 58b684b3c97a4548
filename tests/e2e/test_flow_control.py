"""Credit window, idle timeout, Origin allow-list and configured limits, on a tuned server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from e2e.wire import Api, assert_problem, frame, payload_for, subset
from servers import Server, start_server

MAX_FRAME = 4096
WINDOW = 4 * MAX_FRAME
MAX_MESSAGE = 64 * 1024
IDLE_S = 1.5
ALLOWED_ORIGIN = "http://allowed.test"
MAX_TTL = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_MAX_FRAME_BYTES": str(MAX_FRAME),
        "VOXGATE_WINDOW_BYTES": str(WINDOW),
        "VOXGATE_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
        "VOXGATE_IDLE_TIMEOUT_S": str(IDLE_S),
        "VOXGATE_CORS_ORIGINS": ALLOWED_ORIGIN,
        "VOXGATE_TOKEN_MAX_TTL_S": str(MAX_TTL),
    }
    with start_server(tmp_path_factory.mktemp("tuned"), env=env) as running:
        yield running


async def test_hello_advertises_the_configured_limits(api: Api) -> None:
    stream = await api.stream(await api.new_session())
    assert stream.hello is not None
    expected = {
        "window_bytes": WINDOW,
        "max_frame_bytes": MAX_FRAME,
        "max_message_bytes": MAX_MESSAGE,
    }
    assert subset(stream.hello, expected) == expected


async def test_window_overrun_is_nacked_and_the_admitted_part_is_kept(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, MAX_FRAME) for seq in range(8)}
    stream = await api.stream(sid)
    # Twice the window in one go, before any ack could come back.
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(8)))
    answers = await stream.collect(range(8))
    assert answers.summary() == {"acked": [[0, 3]], "duplicate": [], "window": [[4, 7]]}
    assert all(window == WINDOW for window in answers.windows), answers.windows

    expected = {"next_seq": 4, "missing": [], "frames": 4, "bytes": 4 * MAX_FRAME}
    assert subset(await api.missing(sid), expected) == expected

    # Credit is back once acked: the refused frames go through now.
    await stream.send(*(frame(seq, payloads[seq], end=seq == 7) for seq in range(4, 8)))
    assert (await stream.collect(range(4, 8))).acked == {4, 5, 6, 7}
    assert await api.audio_bytes(sid) == b"".join(payloads[seq] for seq in range(8))


async def test_window_counts_across_messages(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, MAX_FRAME // 2) for seq in range(12)}
    stream = await api.stream(sid)
    # Twelve half-frame messages sent without waiting: at most a window's worth
    # may be admitted before acks come back; everything gets an answer, the
    # refusals are "window", and nothing admitted is lost.
    for seq in range(12):
        await stream.send(frame(seq, payloads[seq]))
    answers = await stream.collect(range(12))
    assert set(answers.nacked) <= {"window"}, answers.summary()
    assert answers.acked | answers.nacked.get("window", set()) == set(range(12))
    assert answers.acked >= set(range(8)), "frames within the first window must be admitted"
    assert await api.stored_seqs(sid) == answers.acked


async def test_too_large_uses_the_configured_max_frame_bytes(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.stream(sid)
    await stream.send(frame(0, payload_for(sid, 0, MAX_FRAME + 1)), frame(1, payload_for(sid, 1)))
    answers = await stream.collect([0, 1])
    assert answers.summary() == {"acked": [[1, 1]], "duplicate": [], "too_large": [[0, 0]]}


async def test_message_above_the_configured_max_closes_1009(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.stream(sid)
    await stream.send(b"\x00" * (MAX_MESSAGE + 1))
    await stream.expect_close(1009)


async def test_idle_stream_closes_4408(api: Api) -> None:
    stream = await api.stream(await api.new_session())
    messages = await stream.expect_close(4408, within=IDLE_S + 5)
    assert messages[-1]["type"] == "error"


async def test_pings_keep_a_stream_open(api: Api) -> None:
    stream = await api.stream(await api.new_session())
    for t in range(6):
        await asyncio.sleep(IDLE_S / 3)
        await stream.send_json({"type": "ping", "t": t})
        assert (await stream.recv_type("pong"))["t"] == t


async def test_origin_not_allowed_closes_4403(api: Api) -> None:
    sid = await api.new_session()
    refused = await api.connect(sid, origin="http://evil.test")
    await refused.expect_close(4403)
    allowed = await api.connect(sid, origin=ALLOWED_ORIGIN)
    await allowed.read_hello()
    await allowed.close()
    # No Origin header (not a browser): allowed.
    plain = await api.connect(sid)
    await plain.read_hello()


async def test_token_ttl_above_the_configured_maximum_is_422(api: Api) -> None:
    sid = await api.new_session()
    assert_problem(await api.mint_token_response(sid, ttl_s=MAX_TTL + 1), 422)
    response = await api.mint_token_response(sid, ttl_s=MAX_TTL)
    assert response.status_code == 201, response.text
