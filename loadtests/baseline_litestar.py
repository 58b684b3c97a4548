"""The framework's ceiling: a bare Litestar app on Granian that parses and acks, nothing else.

Same route, same ``hello`` and ``ack`` JSON shapes and the same one native
``decode`` call per binary message as voxgate, but no tokens, no store, no
fsync, no ledger: each message is answered at once with an ``ack`` of every
frame in it. ``ingest_bench.py`` runs it beside voxgate to show what the
durable path costs.

Run: ``python loadtests/baseline_litestar.py --host 127.0.0.1 --port 8001 [--workers N]``.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any, cast

import orjson
from litestar import Litestar, WebSocket, get, websocket

from voxgate import _native
from voxgate.ranges import to_ranges
from voxgate.settings import Settings

# The same limits voxgate would advertise under the same VOXGATE_* environment.
_DEFAULTS = Settings.from_env()
WINDOW_BYTES = _DEFAULTS.window_bytes
MAX_FRAME_BYTES = _DEFAULTS.max_frame_bytes
MAX_MESSAGE_BYTES = _DEFAULTS.max_message_bytes


def _text(message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "websocket.send", "text": orjson.dumps(message).decode(), "bytes": None}


@get("/health")
async def health() -> dict[str, str]:
    """Liveness, for the bench's start-up wait."""
    return {"status": "ok", "timestamp": datetime.datetime.now(datetime.UTC).isoformat()}


@websocket("/v1/sessions/{session_id:str}/stream")
async def stream(socket: WebSocket[Any, Any, Any], session_id: str) -> None:
    """Hello, then one ack per binary message listing its frames; pings get pongs."""
    await socket.accept()
    await socket.send(
        _text(  # type: ignore[arg-type]
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
    )
    receive = socket.receive
    send = socket.send
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        data = cast("bytes | None", event.get("bytes"))
        if data is None:
            control = orjson.loads(cast("str | None", event.get("text")) or "{}")
            if control.get("type") == "ping":
                await send(_text({"type": "pong", "t": control.get("t")}))  # type: ignore[arg-type]
            continue
        frames = _native.decode(data, MAX_FRAME_BYTES)
        ack = {
            "type": "ack",
            "acked": to_ranges(frame[0] for frame in frames),
            "duplicate": [],
            "window_bytes": WINDOW_BYTES,
        }
        await send(_text(ack))  # type: ignore[arg-type]


app = Litestar([health, stream])


def main() -> None:
    """Serve :data:`app` with Granian, configured like ``voxgate serve``."""
    from granian.constants import Interfaces
    from granian.server import Server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    Server(
        "baseline_litestar:app",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        websockets=True,
        log_access=False,
        working_dir=Path(__file__).resolve().parent,
    ).serve()


if __name__ == "__main__":
    main()
