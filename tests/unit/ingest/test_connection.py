"""One StreamConnection, in process: built from a writer, a ledger, a registry and its
limits over a real embedded store, with the socket's ASGI ``receive`` and ``send`` played
by the test as a client would drive them (the socket is the boundary, not what is tested).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from voxgate._native import FLAG_END, Ledger, crc32c, crc32c_combine, encode_frame
from voxgate.ingest.stream import StreamConnection, StreamLimits, StreamRegistry
from voxgate.ingest.writer import Writer
from voxgate.store.sqlite import SqliteStore

LIMITS = StreamLimits(
    max_message_bytes=64 * 1024,
    max_frame_bytes=4096,
    max_seq_ahead=1000,
    max_control_bytes=4096,
    idle_timeout_s=5.0,
    send_timeout_s=0.5,
)


@dataclass
class Client:
    """The far end of one socket: what it sends, what it got, and whether it reads."""

    inbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    sent: list[dict[str, Any]] = field(default_factory=list)
    reading: asyncio.Event = field(default_factory=asyncio.Event)
    got: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.reading.set()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, event: dict[str, Any]) -> None:
        await self.reading.wait()  # a client that does not read holds every send
        self.sent.append(event)
        self.got.set()

    def binary(self, data: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": data, "text": None})

    def text(self, data: str) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": None, "text": data})

    def messages(self) -> list[dict[str, Any]]:
        return [orjson.loads(e["text"]) for e in self.sent if e["type"] == "websocket.send"]

    def close_code(self) -> int | None:
        closes = [e["code"] for e in self.sent if e["type"] == "websocket.close"]
        return closes[0] if closes else None

    async def wait_for(self, kind: str, within: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for message in self.messages():
                    if message["type"] == kind:
                        return message
                self.got.clear()
                await self.got.wait()


@dataclass
class Parts:
    store: SqliteStore
    writer: Writer
    ledger: Ledger
    registry: StreamRegistry


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    store = SqliteStore(tmp_path, durability="process")
    await store.open()
    writer = Writer(store, max_frames=1024, max_bytes=1 << 20)
    await writer.start()
    try:
        registry = StreamRegistry()
        registry.start(store, 0.05)
        yield Parts(store, writer, Ledger(64 * 1024, 1 << 20, 1 << 19, 1 << 21), registry)
        await registry.close_all(1.0)
    finally:
        await writer.stop()
        await store.close()


async def open_stream(
    parts: Parts, client: Client, session_id: str | None = None
) -> tuple[str, asyncio.Task[None]]:
    """A stream into ``session_id`` (a new session if None), claimed as a reconnect would."""
    if session_id is None:
        session = await parts.store.create_session(
            codec="pcm_s16le", sample_rate=16000, channels=1, metadata={}
        )
        session_id = session.id
    conn = StreamConnection(
        session_id=session_id,
        generation=await parts.store.claim_stream(session_id),
        receive=client.receive,  # type: ignore[arg-type]
        send=client.send,  # type: ignore[arg-type]
        writer=parts.writer,
        ledger=parts.ledger,
        registry=parts.registry,
        limits=LIMITS,
        next_seq=0,
        end_seq=None,
    )
    parts.registry.register(conn)
    return session_id, asyncio.create_task(conn.run([]))


async def test_frames_are_acked_once_stored_and_end_completes_with_the_stream_crc(
    parts: Parts,
) -> None:
    client = Client()
    sid, task = await open_stream(parts, client)
    hello = await client.wait_for("hello")
    assert hello["next_seq"] == 0
    assert hello["window_bytes"] == 64 * 1024
    payloads = [bytes([seq]) * (100 + seq) for seq in range(12)]
    # Three messages: 1 frame, 10 frames, and END alone.
    client.binary(encode_frame(0, payloads[0]))
    client.binary(b"".join(encode_frame(seq, payloads[seq]) for seq in range(1, 11)))
    client.binary(encode_frame(11, payloads[11], 0, True))
    complete = await client.wait_for("complete")
    expected = 0
    for payload in payloads:
        expected = crc32c_combine(expected, crc32c(payload), len(payload))
    assert complete == {
        "type": "complete",
        "last_seq": 11,
        "frames": 12,
        "bytes": sum(map(len, payloads)),
        "stream_crc32c": expected,
    }
    acked = [r for m in client.messages() if m["type"] == "ack" for r in m["acked"]]
    assert sorted(seq for first, last in acked for seq in range(first, last + 1)) == list(range(12))
    stored = [p async for _, p in parts.store.read_payloads(sid)]
    assert stored == payloads
    index = await parts.store.frame_index(sid)
    assert index[-1].flags == FLAG_END
    client.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, 5)
    assert len(parts.registry) == 0
    assert parts.ledger.stats().inflight_bytes == 0


async def test_refused_frames_get_nacks_and_nothing_of_them_is_stored(parts: Parts) -> None:
    client = Client()
    sid, task = await open_stream(parts, client)
    await client.wait_for("hello")
    bad = bytearray(encode_frame(1, b"flipped"))
    bad[-1] ^= 0xFF
    big = encode_frame(2, b"x" * 5000)  # above max_frame_bytes
    far = encode_frame(5000, b"far")  # past next_seq + max_seq_ahead
    client.binary(encode_frame(0, b"ok") + bytes(bad) + big + far)
    nacks: dict[str, list[list[int]]] = {}
    async with asyncio.timeout(10):
        while len(nacks) < 3:
            nacks = {m["reason"]: m["ranges"] for m in client.messages() if m["type"] == "nack"}
            client.got.clear()
            if len(nacks) < 3:
                await client.got.wait()
    assert nacks == {"checksum": [[1, 1]], "too_large": [[2, 2]], "sequence": [[5000, 5000]]}
    await client.wait_for("ack")
    assert [seq for seq, _ in [x async for x in parts.store.read_payloads(sid)]] == [0]
    client.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(task, 5)


async def test_a_large_control_message_closes_1009(parts: Parts) -> None:
    client = Client()
    _, task = await open_stream(parts, client)
    await client.wait_for("hello")
    client.text(orjson.dumps({"type": "ping", "t": "x" * 5000}).decode())
    await asyncio.wait_for(task, 5)
    assert client.close_code() == 1009
    assert not [m for m in client.messages() if m["type"] == "pong"]


async def test_the_control_limit_counts_bytes_not_characters(parts: Parts) -> None:
    client = Client()
    _, task = await open_stream(parts, client)
    await client.wait_for("hello")
    # 1,500 characters, 3,000 bytes: within the limit.
    client.text(orjson.dumps({"type": "ping", "t": "é" * 1500}).decode())
    assert (await client.wait_for("pong"))["t"] == "é" * 1500
    # 3,000 characters, 6,000 bytes: above it.
    client.text(orjson.dumps({"type": "ping", "t": "é" * 3000}).decode())
    await asyncio.wait_for(task, 5)
    assert client.close_code() == 1009


async def test_a_superseded_stream_whose_client_reads_nothing_is_let_go(parts: Parts) -> None:
    stuck = Client()
    sid, stuck_task = await open_stream(parts, stuck)
    await stuck.wait_for("hello")
    stuck.reading.clear()
    # A newer connection takes the session: the old one must close, but its client
    # reads nothing, so its closing sends wait until the sweep lets it go.
    newer = Client()
    _, newer_task = await open_stream(parts, newer, sid)
    await newer.wait_for("hello")
    await asyncio.wait_for(stuck_task, LIMITS.send_timeout_s + 5)
    assert parts.ledger.stats().streams == 1  # only the newer stream's account is open
    newer.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(newer_task, 5)


async def test_a_client_that_stops_reading_is_let_go_with_bounded_pongs(parts: Parts) -> None:
    client = Client()
    _, task = await open_stream(parts, client)
    await client.wait_for("hello")
    client.reading.clear()  # from now on every send waits for the client
    for t in range(10_000):
        client.text(orjson.dumps({"type": "ping", "t": t}).decode())
    # The connection gives up within its send timeout, however many pings wait behind.
    await asyncio.wait_for(task, LIMITS.send_timeout_s + 5)
    client.reading.set()
    assert len(parts.registry) == 0
    assert parts.ledger.stats().streams == 0
