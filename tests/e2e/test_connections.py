"""Silent and slow HTTP connections are closed, and a crowd of them starves no one.

Before: Granian's HTTP/1-or-2 detection waited for a first byte with no timeout
(a silent connection was held for good), and each worker took at most 1024
connections, so about a thousand idle sockets made ``/health`` time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Iterator

import httpx
import pytest

from servers import Server, start_server
from voxgate.settings import Settings

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
IDLE_SOCKETS = 1100  # more than the 1024 connection slots a worker had


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "VOXGATE_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    with start_server(tmp_path_factory.mktemp("connections"), env=env) as running:
        yield running


def test_the_defaults_close_silent_and_slow_connections_within_a_minute() -> None:
    defaults = Settings()
    assert defaults.http_header_timeout_s <= 60
    assert defaults.http_body_timeout_s <= 60
    assert defaults.max_connections >= defaults.max_streams


def open_sockets(server: Server, count: int, first_bytes: bytes = b"") -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        if first_bytes:
            sock.sendall(first_bytes)
        sockets.append(sock)
    return sockets


def closed_by_server(sock: socket.socket, within_s: float) -> bytes | None:
    """What the server sent before closing ``sock`` (None: still open after ``within_s``)."""
    sock.settimeout(within_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4 * IDLE_SOCKETS,
    reason="needs file descriptors for both ends of the idle sockets",
)
async def test_a_thousand_idle_sockets_do_not_starve_health(server: Server) -> None:
    silent = await asyncio.to_thread(open_sockets, server, IDLE_SOCKETS // 2)
    slow = await asyncio.to_thread(
        open_sockets, server, IDLE_SOCKETS // 2, b"GET /health HTTP/1.1\r\nHost: x\r\n"
    )
    try:
        # Bounded well above the header timeout: before, this never answered.
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            answers = await asyncio.gather(*(http.get("/health") for _ in range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        # And the idle ones are let go by the server (after the header timeout).
        for sock in (silent[0], silent[-1], slow[0], slow[-1]):
            left = await asyncio.to_thread(closed_by_server, sock, 30)
            assert left is not None, "the server still holds a silent connection"
            assert b" 5" not in left.split(b"\r\n", 1)[0]
    finally:
        for sock in silent + slow:
            sock.close()


async def test_a_kept_alive_connection_without_a_next_request_is_closed(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    with contextlib.closing(sock):
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        rest = await asyncio.to_thread(closed_by_server, sock, 30)
        assert rest is not None, "an idle kept-alive connection was held"


@pytest.mark.parametrize("path", ["/v1/sessions", "/v1/sessions/{sid}/frames"])
async def test_a_stalled_body_is_answered_408_and_closed(server: Server, path: str) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
        sid = (await http.post("/v1/sessions", json={})).json()["id"]
        token = (await http.post(f"/v1/sessions/{sid}/tokens", json={})).json()["token"]
    is_upload = path.endswith("/frames")
    credential = token if is_upload else server.api_key
    content_type = "application/vnd.voxgate.frames" if is_upload else "application/json"
    request = (
        f"POST {path.format(sid=sid)} HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {credential}\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode() + (b"\x00" if is_upload else b"{")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    with contextlib.closing(sock):
        sock.sendall(request)
        answer = await asyncio.to_thread(closed_by_server, sock, 30)
    assert answer is not None, "a stalled body held its connection"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout" in answer
