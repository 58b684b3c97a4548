"""Acked frames survive a killed server (PROTOCOL section 6), and a client resumes to complete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from e2e.wire import Api, Sender, frame, payload_for, stream_crc
from servers import Server, start_server

FRAMES = 4000
SIZE = 1500


@asynccontextmanager
async def api_for(server: Server) -> AsyncIterator[Api]:
    """A fresh client (old keep-alive connections die with the server)."""
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30.0,
    ) as client:
        api = Api(server, client)
        try:
            yield api
        finally:
            await api.close_streams()


async def wait_for_acks(sender: Sender, task: asyncio.Task[None], count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(sender.acked) < count and not task.done():
        assert loop.time() < deadline, f"only {len(sender.acked)} acks in 30 s"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("durability", ["fsync", "process"])
async def test_acked_frames_survive_kill_9_and_the_stream_completes(
    tmp_path: Path, durability: str
) -> None:
    # Both levels survive a killed process (PROTOCOL section 6).
    with start_server(tmp_path, env={"VOXGATE_DURABILITY": durability}) as server:
        async with api_for(server) as api:
            sid = await api.new_session()

        def payload(seq: int) -> bytes:
            return payload_for(sid, seq, SIZE)

        acked: set[int] = set()
        sent: set[int] = set()
        for round_ in range(2):
            async with api_for(server) as api:
                stream = await api.stream(sid)
                assert stream.hello is not None
                report = await api.missing(sid)
                assert stream.hello["next_seq"] == report["next_seq"]
                assert stream.hello["missing"] == report["missing"]
                todo = sorted(set(range(FRAMES)) - await api.stored_seqs(sid))
                sender = Sender(stream, payload)
                task = asyncio.create_task(
                    sender.run(todo, end_seq=FRAMES - 1, window=stream.hello["window_bytes"])
                )
                # Kill while frames are in flight.
                await wait_for_acks(sender, task, 300)
                assert not task.done(), "the stream finished before the kill"
                server.kill()
                await asyncio.wait_for(task, 30)
                acked |= sender.acked
                sent |= sender.sent

            server.start()
            async with api_for(server) as api:
                stored = await api.stored_seqs(sid)
                lost = acked - stored
                assert not lost, (
                    f"round {round_}: acked frames lost after kill -9: {sorted(lost)[:20]}"
                )
                assert stored <= sent, "the server stores frames that were never sent"
                audio = await api.audio_bytes(sid, allow_gaps=True)
                assert audio == b"".join(payload(seq) for seq in sorted(stored)), (
                    "stored bytes differ from what was sent"
                )

        # A resuming client finishes the stream.
        async with api_for(server) as api:
            stream = await api.stream(sid)
            assert stream.hello is not None
            todo = sorted(set(range(FRAMES)) - await api.stored_seqs(sid))
            sender = Sender(stream, payload)
            await asyncio.wait_for(
                sender.run(todo, end_seq=FRAMES - 1, window=stream.hello["window_bytes"]), 120
            )
            assert sender.closed is None, sender.closed
            assert not sender.nacked, sender.nacked
            assert sender.complete is not None
            assert sender.complete["frames"] == FRAMES
            assert sender.complete["bytes"] == FRAMES * SIZE
            expected_crc = stream_crc(payload(seq) for seq in range(FRAMES))
            assert sender.complete["stream_crc32c"] == expected_crc
            report = await api.missing(sid)
            assert (report["frames"], report["complete"]) == (FRAMES, True)
            assert await api.audio_bytes(sid) == b"".join(payload(s) for s in range(FRAMES))


async def test_shutdown_closes_streams_1001_and_keeps_acked_frames(tmp_path: Path) -> None:
    with start_server(tmp_path) as server:
        async with api_for(server) as api:
            sid = await api.new_session()
            payloads = {seq: payload_for(sid, seq, 500) for seq in range(20)}
            stream = await api.stream(sid)
            await stream.send(*(frame(seq, payloads[seq]) for seq in range(20)))
            assert (await stream.collect(range(20))).acked == set(range(20))
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            await stream.expect_close(1001, within=15)
            code = await stopping
            assert code == 0, f"server exited with {code} on SIGTERM"

        server.start()
        async with api_for(server) as api:
            report = await api.missing(sid)
            assert (report["next_seq"], report["frames"], report["missing"]) == (20, 20, [])
            assert await api.audio_bytes(sid) == b"".join(payloads[seq] for seq in range(20))
