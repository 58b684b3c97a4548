"""Acked frames survive a killed server (PROTOCOL section 6), and a client resumes to complete."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from e2e.wire import Sender, api_for, frame, payload_for, stream_crc, wait_for_acks
from servers import start_server

FRAMES = 4000
SIZE = 1500


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
                task = asyncio.create_task(sender.run(todo, end_seq=FRAMES - 1))
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
            await asyncio.wait_for(sender.run(todo, end_seq=FRAMES - 1), 120)
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


async def test_sigterm_mid_stream_acks_what_is_durable_and_closes_1001(tmp_path: Path) -> None:
    with start_server(tmp_path) as server:
        async with api_for(server) as api:
            sid = await api.new_session()

            def payload(seq: int) -> bytes:
                return payload_for(sid, seq, SIZE)

            stream = await api.stream(sid)
            assert stream.hello is not None
            sender = Sender(stream, payload)
            task = asyncio.create_task(sender.run(range(FRAMES), end_seq=FRAMES - 1))
            await wait_for_acks(sender, task, 300)
            assert not task.done(), "the stream finished before SIGTERM"
            code = await asyncio.to_thread(server.stop)
            await asyncio.wait_for(task, 30)
            assert code == 0, f"server exited with {code} on SIGTERM"
            assert stream.ws.close_code == 1001, (stream.ws.close_code, sender.closed)
            assert len(sender.acked) < FRAMES, "SIGTERM came after the last frame"
            acked, sent = set(sender.acked), set(sender.sent)

        server.start()
        async with api_for(server) as api:
            stored = await api.stored_seqs(sid)
            lost = acked - stored
            assert not lost, f"acked frames lost by the shutdown: {sorted(lost)[:20]}"
            assert stored <= sent, "the server stores frames that were never sent"
            assert await api.audio_bytes(sid, allow_gaps=True) == b"".join(
                payload(seq) for seq in sorted(stored)
            )
            # The client resumes where the server says and completes the session.
            stream = await api.stream(sid)
            assert stream.hello is not None
            resumed = Sender(stream, payload)
            todo = sorted(set(range(FRAMES)) - stored)
            await asyncio.wait_for(resumed.run(todo, end_seq=FRAMES - 1), 120)
            assert resumed.complete is not None, resumed.closed
            assert resumed.complete["frames"] == FRAMES
            assert resumed.complete["stream_crc32c"] == stream_crc(
                payload(seq) for seq in range(FRAMES)
            )


async def test_a_stream_opened_while_the_server_drains_closes_1013(tmp_path: Path) -> None:
    # PROTOCOL section 7: 1013 "overloaded or draining; client reconnects with backoff".
    with start_server(tmp_path) as server:
        async with api_for(server) as api:
            busy_sid, late_sid = await api.new_session(), await api.new_session()
            late_token = await api.mint_token(late_sid)
            busy = await api.stream(busy_sid)

            async def chatter() -> None:
                # A client that is never quiet keeps its stream quiescing (at most 2 s),
                # and so the drain going, while the late client arrives.
                with contextlib.suppress(Exception):
                    for t in range(1000):
                        await busy.send_json({"type": "ping", "t": t})
                        await asyncio.sleep(0.02)

            pinger = asyncio.create_task(chatter())
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            try:
                # The drain has begun once the busy stream is granted no more credit.
                quiesced = await busy.recv_type("ack", within=15)
                assert quiesced["window_bytes"] == 0, quiesced
                late = await api.connect(late_sid, late_token)
                messages = await late.expect_close(1013)
                assert [m.get("code") for m in messages if m["type"] == "error"] == ["draining"]
                await busy.expect_close(1001, within=15)
            finally:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger
            assert await stopping == 0
