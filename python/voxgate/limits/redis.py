"""Rate limits in Redis: one allowance shared by every instance using that Redis."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from voxgate import metrics
from voxgate.limits.base import Decision, RateLimiter
from voxgate.rates import Rate
from voxgate.redis_client import REDIS_ERRORS, redis_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("voxgate.limits")

# A Redis check that fails with any of these is allowed (limits fail open).
_CHECK_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, ValueError, TypeError)

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


class RedisRateLimiter(RateLimiter):
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
