"""Rate limits in this process's memory: one allowance per worker process."""

from __future__ import annotations

import time
from collections.abc import Callable

from voxgate.limits.base import Decision, RateLimiter, gcra
from voxgate.rates import Rate


class MemoryRateLimiter(RateLimiter):
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
