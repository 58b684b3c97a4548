"""An answer the client reads nothing of is dropped with its connection after
``VOXGATE_HTTP_SEND_TIMEOUT_S``: a Server-Sent Events listener that never reads
cannot hold a connection, a listener slot and the queued events for good."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import httpx
import pytest

from servers import Server, start_server

SEND_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"VOXGATE_HTTP_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S)}
    with start_server(tmp_path_factory.mktemp("unread"), env=env) as running:
        yield running


async def test_an_events_listener_that_never_reads_is_dropped(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
        sid = (await http.post("/v1/sessions", json={})).json()["id"]
        token = (await http.post(f"/v1/sessions/{sid}/listen-tokens", json={})).json()["token"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        with contextlib.closing(sock):
            await asyncio.to_thread(sock.connect, ("127.0.0.1", server.port))
            request = f"GET /v1/sessions/{sid}/events?token={token} HTTP/1.1\r\nHost: x\r\n\r\n"
            sock.sendall(request.encode())

            async def listeners() -> int:
                stats = (await http.get("/v1/stats")).json()
                return int(stats["fanout"]["listeners"])

            for _ in range(100):
                if await listeners() == 1:
                    break
                await asyncio.sleep(0.05)
            assert await listeners() == 1
            # Far more events than the socket buffers hold, and none of it read.
            text = "x" * 60_000
            for seq in range(200):
                posted = await http.post(
                    f"/v1/sessions/{sid}/transcripts",
                    json={
                        "role": "user",
                        "text": text,
                        "is_final": True,
                        "timestamp": seq,
                        "seq": seq,
                    },
                )
                assert posted.status_code == 201
            for _ in range(300):
                if await listeners() == 0:
                    break
                await asyncio.sleep(0.1)
            assert await listeners() == 0, "a listener that reads nothing is still held"
            # The connection is closed: what is left to read ends.
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := await asyncio.to_thread(sock.recv, 65536):
                    received += len(chunk)
            assert received < 200 * len(text)
    assert "Traceback" not in server.log_text()
