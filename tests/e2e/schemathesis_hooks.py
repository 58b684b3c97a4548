"""Schemathesis hooks: what the OpenAPI schema cannot say about two operations.

- The raw frame body of ``POST /v1/sessions/{id}/frames`` goes as bytes.
- The transcript relay's body names its session again (``session_id``), and it
  must equal the path's: JSON Schema cannot express the equality, docs/api.md
  states it and the schema declares the 422 for a mismatch. Requests whose
  ``session_id`` is a string are sent with the path's value, so that most of
  them reach the endpoint rather than the 422.
"""

from __future__ import annotations

from typing import Any

import schemathesis

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
