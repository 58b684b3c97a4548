"""Abuse limits: request rates per client IP, and caps on concurrent connections.

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

Backends, one per file, behind :class:`~voxgate.limits.base.RateLimiter`:
:mod:`.memory`, :mod:`.sqlite` (a file the workers of one host share) and
:mod:`.redis`. :mod:`.policy` holds the configured rates and picks the
backend; :mod:`.connections` caps concurrent connections. The Litestar guards
that enforce the rates on requests are the API's: :mod:`voxgate.api.ratelimit`.
"""

from voxgate.limits.base import Decision, RateLimiter, gcra
from voxgate.limits.connections import ConnectionCounter
from voxgate.limits.memory import MemoryRateLimiter
from voxgate.limits.policy import Limits
from voxgate.limits.redis import RedisRateLimiter
from voxgate.limits.sqlite import SqliteRateLimiter

__all__ = [
    "ConnectionCounter",
    "Decision",
    "Limits",
    "MemoryRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "SqliteRateLimiter",
    "gcra",
]
