"""Schemathesis hooks: what the OpenAPI schema cannot say about two operations.

- The raw frame body of ``POST /v1/sessions/{id}/frames`` goes as bytes.
- The transcript relay's body names its session again (``session_id``), and it
  must equal the path's: JSON Schema cannot express the equality, docs/api.md
  states it and the schema declares the 422 for a mismatch. Requests whose
  ``session_id`` is a string are sent with the path's value, so that most of
  them reach the endpoint rather than the 422.
- Uploads authenticate with a stream token (see :class:`StreamToken`).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import schemathesis
from schemathesis.transport.serialization import Binary

from voxgate._native import encode_frame

schemathesis.serializer.alias("application/vnd.voxgate.frames", "application/octet-stream")

RELAY = "/voice/transcript/relay/{session_id}"


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    if case.operation.path != RELAY:
        return
    body, path = case.body, case.path_parameters or {}
    session_id = path.get("session_id")
    if isinstance(body, dict) and isinstance(body.get("session_id"), str) and session_id:
        body["session_id"] = session_id


FRAMES = "/v1/sessions/{session_id}/frames"


@schemathesis.auth(refresh_interval=None).skip_for(path=FRAMES)
class ApiKey:
    """Every other call: the API key (``VOXGATE_CONTRACT_API_KEY``)."""

    def get(self, case: Any, context: Any) -> str:
        return os.environ["VOXGATE_CONTRACT_API_KEY"]

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.auth(refresh_interval=None).apply_to(path=FRAMES)
class StreamToken:
    """Uploads take a single-use stream token, not the API key: each request gets a
    fresh one, for a session made for it (the server's URL and API key come from
    ``VOXGATE_CONTRACT_URL`` and ``VOXGATE_CONTRACT_API_KEY``, set by test_contract.py).
    """

    def get(self, case: Any, context: Any) -> tuple[str, str]:
        base = os.environ["VOXGATE_CONTRACT_URL"]
        headers = {"Authorization": f"Bearer {os.environ['VOXGATE_CONTRACT_API_KEY']}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            sid = http.post("/v1/sessions", json={}).json()["id"]
            token = http.post(f"/v1/sessions/{sid}/tokens", json={}).json()["token"]
        return sid, token

    def set(self, case: Any, data: tuple[str, str], context: Any) -> None:
        sid, token = data
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {token}"
        # The token is bound to its session: a string id becomes that session's.
        if isinstance((case.path_parameters or {}).get("session_id"), str):
            case.path_parameters["session_id"] = sid


@schemathesis.hook("map_body").apply_to(path=FRAMES)  # type: ignore[attr-defined,untyped-decorator]
def frames_of(context: Any, body: Any) -> Any:
    """Generated upload bytes become the payloads of frames, so most uploads store
    something; broken framing is the fuzz tests' subject (tests/e2e/test_fuzz_*.py)."""
    raw = body.data if isinstance(body, Binary) else body
    if not isinstance(raw, bytes | bytearray):
        return body
    chunks = [bytes(raw[i : i + 64]) for i in range(0, len(raw), 64)] or [b""]
    return Binary(b"".join(encode_frame(seq, chunk) for seq, chunk in enumerate(chunks)))
