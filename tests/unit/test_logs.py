"""The log filter: the last guard that keeps secrets and payload bytes out of every line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from voxgate import logs


@pytest.fixture(autouse=True)
def _reset_secrets() -> None:
    logs.register_secrets(())


def redact(**event: object) -> dict[str, object]:
    return dict(logs.redact(None, "info", dict(event)))


def test_tokens_keys_and_bearer_credentials_are_blanked_in_any_value() -> None:
    out = redact(
        message="upgrade GET /v1/sessions/s/stream?token=vgt_abc-DEF_123&x=1 refused",
        detail="Authorization: Bearer whatever-it-is",
        subprotocols=["voxgate.v1", "voxgate.token.vgt_secret"],
        nested={"note": "key vgk_generated_key here"},
    )
    flat = json.dumps(out)
    for secret in ("vgt_abc-DEF_123", "whatever-it-is", "vgt_secret", "vgk_generated_key"):
        assert secret not in flat
    assert "?token=[redacted]&x=1" in str(out["message"])


def test_configured_keys_are_blanked_and_secret_fields_dropped() -> None:
    logs.register_secrets(["plain-configured-key"])
    out = redact(message="tried plain-configured-key", token="t", api_key="k", authorization="a")
    assert out == {
        "message": "tried [redacted]",
        "token": "[redacted]",
        "api_key": "[redacted]",
        "authorization": "[redacted]",
    }


def test_payload_bytes_become_their_length() -> None:
    out = redact(payload=b"\x00audio bytes", view=memoryview(b"abc"), frames=[bytearray(4)])
    assert out == {"payload": "<12 bytes>", "view": "<3 bytes>", "frames": ["<4 bytes>"]}


@pytest.fixture
def configured() -> Iterator[None]:
    """voxgate's logging for one test, then the test process's own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.usefixtures("configured")
def test_stdlib_lines_are_json_with_the_bound_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", secrets=["configured-key-123"])
    with structlog.contextvars.bound_contextvars(request_id="rid-1"):
        logging.getLogger("voxgate.test").warning("refused %s", "configured-key-123")
        logs.get("voxgate.test").info("event.name", count=3, token="vgt_x")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(ln["message"], ln["request_id"], ln["logger"]) for ln in lines] == [
        ("refused [redacted]", "rid-1", "voxgate.test"),
        ("event.name", "rid-1", "voxgate.test"),
    ]
    assert lines[1]["count"] == 3
    assert lines[1]["token"] == "[redacted]"
