"""Signatures as voxgate makes them, checked with the verification code docs/clients.md gives."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from voxgate.webhooks.signing import signature_header, verify

from .receiver import SECRET, docs_block, docs_node_verify, docs_python_verifier

BODY = b'{"id":"evt_1","type":"session.completed","session":{"id":"ses_1"}}'


def cases(now: int) -> list[tuple[str, str, bytes, bool]]:
    """(secret, header, body, valid?) as a receiver meets them."""
    good = signature_header(SECRET, now, BODY)
    return [
        (SECRET, good, BODY, True),
        (SECRET, f"t={now},v1={'0' * 64},{good.split(',')[1]}", BODY, True),  # rotation
        (SECRET, good, BODY.replace(b"ses_1", b"ses_2"), False),  # body changed
        ("another-secret-0123456789", good, BODY, False),
        # Replayed 10 minutes later, or from a clock far ahead. (Well past the 5-minute
        # tolerance: the snippets read the clock themselves, a little later than `now`.)
        (SECRET, signature_header(SECRET, now - 600, BODY), BODY, False),
        (SECRET, signature_header(SECRET, now + 600, BODY), BODY, False),
        (SECRET, good.replace(f"t={now}", f"t={now + 1}"), BODY, False),  # timestamp moved
        (SECRET, good.split(",")[1], BODY, False),  # no timestamp
        (SECRET, f"t={now}", BODY, False),  # no signature
        (SECRET, "", BODY, False),
        (SECRET, "t=abc,v1=xyz", BODY, False),
    ]


def test_voxgate_signatures_verify_with_the_python_snippet() -> None:
    snippet = docs_python_verifier()
    now = int(time.time())
    for secret, header, body, valid in cases(now):
        assert snippet(secret, header, body) is valid, header
        assert verify(secret, header, body, now=now) is valid, header


def test_the_tolerance_is_five_minutes_either_way() -> None:
    now = 1_800_000_000
    for moment, valid in ((now - 300, True), (now + 300, True), (now - 301, False)):
        assert verify(SECRET, signature_header(SECRET, moment, BODY), BODY, now=now) is valid
    assert not verify(SECRET, signature_header(SECRET, now + 301, BODY), BODY, now=now)


def test_voxgate_signatures_verify_with_the_node_snippet(tmp_path: Path) -> None:
    checks = cases(int(time.time()))
    results = docs_node_verify(tmp_path, [(s, h, b) for s, h, b, _ in checks])
    assert results == [valid for *_, valid in checks]


def test_the_litestar_receiver_of_the_docs_accepts_signed_events_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXGATE_WEBHOOK_SECRET", SECRET)
    # The two blocks as one module of the application, the verifier above the handler.
    source = tmp_path / "voxgate_hooks_app.py"
    source.write_text(
        docs_block("python", "def verify_voxgate_signature")
        + "\n\n"
        + docs_block("python", "async def voxgate_event")
    )
    spec = importlib.util.spec_from_file_location("voxgate_hooks_app", source)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "voxgate_hooks_app", module)
    spec.loader.exec_module(module)
    app = Litestar([module.voxgate_event])
    with TestClient(app) as client:

        def post(header: str) -> int:
            return client.post(
                "/voxgate/events", content=BODY, headers={"Voxgate-Signature": header}
            ).status_code

        now = int(time.time())
        assert post(signature_header(SECRET, now, BODY)) == 204
        assert post(signature_header(SECRET, now - 600, BODY)) == 401
        assert post(signature_header("another-secret-0123456789", now, BODY)) == 401
        assert module.handled == {msgspec.json.decode(BODY)["id"]}
        assert post(signature_header(SECRET, now, BODY)) == 204  # a retry: handled once
        assert module.handled == {"evt_1"}
