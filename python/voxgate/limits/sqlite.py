"""Rate limits in a SQLite file: one allowance shared by the worker processes of a host."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from voxgate import metrics
from voxgate.limits.base import Decision, RateLimiter, gcra
from voxgate.rates import Rate

log = logging.getLogger("voxgate.limits")


class SqliteRateLimiter(RateLimiter):
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
