"""Abuse limits: request rates per API key or client IP, and caps on concurrent connections.

Rates use GCRA (the generic cell rate algorithm): a limit of ``COUNT/PERIOD``
lets a client make ``COUNT`` requests at once, then one more every
``PERIOD / COUNT``; a client that stays quiet for ``PERIOD`` has all of them
back. One timestamp per key, updated atomically: in process memory, in a
SQLite file the workers of one host share, or in Redis through one Lua
script when ``VOXGATE_REDIS_URL`` is set, so every instance sharing that
Redis shares the limits.

Refusals are ``429`` problem details with ``Retry-After`` and the IETF draft
headers ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``
(seconds until the full allowance is back); successful limited responses
carry the same three headers. WebSocket refusals close with 4429.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from voxgate import metrics
from voxgate.apikeys import CALLER_SCOPE_KEY, ApiKey
from voxgate.clientip import client_ip
from voxgate.errors import ApiError
from voxgate.rates import (
    PER_KEY,
    RATE_NAMES,
    Rate,
    parse_rate,
)
from voxgate.tokens.redis import REDIS_ERRORS, redis_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from voxgate.runtime import Runtime
    from voxgate.settings import Settings

log = logging.getLogger("voxgate.limits")

# A Redis check that fails with any of these is allowed (limits fail open).
_CHECK_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, ValueError, TypeError)

# Where a guard leaves its decision for the response headers (see voxgate.observe).
SCOPE_KEY = "voxgate.rate_limit"


class Decision(NamedTuple):
    """One rate-limit check: allowed or not, and what the headers say."""

    allowed: bool
    rate: Rate
    remaining: int
    reset_s: float  # until the whole allowance is back
    retry_after_s: float  # until the next request is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.rate.requests),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
            "RateLimit-Policy": str(self.rate),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


def gcra(tat: float, now: float, rate: Rate) -> tuple[Decision, float]:
    """The decision for a request at ``now`` given the stored theoretical arrival time.

    Returns the decision and the new stored value (unchanged when refused).
    """
    interval = rate.period_s / rate.requests
    tat = max(tat, now)
    new_tat = tat + interval
    allow_at = new_tat - rate.period_s
    if now < allow_at:
        return Decision(False, rate, 0, tat - now, allow_at - now), tat
    remaining = int((now - allow_at) / interval + 1e-9)
    return Decision(True, rate, remaining, new_tat - now, 0.0), new_tat


class RateLimiter(Protocol):
    """Counts hits per key against a rate; implementations must be atomic per key."""

    async def hit(self, name: str, key: str, rate: Rate, *, count: bool = True) -> Decision:
        """Count one request for ``key`` under limit ``name`` and decide.

        With ``count`` false, only decide: would one more request be allowed now.
        """

    async def close(self) -> None:
        """Release connections."""


class MemoryRateLimiter:
    """GCRA in this process's memory: limits are per worker process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tat: dict[tuple[str, str], float] = {}
        self._next_purge = 0.0

    async def hit(self, name: str, key: str, rate: Rate, *, count: bool = True) -> Decision:
        now = self._clock()
        if now >= self._next_purge:  # forget keys whose allowance is whole again
            self._tat = {k: tat for k, tat in self._tat.items() if tat > now}
            self._next_purge = now + 60.0
        decision, tat = gcra(self._tat.get((name, key), now), now, rate)
        if count:
            self._tat[(name, key)] = tat
        return decision

    async def close(self) -> None:
        self._tat.clear()


# KEYS[1]: the key; ARGV: period in microseconds, count, and 1 to count the hit (0:
# only decide). Redis's own clock, so every instance agrees on "now". Returns
# allowed, remaining, reset, retry (us).
_GCRA_LUA = """
local period = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = period / count
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if now < allow_at then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
if ARGV[3] ~= '0' then
  local ttl = math.ceil((new_tat - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
end
return {1, math.floor((now - allow_at) / interval + 1e-9), math.ceil(new_tat - now), 0}
"""


class RedisRateLimiter:
    """GCRA in Redis, one atomic Lua script per check, shared by every instance.

    When Redis cannot answer, the request is allowed (limits fail open so an
    outage of Redis does not stop ingest) and ``voxgate_rate_limit_errors_total``
    counts it.
    """

    def __init__(
        self, client: Redis, prefix: str = "voxgate:rl:", *, owns_client: bool = False
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._owns_client = owns_client  # a client shared with the token store stays open
        self._script = client.register_script(_GCRA_LUA)

    @classmethod
    def from_url(cls, url: str) -> RedisRateLimiter:
        """A limiter with a client of its own, built as every voxgate Redis client is."""
        return cls(redis_client(url), owns_client=True)

    async def hit(self, name: str, key: str, rate: Rate, *, count: bool = True) -> Decision:
        try:
            reply = await self._script(
                keys=[f"{self._prefix}{name}:{key}"],
                args=[int(rate.period_s * 1_000_000), rate.requests, int(count)],
            )
            allowed, remaining, reset_us, retry_us = (int(v) for v in reply)
        except _CHECK_ERRORS as exc:
            metrics.RATE_LIMIT_ERRORS.inc()
            log.warning("rate limit check failed, allowing: %s", exc)
            return Decision(True, rate, rate.requests, 0.0, 0.0)
        return Decision(bool(allowed), rate, remaining, reset_us / 1e6, retry_us / 1e6)

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()


class SqliteRateLimiter:
    """GCRA in a SQLite file: shared by the worker processes of one host.

    ``voxgate serve --workers N`` without Redis keeps its counts here, in the
    data dir, so a client gets one allowance per host rather than one per
    worker. Fails open like :class:`RedisRateLimiter`.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = asyncio.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA synchronous=OFF")  # counts need not survive a power cut
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS rate_limits (key TEXT PRIMARY KEY, tat REAL NOT NULL)"
        )
        self._next_purge = 0.0

    def _hit(self, key: str, rate: Rate, count: bool) -> Decision:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time: the check and update are atomic
        try:
            now = self._clock()
            row = db.execute("SELECT tat FROM rate_limits WHERE key = ?", (key,)).fetchone()
            decision, tat = gcra(float(row[0]) if row else now, now, rate)
            if decision.allowed and count:
                db.execute(
                    "INSERT OR REPLACE INTO rate_limits (key, tat) VALUES (?, ?)", (key, tat)
                )
            if now >= self._next_purge:
                db.execute("DELETE FROM rate_limits WHERE tat <= ?", (now,))
                self._next_purge = now + 60.0
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return decision

    async def hit(self, name: str, key: str, rate: Rate, *, count: bool = True) -> Decision:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._hit, f"{name}:{key}", rate, count)
            except sqlite3.Error as exc:
                metrics.RATE_LIMIT_ERRORS.inc()
                log.warning("rate limit check failed, allowing: %s", exc)
                return Decision(True, rate, rate.requests, 0.0, 0.0)

    async def close(self) -> None:
        self._db.close()


class Limits:
    """The configured rates of this server and the limiter that keeps count.

    The limiter: Redis when ``VOXGATE_REDIS_URL`` is set (every instance
    shares it), else ``shared_file`` when given (every worker of this host
    shares it), else this process's memory.
    """

    def __init__(
        self,
        settings: Settings,
        limiter: RateLimiter | None = None,
        *,
        shared_file: Path | None = None,
    ) -> None:
        self.rates: Mapping[str, Rate | None] = {
            name: parse_rate(getattr(settings, f"rate_limit_{name}")) for name in RATE_NAMES
        }
        if limiter is None:
            if settings.redis_url:
                limiter = RedisRateLimiter.from_url(settings.redis_url)
            elif shared_file is not None:
                limiter = SqliteRateLimiter(shared_file)
            else:
                limiter = MemoryRateLimiter()
        self.limiter = limiter

    async def check(self, name: str, key: str, *, count: bool = True) -> Decision | None:
        """Count a hit of ``key`` under ``name``; None when that limit is off.

        With ``count`` false the hit is not counted: only whether one would be allowed.
        """
        rate = self.rates[name]
        if rate is None:
            return None
        decision = await self.limiter.hit(name, key, rate, count=count)
        if not decision.allowed and count:
            metrics.RATE_LIMITED.labels(name).inc()
        return decision

    async def close(self) -> None:
        await self.limiter.close()


Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def limit_key(connection: ASGIConnection[Any, Any, Any, Any], name: str) -> str:
    """Whom limit ``name`` counts for this request: its API key's name, else its client IP.

    The limits of :data:`voxgate.rates.PER_KEY` count per API key when the
    request was authenticated with one (a backend acting for many users
    shares one address); every other limit counts per client IP.
    """
    if name in PER_KEY:
        key = connection.scope.get(CALLER_SCOPE_KEY)
        if isinstance(key, ApiKey):
            return f"key:{key.name}"
    runtime: Runtime = connection.app.state.runtime
    return f"ip:{client_ip(connection.scope, runtime.trusted_proxies)}"


async def enforce(connection: ASGIConnection[Any, Any, Any, Any], name: str) -> Decision | None:
    """Check limit ``name`` for the caller (:func:`limit_key`); raises ApiError 429 when over.

    The decision is also left in the scope so the response carries the
    ``RateLimit-*`` headers. Usable from any handler, HTTP or WebSocket.
    """
    runtime: Runtime = connection.app.state.runtime
    decision = await runtime.limits.check(name, limit_key(connection, name))
    if decision is None:
        return None
    connection.scope[SCOPE_KEY] = decision  # type: ignore[literal-required]
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests: at most {decision.rate.requests} per "
            f"{decision.rate.period_s:g} s; retry in {math.ceil(decision.retry_after_s)} s",
            headers=decision.headers(),
        )
    return decision


def rate_limited(name: str) -> Guard:
    """A Litestar guard enforcing limit ``name`` per API key or client IP (:func:`limit_key`).

    ``rate_limited(TRANSCRIPTS)`` is the guard for the transcript relay
    endpoint: attach it with ``guards=[...]`` there.
    """
    if name not in RATE_NAMES:
        raise ValueError(f"unknown rate limit {name!r}")

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        await enforce(connection, name)

    guard.__name__ = f"rate_limited_{name}"
    return guard


class ConnectionCounter:
    """Open connections per key (client IP) in this process, capped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Count one more connection for ``key``; False (and nothing counted) when at the cap."""
        n = self._open.get(key, 0)
        if self.cap and n >= self.cap:
            return False
        self._open[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def count(self, key: str) -> int:
        return self._open.get(key, 0)
