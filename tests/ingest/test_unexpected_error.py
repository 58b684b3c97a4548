"""An unexpected error in a commit: close 1011, keep what was acked, resume cleanly.

Store failures (database or disk) are ``StoreError`` and close with 1013; the
e2e tests cause those with real engines. 1011 is for everything else: a fault in
voxgate's own code. Nothing outside the process can cause one, so this test
runs the app in process and makes the store's commit raise once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient
from litestar.testing.websocket_test_session import WebSocketTestSession

from voxgate._native import crc32c, crc32c_combine, encode_frame
from voxgate.app import create_app
from voxgate.runtime import Runtime
from voxgate.settings import Settings
from voxgate.store.base import CommitResult, FrameIn

API_KEY = "k" * 32


def payload(seq: int) -> bytes:
    return f"<frame {seq}>".encode() * 20


class FailingCommits:
    """Wraps the store's ``commit``: raises ``RuntimeError`` while ``armed``."""

    def __init__(self, runtime: Runtime) -> None:
        self.commit = runtime.store.commit
        self.armed = False
        self.raised = 0

    async def __call__(self, frames: Sequence[FrameIn]) -> CommitResult:
        if self.armed:
            self.armed = False
            self.raised += 1
            raise RuntimeError("injected fault")
        return await self.commit(frames)


def open_stream(client: TestClient[Any], session_id: str) -> tuple[WebSocketTestSession, Any]:
    minted = client.post(f"/v1/sessions/{session_id}/tokens", json={})
    token = minted.json()["token"]
    ws = client.websocket_connect(
        f"/v1/sessions/{session_id}/stream", headers={"Authorization": f"Bearer {token}"}
    ).__enter__()
    hello = ws.receive_json()
    assert hello["type"] == "hello", hello
    return ws, hello


def send_acked(ws: WebSocketTestSession, seq: int, *, end: bool = False) -> dict[str, Any]:
    ws.send_bytes(encode_frame(seq, payload(seq), pts_us=seq * 20_000, end=end))
    while True:
        answer: dict[str, Any] = ws.receive_json()
        if answer["type"] == "ack":
            assert answer["acked"] == [[seq, seq]], answer
            return answer


def test_an_unexpected_commit_error_closes_1011_and_loses_nothing_acked(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=str(tmp_path), api_keys=(API_KEY,))
    app = create_app(settings)
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        runtime: Runtime = app.state.runtime
        fault = FailingCommits(runtime)
        runtime.store.commit = fault  # type: ignore[method-assign]
        created = client.post(
            "/v1/sessions", json={"codec": "pcm_s16le", "sample_rate": 16000, "channels": 1}
        )
        session_id = created.json()["id"]

        ws, hello = open_stream(client, session_id)
        assert hello["next_seq"] == 0
        for seq in range(5):
            send_acked(ws, seq)
        fault.armed = True
        ws.send_bytes(encode_frame(5, payload(5), pts_us=100_000))
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        ws.__exit__(None, None, None)
        assert fault.raised == 1
        # 1011 has no ``error`` message before it (PROTOCOL 7: only 4xxx codes do).
        assert closed.value.code == 1011
        assert closed.value.detail == "unexpected server error"
        # The operator gets the traceback, with the session; the client got no detail of it.
        logged = [
            json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")
        ]
        failed = [e for e in logged if e["message"] == f"commit failed for session {session_id}"]
        assert len(failed) == 1
        assert "RuntimeError: injected fault" in failed[0]["exception"]

        # The acked frames are stored; the failed one is not, and the client is told.
        ws, hello = open_stream(client, session_id)
        assert hello["next_seq"] == 5
        assert hello["missing"] == []
        for seq in range(5, 9):
            send_acked(ws, seq)
        send_acked(ws, 9, end=True)
        complete = ws.receive_json()
        ws.__exit__(None, None, None)

    expected_crc = 0
    for seq in range(10):
        expected_crc = crc32c_combine(expected_crc, crc32c(payload(seq)), len(payload(seq)))
    assert complete == {
        "type": "complete",
        "last_seq": 9,
        "frames": 10,
        "bytes": sum(len(payload(seq)) for seq in range(10)),
        "stream_crc32c": expected_crc,
    }
