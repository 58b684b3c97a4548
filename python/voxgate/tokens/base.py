"""Stream tokens (PROTOCOL section 5): short-lived, single-use, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Protocol

import msgspec

from voxgate.errors import VoxgateError

TOKEN_PREFIX = "vgt_"


class StreamToken(msgspec.Struct, frozen=True):
    """What a freshly minted token tells its holder; ``token`` is never stored."""

    token: str
    session_id: str
    expires_at: datetime
    ttl_s: int


class TokenStoreError(VoxgateError):
    """The token store cannot answer right now (for example Redis is down)."""


def new_token() -> str:
    """A new random token: 256 bits, URL-safe, safe in a subprotocol name."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The only form in which a token is kept."""
    return hashlib.sha256(token.encode()).hexdigest()


def expiry(ttl_s: int, now: float) -> datetime:
    return datetime.fromtimestamp(now + ttl_s, tz=UTC)


class TokenStore(Protocol):
    """Mints and consumes stream tokens; raises :class:`TokenStoreError` when unavailable."""

    async def mint(self, session_id: str, ttl_s: int) -> StreamToken:
        """A new token bound to ``session_id``, valid for ``ttl_s`` seconds."""

    async def consume(self, token: str) -> str | None:
        """Atomically use up ``token``; its session id, or None if unknown, used or expired."""

    async def close(self) -> None:
        """Release connections."""
