"""The configured rates of a server and the backend that keeps count."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from voxgate import metrics
from voxgate.limits.base import Decision, RateLimiter
from voxgate.limits.memory import MemoryRateLimiter
from voxgate.limits.redis import RedisRateLimiter
from voxgate.limits.sqlite import SqliteRateLimiter
from voxgate.rates import RATE_NAMES, Rate, parse_rate

if TYPE_CHECKING:
    from voxgate.settings import Settings


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
