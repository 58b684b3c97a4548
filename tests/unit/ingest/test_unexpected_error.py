"""An unexpected error in a commit: close 1011, keep what was acked, resume cleanly.

Store failures (database or disk) are ``StoreError`` and close with 1013; the
e2e tests cause those with real engines. 1011 is for everything else: a fault in
voxgate's own code. Nothing outside the process can cause one, so this test
runs the app in process and makes the store's commit raise once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient
from litestar.testing.websocket_test_session import WebSocketTestSession

from e2e.wire import frame, payload_for, stream_crc
from voxgate.app import create_app
from voxgate.runtime import Runtime
from voxgate.settings import Settings
from voxgate.store.base import CommitResult, Part

API_KEY = "k" * 32
PAYLOADS = [payload_for("fault", seq, 240) for seq in range(10)]


class FailingCommits:
    """Wraps the store's ``commit``: raises ``RuntimeError`` while ``armed``."""

    def __init__(self, runtime: Runtime) -> None:
        self.commit = runtime.store.commit
        self.armed = False
        self.raised = 0

    async def __call__(self, frames: Sequence[Part]) -> CommitResult:
        if self.armed:
            self.armed = False
            self.raised += 1
            raise RuntimeError("injected fault")
        return await self.commit(frames)


def connect(client: TestClient[Any], session_id: str) -> AbstractContextManager[Any]:
    """A stream connection with a freshly minted token; read its hello first."""
    token = client.post(f"/v1/sessions/{session_id}/tokens", json={}).json()["token"]
    return client.websocket_connect(
        f"/v1/sessions/{session_id}/stream", headers={"Authorization": f"Bearer {token}"}
    )


def read_hello(ws: WebSocketTestSession) -> dict[str, Any]:
    hello: dict[str, Any] = ws.receive_json()
    assert hello["type"] == "hello", hello
    return hello


def send_acked(ws: WebSocketTestSession, seq: int, *, end: bool = False) -> None:
    ws.send_bytes(frame(seq, PAYLOADS[seq], end=end))
    while True:
        answer = ws.receive_json()
        if answer["type"] == "ack":
            assert answer["acked"] == [[seq, seq]], answer
            return


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

        with connect(client, session_id) as ws:
            assert read_hello(ws)["next_seq"] == 0
            for seq in range(5):
                send_acked(ws, seq)
            fault.armed = True
            ws.send_bytes(frame(5, PAYLOADS[5]))
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
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
        with connect(client, session_id) as ws:
            hello = read_hello(ws)
            assert hello["next_seq"] == 5
            assert hello["missing"] == []
            for seq in range(5, 9):
                send_acked(ws, seq)
            send_acked(ws, 9, end=True)
            complete = ws.receive_json()

    assert complete == {
        "type": "complete",
        "last_seq": 9,
        "frames": 10,
        "bytes": sum(map(len, PAYLOADS)),
        "stream_crc32c": stream_crc(PAYLOADS),
    }
