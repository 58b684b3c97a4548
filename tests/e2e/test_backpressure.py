"""PROTOCOL section 4 under real load: when the bytes in flight across all streams reach the
high watermark, acks grant no new credit (down to 0) until they fall to the low watermark;
then the held streams get an ack with empty ranges and their full window back.

The load is made real by holding the embedded store's write lock from the test, so that
commits wait for it exactly as they would behind a slow disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from e2e.wire import Api, Stream, frame, payload_for
from servers import Server, start_server
from voxgate.store.sqlite import DB_NAME

MAX_FRAME = 1024
WINDOW = 8 * MAX_FRAME
HIGH = 4 * MAX_FRAME
LOW = 512


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_MAX_FRAME_BYTES": str(MAX_FRAME),
        "VOXGATE_WINDOW_BYTES": str(WINDOW),
        "VOXGATE_GLOBAL_HIGH_BYTES": str(HIGH),
        "VOXGATE_GLOBAL_LOW_BYTES": str(LOW),
        # One frame per commit: credit comes back frame by frame, in the order sent.
        "VOXGATE_COMMIT_MAX_FRAMES": "1",
    }
    with start_server(tmp_path_factory.mktemp("backpressure"), env=env) as running:
        yield running


async def received(stream: Stream, t: int) -> None:
    """Return once the server has read everything sent before: its pong for ``t`` came."""
    await stream.send_json({"type": "ping", "t": t})
    assert (await stream.recv_type("pong"))["t"] == t


async def test_pressure_withholds_credit_until_the_low_watermark(api: Api, server: Server) -> None:
    held_sid, busy_sid = await api.new_session(), await api.new_session()
    held, busy = await api.stream(held_sid), await api.stream(busy_sid)
    assert held.hello is not None
    assert busy.hello is not None
    assert held.hello["window_bytes"] == busy.hello["window_bytes"] == WINDOW

    held_payload = payload_for(held_sid, 0, MAX_FRAME)
    busy_payloads = {seq: payload_for(busy_sid, seq, MAX_FRAME) for seq in range(6)}
    lock = sqlite3.connect(server.data_dir / DB_NAME, isolation_level=None, timeout=30)
    try:
        lock.execute("BEGIN IMMEDIATE")  # commits wait: bytes stay in flight
        # One frame of the held stream first (committed first), then six of the busy one:
        # 7 KiB in flight, above the high watermark, each stream within its own window.
        await held.send(frame(0, held_payload))
        await received(held, 1)
        await busy.send(*(frame(seq, busy_payloads[seq]) for seq in range(6)))
        await received(busy, 2)
    finally:
        lock.rollback()
        lock.close()

    # The held stream's frame commits while the busy one's 6 KiB are still in flight:
    # acked, and no new credit.
    first = await held.recv_type("ack")
    assert first == {"type": "ack", "acked": [[0, 0]], "duplicate": [], "window_bytes": 0}
    # Once the busy stream's commits bring the bytes in flight down to the low watermark,
    # the held stream gets its window back in an ack that acks nothing.
    relieved = await held.recv_type("ack")
    assert relieved == {"type": "ack", "acked": [], "duplicate": [], "window_bytes": WINDOW}

    answers = await busy.collect(range(6))
    assert answers.acked == set(range(6)), answers.summary()
    assert answers.windows[-1] == WINDOW, answers.windows

    # Credit back: both streams carry on.
    await held.send(frame(1, payload_for(held_sid, 1, MAX_FRAME)))
    assert (await held.collect([1])).acked == {1}
    assert await api.stored_seqs(held_sid) == {0, 1}
    assert await api.audio_bytes(busy_sid) == b"".join(busy_payloads[s] for s in range(6))
