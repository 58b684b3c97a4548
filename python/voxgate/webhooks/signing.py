"""Webhook signatures: HMAC-SHA256 over ``<timestamp>.<body>`` (docs/clients.md "Webhooks").

Header: ``Voxgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``. The
timestamp is signed with the body, so a receiver that rejects old timestamps
(5 minutes is the documented tolerance) cannot be replayed a captured request
later; the event id (``Voxgate-Event-Id``, also in the body) dedupes retries.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Voxgate-Signature"
EVENT_ID_HEADER = "Voxgate-Event-Id"
EVENT_TYPE_HEADER = "Voxgate-Event-Type"
ATTEMPT_HEADER = "Voxgate-Delivery-Attempt"
TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``<timestamp>.<body>`` with ``secret`` (UTF-8)."""
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Voxgate-Signature`` value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` and its timestamp is recent.

    Any ``v1`` entry may match (several are allowed, for rotating secrets);
    a malformed header is simply not valid.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
