"""Every Redis client of voxgate: how it is made, its retry policy, and reconnection.

One process has one client (``VOXGATE_REDIS_URL``), made by :func:`redis_client`
and shared by the token store, stream takeovers, rate limits and the event
bus; the runtime closes it. Long-lived subscriptions (stream takeovers, the
event bus) reconnect through one loop, :func:`keep_connected`.

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
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

log = logging.getLogger("voxgate.redis")

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


def is_redis_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says Redis is unreachable, slow or refusing us (a TaskGroup's
    exception group counts when every exception in it does)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_redis_failure(e) for e in exc.exceptions)
    return isinstance(exc, REDIS_ERRORS)


# One connected stretch of a subscription: connects, calls ``connected()`` once it is
# up, then serves until the connection fails (it raises) or the task is cancelled.
Session = Callable[[Callable[[], None]], Awaitable[None]]


async def keep_connected(
    session: Session,
    on_lost: Callable[[BaseException], None],
    *,
    name: str,
    min_delay_s: float = 0.1,
    max_delay_s: float = 5.0,
) -> None:
    """Run ``session`` again and again until cancelled: the one reconnect loop of
    voxgate's Redis subscriptions (stream takeovers, the event bus).

    A session that ends with a Redis failure (:func:`is_redis_failure`) is
    reported to ``on_lost``; any other exception is logged with its traceback
    as ``name`` failing. Either way the next attempt waits, doubling from
    ``min_delay_s`` up to ``max_delay_s``; a session that calls ``connected()``
    starts the doubling over. Never raises but ``CancelledError``.
    """
    delay = min_delay_s

    def connected() -> None:
        nonlocal delay
        delay = min_delay_s

    while True:
        try:
            await session(connected)
        except Exception as exc:
            if is_redis_failure(exc):
                on_lost(exc)
            else:
                log.error("%s failed, reconnecting", name, exc_info=exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)
