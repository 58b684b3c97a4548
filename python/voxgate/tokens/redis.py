"""Stream tokens in Redis, shared by every voxgate instance (``VOXGATE_REDIS_URL``).

A token is kept only as ``voxgate:token:<sha256>`` -> session id, written with
``SET NX EX ttl`` (never overwriting a key, expiring by itself) and used up
with ``GETDEL``, which Redis runs atomically: of two instances racing for one
token exactly one gets the session id.

The connection policy is explicit here, not whatever redis-py defaults to:

- ``socket_connect_timeout`` and ``socket_timeout`` 1 s: a token call sits on
  the path of a WebSocket upgrade or a mint request; a Redis that does not
  answer within a second is treated as down (503 or close 1013) rather than
  holding the client.
- retries: 2 more attempts after the first, 0.1 s then 0.2 s apart
  (:class:`ExponentialBackoff`, base 0.05 s, cap 0.5 s), only on connection
  errors and timeouts. That rides over a dropped pooled connection or a Redis
  failover of a few hundred milliseconds, and keeps the worst case near 3.5 s.
  ``BusyLoadingError`` (Redis still loading its AOF after a restart) is a
  connection error and is retried the same way. Errors Redis answers with
  (wrong password, wrong type) are not retried: they will not go away.
- A retried ``GETDEL`` whose first reply was lost finds the key gone and
  answers "unknown token": the client sees 4401 and mints another. A token is
  never accepted twice; at worst one is wasted.
- ``health_check_interval`` 15 s: a pooled connection idle for longer is
  PINGed before use, so a connection cut by a Redis restart is noticed and
  replaced before a command depends on it. TCP keepalive stays on.
- At most 64 connections per process; a caller waits up to 1 s for a free one
  (then ``TokenStoreError``): memory and Redis's client table stay bounded.
- The reply parser is hiredis when it is installed (``redis[hiredis]``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from voxgate.tokens.base import StreamToken, TokenStoreError, expiry, new_token, token_hash

log = logging.getLogger("voxgate.tokens")

KEY_PREFIX = "voxgate:token:"

CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 1.0
RETRIES = 2
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 0.5
HEALTH_CHECK_INTERVAL_S = 15
MAX_CONNECTIONS = 64
POOL_WAIT_S = 1.0

# What a Redis call can raise when Redis is unreachable, slow or refusing us.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def retry_policy() -> Retry:
    """Retries for connection errors and timeouts only, with exponential backoff."""
    return Retry(
        ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S),
        RETRIES,
        supported_errors=(RedisConnectionError, RedisTimeoutError),
    )


def redis_client(url: str) -> Redis:
    """A client for ``url`` with voxgate's timeouts, retries, health checks and pool bound."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        "retry": retry_policy(),
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "max_connections": MAX_CONNECTIONS,
        "timeout": POOL_WAIT_S,
        "client_name": "voxgate",
    }
    # from_pool: the client owns the pool and closes it with itself.
    return Redis.from_pool(BlockingConnectionPool.from_url(url, **options))


def redacted_url(url: str) -> str:
    """``url`` with its password replaced, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def hiredis_in_use() -> bool:
    """Whether redis-py parses replies with hiredis in this process."""
    return bool(HIREDIS_AVAILABLE)


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
