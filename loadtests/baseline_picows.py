"""The ceiling of Python WebSockets here: a raw picows server that reads frame headers and acks.

No framework, no ASGI, no CRC, no storage: for each binary message it walks the
frame headers (seq and length, nothing checked) and answers with an ``ack`` of
the same JSON shape as voxgate, built with orjson. ``hello`` advertises the
same window. Listens on TCP only (no HTTP): the bench waits for the port.

Run: ``python loadtests/baseline_picows.py --host 127.0.0.1 --port 8003``.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

WINDOW_BYTES = int(os.environ.get("VOXGATE_WINDOW_BYTES", 1024 * 1024))
MAX_FRAME_BYTES = int(os.environ.get("VOXGATE_MAX_FRAME_BYTES", 256 * 1024))
MAX_MESSAGE_BYTES = int(os.environ.get("VOXGATE_MAX_MESSAGE_BYTES", 1024 * 1024))


class Sink(WSListener):
    """One connection: hello on connect, an ack per binary message."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id

    def on_ws_connected(self, transport: WSTransport) -> None:
        hello = {
            "type": "hello",
            "protocol": 1,
            "session_id": self.session_id,
            "next_seq": 0,
            "missing": [],
            "window_bytes": WINDOW_BYTES,
            "max_frame_bytes": MAX_FRAME_BYTES,
            "max_message_bytes": MAX_MESSAGE_BYTES,
        }
        transport.send(WSMsgType.TEXT, orjson.dumps(hello))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.BINARY:
            data = frame.get_payload_as_memoryview()
            ranges: list[list[int]] = []
            offset, size = 0, len(data)
            while offset + 24 <= size:
                seq = int.from_bytes(data[offset + 4 : offset + 8], "big")
                length = int.from_bytes(data[offset + 16 : offset + 20], "big")
                if ranges and ranges[-1][1] + 1 == seq:
                    ranges[-1][1] = seq
                else:
                    ranges.append([seq, seq])
                offset += 24 + length
            ack = {"type": "ack", "acked": ranges, "duplicate": [], "window_bytes": WINDOW_BYTES}
            transport.send(WSMsgType.TEXT, orjson.dumps(ack))
        elif kind == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


def listener(request: WSUpgradeRequest) -> WSListener:
    path = request.path.decode() if isinstance(request.path, bytes) else str(request.path)
    parts = path.split("?")[0].strip("/").split("/")
    return Sink(parts[2] if len(parts) > 2 else "")


async def serve(host: str, port: int) -> None:
    server = await ws_create_server(listener, host, port, max_frame_size=MAX_MESSAGE_BYTES)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--workers", type=int, default=1, help="accepted for symmetry; 1 only")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
