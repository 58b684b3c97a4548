"""Damaged and arbitrary input against a live server, over WebSocket and HTTP upload.

Every message gets the protocol's answer for what PROTOCOL section 1 says it
is (the Python reference decoder of tests/unit/native/test_fuzz.py decides), a
broken one stores nothing, and the worker keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from e2e.wire import FRAMES_CONTENT_TYPE
from servers import Server
from unit.native.test_fuzz import damaged, reference
from voxgate._native import FRAME_BAD_CRC, FRAME_TOO_LARGE
from voxgate.settings import Settings

MAX_FRAME = Settings().max_frame_bytes
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OK_ANSWERS = {"acked", "duplicate", "conflict", "sequence"}


async def new_session_and_token(http: httpx.AsyncClient) -> tuple[str, str]:
    sid = (await http.post("/v1/sessions", json={})).json()["id"]
    token = (await http.post(f"/v1/sessions/{sid}/tokens", json={})).json()["token"]
    return sid, token


async def stored_frames(http: httpx.AsyncClient, sid: str) -> int:
    report = (await http.get(f"/v1/sessions/{sid}/missing")).json()
    return int(report["frames"])


def expected_verdicts(data: bytes) -> tuple[dict[int, set[str]], tuple[str, int] | None]:
    frames, error = reference(data, MAX_FRAME)
    allowed: dict[int, set[str]] = {}
    for seq, _, _, _, _, verdict in frames:
        if verdict == FRAME_TOO_LARGE:
            allowed.setdefault(seq, set()).add("too_large")
        elif verdict == FRAME_BAD_CRC:
            allowed.setdefault(seq, set()).add("checksum")
        else:
            allowed.setdefault(seq, set()).update(OK_ANSWERS)
    return allowed, error


async def stream_one(server: Server, data: bytes) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
        sid, token = await new_session_and_token(http)
        allowed, error = expected_verdicts(data)
        async with connect(
            f"{server.ws_url}/v1/sessions/{sid}/stream",
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=None,
            ping_interval=None,
        ) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello"
            await ws.send(data)
            answered: dict[int, set[str]] = {}
            messages: list[dict[str, Any]] = []
            close_code = None

            async def read_one() -> None:
                message = json.loads(await ws.recv())
                messages.append(message)
                for key in ("acked", "duplicate"):
                    for first, last in message.get(key, []):
                        for seq in range(first, last + 1):
                            answered.setdefault(seq, set()).add(key)
                if message["type"] == "nack":
                    for first, last in message["ranges"]:
                        for seq in range(first, last + 1):
                            answered.setdefault(seq, set()).add(message["reason"])

            def acked_count() -> int:
                return sum(1 for verdicts in answered.values() if "acked" in verdicts)

            try:
                async with asyncio.timeout(10):
                    while error is not None or not set(allowed) <= set(answered):
                        await read_one()
                    # A seq sent twice in one message may be refused (nack, sent first)
                    # and stored (ack, after the commit): wait for the acks of what is stored.
                    while acked_count() < await stored_frames(http, sid):
                        await read_one()
            except ConnectionClosed as closed:
                close_code = closed.rcvd.code if closed.rcvd else None
        if error is not None:
            assert close_code == 4400, (data, messages)
            assert messages[-1] == {
                "type": "error",
                "code": error[0],
                "message": messages[-1]["message"],
            }
            assert await stored_frames(http, sid) == 0, "a rejected message stored frames"
        else:
            assert close_code is None, (data, messages)
            assert set(answered) == set(allowed), (answered, allowed)
            for seq, verdicts in answered.items():
                assert verdicts <= allowed[seq], (seq, verdicts, allowed[seq])
            acked = {seq for seq, verdicts in answered.items() if "acked" in verdicts}
            assert await stored_frames(http, sid) == len(acked)
        assert (await http.get("/health")).status_code == 200


async def upload_one(server: Server, data: bytes) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
        sid, token = await new_session_and_token(http)
        frames, error = reference(data, MAX_FRAME, stream=True)
        response = await http.post(
            f"/v1/sessions/{sid}/frames",
            content=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": FRAMES_CONTENT_TYPE},
        )
        answer = response.json()
        if error is not None:
            assert response.status_code == 400, response.text
            assert answer["type"] == f"urn:voxgate:error:{error[0]}"
        else:
            assert response.status_code == 200, response.text
        # Frames before the break are handled as reported; nothing after it is stored.
        acked = {s for first, last in answer.get("acked", []) for s in range(first, last + 1)}
        assert acked <= {frame[0] for frame in frames}
        assert await stored_frames(http, sid) == len(acked)


@EXAMPLES
@given(data=damaged())
def test_any_websocket_message_gets_the_protocols_answer(server: Server, data: bytes) -> None:
    asyncio.run(stream_one(server, data))


@EXAMPLES
@given(data=damaged())
def test_any_upload_body_gets_the_protocols_answer(server: Server, data: bytes) -> None:
    asyncio.run(upload_one(server, data))
