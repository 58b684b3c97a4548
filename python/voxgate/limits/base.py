"""What every rate-limit backend shares: the decision, the GCRA step, the abstract backend."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import NamedTuple

from voxgate.rates import Rate


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


class RateLimiter(ABC):
    """Counts hits per key against a rate; implementations must be atomic per key.

    A backend that cannot reach its storage allows the request (limits fail
    open) and counts the failure in ``voxgate_rate_limit_errors_total``.
    """

    @abstractmethod
    async def hit(self, name: str, key: str, rate: Rate, *, count: bool = True) -> Decision:
        """Count one request for ``key`` under limit ``name`` and decide.

        With ``count`` false, only decide: would one more request be allowed now.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""
