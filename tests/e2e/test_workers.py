"""Two worker processes over one data dir (``voxgate serve --workers 2``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from e2e.wire import Api, Sender, frame, payload_for, stream_crc
from servers import Server, start_server

ATTEMPTS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(tmp_path_factory.mktemp("workers"), workers=2) as running:
        yield running


async def stream_whole_session(api: Api, frames: int, size: int) -> tuple[str, Sender]:
    sid = await api.new_session()
    stream = await api.stream(sid)
    assert stream.hello is not None
    sender = Sender(stream, lambda seq: payload_for(sid, seq, size))
    await sender.run(range(frames), end_seq=frames - 1)
    return sid, sender


async def test_two_sessions_stream_concurrently_to_completion(api: Api) -> None:
    frames, size = 400, 1000
    results = await asyncio.wait_for(
        asyncio.gather(*(stream_whole_session(api, frames, size) for _ in range(2))), 120
    )
    for sid, sender in results:
        assert sender.closed is None, sender.closed
        assert not sender.nacked, sender.nacked
        assert sender.acked == set(range(frames))
        assert sender.complete is not None
        payloads = [payload_for(sid, seq, size) for seq in range(frames)]
        assert sender.complete["stream_crc32c"] == stream_crc(payloads)
        assert sender.complete["frames"] == frames
        assert await api.audio_bytes(sid) == b"".join(payloads)


async def test_superseding_connection_wins_on_either_worker(api: Api) -> None:
    for attempt in range(ATTEMPTS):
        sid = await api.new_session()
        first = await api.stream(sid)
        await first.send(frame(0, payload_for(sid, 0)))
        assert (await first.collect([0])).acked == {0}, f"attempt {attempt}"

        second = await api.stream(sid)
        assert second.hello is not None
        assert second.hello["next_seq"] == 1
        messages = await first.expect_close(4409, within=10)
        assert messages[-1]["code"] == "superseded", messages
        await second.send(frame(1, payload_for(sid, 1)))
        assert (await second.collect([1])).acked == {1}, f"attempt {attempt}"
        await second.close()


async def test_frames_are_stored_once_whichever_worker_gets_them(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 300) for seq in range(3)}
    first = await api.stream(sid)
    await first.send(*(frame(seq, payloads[seq]) for seq in range(3)))
    assert (await first.collect(range(3))).acked == {0, 1, 2}
    await first.close()
    for attempt in range(ATTEMPTS):
        stream = await api.stream(sid)
        await stream.send(*(frame(seq, payloads[seq]) for seq in range(3)))
        await stream.send(frame(1, payload_for("other", 1, 300)))
        answers = await stream.collect(range(3))
        assert answers.duplicate == {0, 1, 2}, f"attempt {attempt}: {answers.summary()}"
        conflict = await stream.collect([1])
        assert conflict.verdict(1) == "conflict", f"attempt {attempt}: {conflict.summary()}"
        await stream.close()
    report = await api.missing(sid)
    assert (report["frames"], report["bytes"]) == (3, 900)


async def test_a_token_is_single_use_across_workers(api: Api) -> None:
    for _ in range(ATTEMPTS):
        sid = await api.new_session()
        token = await api.mint_token(sid)
        first = await api.connect(sid, token)
        await first.read_hello()
        second = await api.connect(sid, token)
        await second.expect_close(4401)
        await first.close()
