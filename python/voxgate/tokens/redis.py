"""Stream tokens in Redis, shared by every voxgate instance (``VOXGATE_REDIS_URL``).

A token is kept only as ``voxgate:token:<sha256>`` -> session id, written with
``SET NX EX ttl`` (never overwriting a key, expiring by itself) and used up
with ``GETDEL``, which Redis runs atomically: of two instances racing for one
token exactly one gets the session id.

The client and its connection policy (timeouts, retries) are
:mod:`voxgate.redis_client`'s. A retried ``GETDEL`` whose first reply was lost
finds the key gone and answers "unknown token": the client sees 4401 and mints
another. A token is never accepted twice; at worst one is wasted.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from voxgate.redis_client import REDIS_ERRORS
from voxgate.tokens.base import StreamToken, TokenStoreError, expiry, new_token, token_hash

log = logging.getLogger("voxgate.tokens")

KEY_PREFIX = "voxgate:token:"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisTokenStore:
    """Hashed, single-use, expiring tokens in Redis, shared by every instance.

    The client belongs to the caller (the runtime shares it with other users
    and closes it); :meth:`close` leaves it open.
    """

    def __init__(self, client: Redis, *, key_prefix: str = KEY_PREFIX) -> None:
        self._redis = client
        self._prefix = key_prefix

    def _key(self, token: str) -> str:
        return self._prefix + token_hash(token)

    async def mint(self, session_id: str, ttl_s: int) -> StreamToken:
        token = new_token()
        key = self._key(token)
        now = time.time()
        try:
            stored = await self._redis.set(key, session_id, nx=True, ex=ttl_s)
            if not stored:
                # NX refused: the key exists. With 256 random bits that can only be this
                # call's first attempt, retried after its reply was lost; check, not assume.
                existing = await self._redis.get(key)
                if existing is None or _text(existing) != session_id:
                    raise TokenStoreError("a new token's key already exists in Redis")
        except REDIS_ERRORS as exc:
            raise TokenStoreError(f"redis: {exc}") from exc
        return StreamToken(token, session_id, expiry(ttl_s, now), ttl_s)

    async def consume(self, token: str) -> str | None:
        try:
            value = await self._redis.getdel(self._key(token))
        except REDIS_ERRORS as exc:
            raise TokenStoreError(f"redis: {exc}") from exc
        if value is None:
            return None
        return _text(value)

    async def close(self) -> None:
        """Nothing to release: the shared client is closed by its owner."""
