"""Slow listeners while ingest runs at full speed: the slow-consumer policy of docs/api.md.

The ingest rates with and without slow listeners are printed (``pytest -s``),
never asserted. What is asserted is what a user relies on: ingest completes;
a slow audio listener is closed with a resume point that loses nothing; a slow
event listener gets the final state, and every progress event it did not get
is accounted for as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from e2e.listening import WsListener
from e2e.wire import Api, Sender, payload_for, stream_crc
from servers import Server, start_server

FRAMES = 8000
FRAME_BYTES = 1600
MAX_LAG_FRAMES = 200
STALL_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_DURABILITY": "process",
        "VOXGATE_LISTEN_MAX_LAG_FRAMES": str(MAX_LAG_FRAMES),
    }
    with start_server(tmp_path_factory.mktemp("slow"), env=env) as running:
        yield running


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No lag limit to speak of: only the stall timeout can end a listener."""
    env = {
        "VOXGATE_DURABILITY": "process",
        "VOXGATE_LISTEN_MAX_LAG_FRAMES": "1000000",
        "VOXGATE_LISTEN_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S),
    }
    with start_server(tmp_path_factory.mktemp("patient"), env=env) as running:
        yield running


async def timed_ingest(api: Api, session_id: str) -> tuple[float, dict[int, bytes]]:
    """Stream FRAMES frames as fast as the credit allows; (frames per second, payloads)."""
    payloads = {seq: payload_for(session_id, seq, FRAME_BYTES) for seq in range(FRAMES)}
    stream = await api.stream(session_id)
    assert stream.hello is not None
    sender = Sender(stream, payloads.__getitem__, batch=20)
    started = time.perf_counter()
    await sender.run(range(FRAMES), FRAMES - 1)
    elapsed = time.perf_counter() - started
    assert sender.closed is None, sender.closed
    assert sender.acked == set(range(FRAMES)), "ingest completed"
    assert sender.complete is not None
    assert sender.complete["stream_crc32c"] == stream_crc(payloads[s] for s in range(FRAMES))
    return FRAMES / elapsed, payloads


async def read_slowly(listener: WsListener, fast: asyncio.Event, delay: float) -> None:
    """Read one message per ``delay`` until ``fast`` is set, then as fast as possible."""
    while await listener.recv(within=60):
        if not fast.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fast.wait(), delay)


async def test_slow_listeners_do_not_hold_up_ingest(api: Api, server: Server) -> None:
    baseline, _ = await timed_ingest(api, await api.new_session())

    sid = await api.new_session()
    prompt = await WsListener.open(server, sid)  # keeps up: sees every progress event
    slow_events = await WsListener.open(server, sid, max_queue=1, rcvbuf=4096)
    slow_audio = await WsListener.open(server, sid, audio=True, max_queue=1, rcvbuf=4096)
    fast = asyncio.Event()
    readers = [
        asyncio.create_task(read_slowly(prompt, fast, 0)),
        asyncio.create_task(read_slowly(slow_events, fast, 0.05)),
        asyncio.create_task(read_slowly(slow_audio, fast, 0.1)),
    ]
    try:
        with_listeners, payloads = await timed_ingest(api, sid)
        audio_heard_during_ingest = len(slow_audio.heard.frames)
        fast.set()
        await asyncio.wait_for(readers[2], 60)  # the slow audio listener gets closed
        for task in readers[:2]:
            task.cancel()  # cancelling a websockets recv loses nothing
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for listener in (prompt, slow_events):
            await listener.until(lambda h: "complete" in h.states, within=60)
    finally:
        fast.set()
        for task in readers:
            task.cancel()
        for listener in (prompt, slow_events, slow_audio):
            await listener.close()
    print(
        f"\ningest of {FRAMES} x {FRAME_BYTES} B frames: {baseline:,.0f} frames/s alone, "
        f"{with_listeners:,.0f} frames/s with 3 listeners ({with_listeners / baseline:.2f}x); "
        f"slow audio listener had {audio_heard_during_ingest} frames when ingest ended"
    )

    # The slow audio listener was closed with a resume point: the next seq it never got.
    assert slow_audio.close_code == 4429, (slow_audio.close_code, slow_audio.error)
    assert slow_audio.error is not None
    assert slow_audio.error["code"] == "slow_consumer"
    resume = slow_audio.error["resume"]
    assert resume["from_seq"] == slow_audio.heard.next_audio
    assert f"from_seq={resume['from_seq']}" in slow_audio.error["message"]
    assert resume["from_seq"] < FRAMES
    resumed = await WsListener.open(
        server,
        sid,
        audio=True,
        from_seq=resume["from_seq"],
        last_event_id=resume["last_event_id"],
    )
    await resumed.until(lambda h: h.next_audio == FRAMES)
    await resumed.close()
    frames = slow_audio.heard.frames + resumed.heard.frames
    assert [(seq, payload) for seq, _, _, payload in frames] == sorted(payloads.items())

    # The slow event listener has the final state; what it missed it was told it missed.
    final = slow_events.heard.latest()
    assert (final["next_seq"], final["frames"], final["missing"]) == (FRAMES, FRAMES, [])
    assert final["complete"] is True

    def dispatched(listener: WsListener) -> int:
        progress = listener.heard.progress
        return len(progress) + sum(int(event.get("dropped", 0)) for event in progress)

    dropped = dispatched(slow_events) - len(slow_events.heard.progress)
    print(
        f"progress events: {dispatched(prompt)} published; the slow event listener got "
        f"{len(slow_events.heard.progress)} and was told {dropped} were dropped"
    )
    assert dispatched(slow_events) == dispatched(prompt)


async def test_a_listener_that_stops_reading_is_dropped(patient_server: Server) -> None:
    server = patient_server
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
        api = Api(server, http)
        try:
            await stall_one_listener(api, server)
        finally:
            await api.close_streams()


async def stall_one_listener(api: Api, server: Server) -> None:
    sid = await api.new_session()
    stuck = await WsListener.open(server, sid, audio=True, max_queue=1, rcvbuf=4096)
    _, payloads = await timed_ingest(api, sid)  # ingest completes all the same
    # The server's sends to it stop moving; after the stall timeout it lets go.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * STALL_TIMEOUT_S
    while loop.time() < deadline:
        stats = (await api.http.get("/v1/stats")).json()["fanout"]
        if stats["listeners"] == 0:
            break
        await asyncio.sleep(0.2)
    assert (stats["listeners"], stats["feeds"]) == (0, 0)
    # Reading on, it gets what it was sent, in order, then the end of the connection:
    # the error and close 4429 when they fitted in before the server let go, else 1006.
    code = await stuck.until_closed(within=60)
    assert code in (4429, 1006), code
    if code == 4429:
        assert stuck.error is not None
        assert stuck.error["code"] == "stalled"
        assert stuck.error["resume"]["from_seq"] == stuck.heard.next_audio
    assert 0 < len(stuck.heard.frames) < FRAMES
    frames = [(seq, payload) for seq, _, _, payload in stuck.heard.frames]
    assert frames == sorted(payloads.items())[: len(frames)]
