"""A scripted stand-in for voxgate's WebSocket stream, for client tests.

It speaks PROTOCOL version 1 honestly by default (stores frames, acks them,
sends ``complete``) and can be told to misbehave: abort a connection after
some frames, lose frames before they are acked, nack frames once, close with
a code, shrink the window, hold acks back, or lie in ``complete``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from voxgate import _native
from voxgate.ranges import to_ranges
from voxgate.wire import SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX


@dataclass
class Conn:
    """What one connection saw."""

    index: int
    token: str | None = None
    token_via: str | None = None
    received: list[int] = field(default_factory=list)  # seqs in arrival order
    message_sizes: list[int] = field(default_factory=list)  # frames per binary message
    max_unacked_bytes: int = 0  # highest payload bytes received and not yet acked


@dataclass
class FakeVoxgate:
    """Knobs are plain attributes; set them before the client connects."""

    session_id: str = "ses_test"
    window_bytes: int = 1 << 20
    max_frame_bytes: int = 1 << 18
    max_message_bytes: int = 1 << 20

    # conn index -> abort the TCP connection (no close frame) once this many
    # frames arrived on it; frames of that last message are stored, not acked.
    drop_after: dict[int, int] = field(default_factory=dict)
    # Seqs that arrive on connection 0 and are "lost": neither stored nor acked.
    lose_on_first: set[int] = field(default_factory=set)
    # seq -> reason: the first arrival of that seq is nacked with the reason.
    nack_once: dict[int, str] = field(default_factory=dict)
    # conn index -> (close code, error code): close right after the upgrade.
    close_on_connect: dict[int, tuple[int, str]] = field(default_factory=dict)
    # Hold acks this many seconds (to test the window on the client side).
    ack_delay_s: float = 0.0
    # When set, acks advertise this window instead of window_bytes.
    ack_window: int | None = None
    complete_crc_override: int | None = None

    stored: dict[int, bytes] = field(default_factory=dict)
    end_seq: int | None = None
    conns: list[Conn] = field(default_factory=list)
    port: int = 0
    current: ServerConnection | None = None

    async def grant(self, window: int) -> None:
        """Send an ack with empty ranges and a new window, as a server ending pressure does."""
        self.ack_window = window
        assert self.current is not None
        ack = {"type": "ack", "acked": [], "duplicate": [], "window_bytes": window}
        await self.current.send(orjson.dumps(ack).decode())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stored_stream(self) -> bytes:
        return b"".join(self.stored[seq] for seq in sorted(self.stored))

    def hello(self) -> dict[str, Any]:
        next_seq = max(self.stored) + 1 if self.stored else 0
        gaps = [seq for seq in range(next_seq) if seq not in self.stored]
        return {
            "type": "hello",
            "protocol": 1,
            "session_id": self.session_id,
            "next_seq": next_seq,
            "missing": to_ranges(gaps),
            "window_bytes": self.window_bytes,
            "max_frame_bytes": self.max_frame_bytes,
            "max_message_bytes": self.max_message_bytes,
        }

    def complete_message(self) -> dict[str, Any] | None:
        if self.end_seq is None or any(s not in self.stored for s in range(self.end_seq + 1)):
            return None
        crc = _native.crc32c(self.stored_stream())
        if self.complete_crc_override is not None:
            crc = self.complete_crc_override
        return {
            "type": "complete",
            "last_seq": self.end_seq,
            "frames": self.end_seq + 1,
            "bytes": len(self.stored_stream()),
            "stream_crc32c": crc,
        }

    async def handler(self, ws: ServerConnection) -> None:
        conn = Conn(index=len(self.conns))
        self.conns.append(conn)
        request = ws.request
        assert request is not None
        auth = request.headers.get("Authorization")
        query = parse_qs(urlsplit(request.path).query)
        protocols = request.headers.get("Sec-WebSocket-Protocol", "")
        if auth:
            conn.token, conn.token_via = auth.removeprefix("Bearer "), "header"
        elif "token" in query:
            conn.token, conn.token_via = query["token"][0], "query"
        elif TOKEN_SUBPROTOCOL_PREFIX in protocols:
            token = protocols.split(TOKEN_SUBPROTOCOL_PREFIX, 1)[1].split(",")[0].strip()
            conn.token, conn.token_via = token, "subprotocol"
        if conn.index in self.close_on_connect:
            code, error = self.close_on_connect[conn.index]
            await ws.send(orjson.dumps({"type": "error", "code": error, "message": error}).decode())
            await ws.close(code, error)
            return
        self.current = ws
        await ws.send(orjson.dumps(self.hello()).decode())
        complete = self.complete_message()
        if complete is not None:
            await ws.send(orjson.dumps(complete).decode())
        unacked = 0
        try:
            async for message in ws:
                if isinstance(message, str):
                    parsed = orjson.loads(message)
                    if parsed.get("type") == "ping":
                        await ws.send(orjson.dumps({"type": "pong", "t": parsed["t"]}).decode())
                    continue
                frames = _native.decode(message, self.max_frame_bytes)
                conn.message_sizes.append(len(frames))
                acked: list[int] = []
                duplicate: list[int] = []
                nacks: list[tuple[int, str]] = []
                for seq, flags, _pts, offset, length, _crc, verdict in frames:
                    conn.received.append(seq)
                    payload = bytes(message[offset : offset + length])
                    unacked += length
                    conn.max_unacked_bytes = max(conn.max_unacked_bytes, unacked)
                    reason = self.nack_once.pop(seq, None)
                    if verdict == _native.FRAME_BAD_CRC:
                        reason = "checksum"
                    if reason is not None:
                        nacks.append((seq, reason))
                        unacked -= length
                        continue
                    if conn.index == 0 and seq in self.lose_on_first:
                        continue  # lost before durable: never acked
                    if seq in self.stored:
                        if self.stored[seq] == payload:
                            duplicate.append(seq)
                        else:
                            nacks.append((seq, "conflict"))
                            unacked -= length
                            continue
                    else:
                        self.stored[seq] = payload
                        acked.append(seq)
                    if flags & _native.FLAG_END:
                        self.end_seq = seq
                limit = self.drop_after.get(conn.index)
                if limit is not None and len(conn.received) >= limit:
                    assert ws.transport is not None
                    ws.transport.abort()
                    return
                for seq, reason in nacks:
                    nack = {"type": "nack", "ranges": [[seq, seq]], "reason": reason}
                    await ws.send(orjson.dumps(nack).decode())
                if acked or duplicate:
                    if self.ack_delay_s:
                        await asyncio.sleep(self.ack_delay_s)
                    for seq in acked + duplicate:
                        unacked -= len(self.stored[seq])
                    window = self.window_bytes if self.ack_window is None else self.ack_window
                    ack = {
                        "type": "ack",
                        "acked": to_ranges(acked),
                        "duplicate": to_ranges(duplicate),
                        "window_bytes": window,
                    }
                    await ws.send(orjson.dumps(ack).decode())
                complete = self.complete_message()
                if complete is not None and (acked or duplicate):
                    await ws.send(orjson.dumps(complete).decode())
        except ConnectionClosed:
            pass


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    # Like voxgate: answer voxgate.v1 when offered, never the token.
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


@contextlib.asynccontextmanager
async def running(fake: FakeVoxgate) -> AsyncIterator[FakeVoxgate]:
    """Serve ``fake`` on a free 127.0.0.1 port for the duration of the block."""
    async with serve(
        fake.handler, "127.0.0.1", 0, select_subprotocol=_select_subprotocol
    ) as server:
        fake.port = next(iter(server.sockets)).getsockname()[1]
        yield fake
