"""API keys for management calls, and where stream tokens may come from."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from voxgate.errors import ApiError
from voxgate.settings import Settings

API_KEY_FILE = "api_key"


def ensure_api_keys(settings: Settings) -> tuple[tuple[str, ...], str | None]:
    """The API keys in force, and the key generated now if there was none.

    With ``VOXGATE_API_KEYS`` unset, the key lives in ``<data dir>/api_key``
    (created with mode 0600 on first start), so management never runs open.
    """
    if settings.api_keys:
        return settings.api_keys, None
    path = Path(settings.data_dir) / API_KEY_FILE
    if path.exists():
        return (path.read_text().strip(),), None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "vgk_" + secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return (path.read_text().strip(),), None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return (key,), key


def bearer(value: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header value."""
    if not value:
        return None
    scheme, _, credential = value.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def key_matches(candidate: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every configured key."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode(), key.encode())
    return found


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard: the request must carry a configured API key."""
    keys: tuple[str, ...] = connection.app.state.runtime.api_keys
    candidate = bearer(connection.headers.get("authorization"))
    if candidate is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": 'Bearer realm="voxgate"'},
        )
    if not key_matches(candidate, keys):
        raise ApiError(
            401,
            "unauthorized",
            "invalid API key",
            headers={"WWW-Authenticate": 'Bearer realm="voxgate", error="invalid_token"'},
        )
