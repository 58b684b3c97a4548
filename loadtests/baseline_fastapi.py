"""What a user would write instead: a plain FastAPI WebSocket handler on uvicorn.

It parses each binary message's frames with ``struct``, checks each payload's
CRC-32C with the ``crc32c`` package from PyPI (hardware accelerated; the usual
choice in Python), and answers every message with an ``ack`` of the same JSON
shape as voxgate (``send_json``, the stdlib ``json``). No tokens, no storage,
no credit accounting: the window it advertises never changes. Frames with a
bad CRC are nacked ``checksum``; broken framing closes with 4400.

Run: ``python loadtests/baseline_fastapi.py --host 127.0.0.1 --port 8002``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import struct
from collections.abc import Mapping
from typing import Any

import crc32c
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

WINDOW_BYTES = int(os.environ.get("VOXGATE_WINDOW_BYTES", 1024 * 1024))
MAX_FRAME_BYTES = int(os.environ.get("VOXGATE_MAX_FRAME_BYTES", 256 * 1024))
MAX_MESSAGE_BYTES = int(os.environ.get("VOXGATE_MAX_MESSAGE_BYTES", 1024 * 1024))
HEADER = struct.Struct(">2sBBIQII")

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness, for the bench's start-up wait."""
    return {"status": "ok", "timestamp": datetime.datetime.now(datetime.UTC).isoformat()}


def ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if out and out[-1][1] + 1 == seq:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def parse(data: bytes) -> tuple[list[int], list[int]]:
    """(good seqs, bad-CRC seqs) of one message; ValueError on broken framing."""
    good: list[int] = []
    bad: list[int] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            raise ValueError("truncated header")
        magic, version, flags, seq, _pts, length, crc = HEADER.unpack_from(data, offset)
        if magic != b"VF" or version != 1 or flags & 0xFE or (length == 0 and not flags & 1):
            raise ValueError("bad header")
        start = offset + HEADER.size
        if start + length > len(data) or length > MAX_FRAME_BYTES:
            raise ValueError("truncated or too large frame")
        payload = data[start : start + length]
        (good if crc32c.crc32c(payload) == crc else bad).append(seq)
        offset = start + length
    return good, bad


@app.websocket("/v1/sessions/{session_id}/stream")
async def stream(websocket: WebSocket, session_id: str) -> None:
    """Hello, then one ack (and a nack for bad CRCs) per binary message."""
    await websocket.accept()
    await websocket.send_json(
        {
            "type": "hello",
            "protocol": 1,
            "session_id": session_id,
            "next_seq": 0,
            "missing": [],
            "window_bytes": WINDOW_BYTES,
            "max_frame_bytes": MAX_FRAME_BYTES,
            "max_message_bytes": MAX_MESSAGE_BYTES,
        }
    )
    try:
        while True:
            message: Mapping[str, Any] = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                continue
            try:
                good, bad = parse(data)
            except ValueError as exc:
                await websocket.send_json(
                    {"type": "error", "code": "bad_frame", "message": str(exc)}
                )
                await websocket.close(4400)
                return
            if bad:
                await websocket.send_json(
                    {"type": "nack", "ranges": ranges(bad), "reason": "checksum"}
                )
            await websocket.send_json(
                {
                    "type": "ack",
                    "acked": ranges(good),
                    "duplicate": [],
                    "window_bytes": WINDOW_BYTES,
                }
            )
    except WebSocketDisconnect:
        return


def main() -> None:
    """Serve :data:`app` with uvicorn (its defaults: uvloop and httptools when installed)."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "baseline_fastapi:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        ws_max_size=MAX_MESSAGE_BYTES,
        ws_ping_interval=None,
    )


if __name__ == "__main__":
    main()
