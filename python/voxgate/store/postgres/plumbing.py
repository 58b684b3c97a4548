"""The PostgreSQL store's pool: connecting, migrating, retrying a broken connection."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from voxgate.store import migrations
from voxgate.store.base import (
    StoreError,
)
from voxgate.store.postgres.common import BROKEN, FAILURE, RETRY, T, log, redact


class Plumbing:
    """The asyncpg pool and how every operation runs on it."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        migrate: bool = True,
        timeout_s: float = 30.0,
        events: bool = False,
    ) -> None:
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError("pool sizes need 0 <= pool_min <= pool_max and pool_max >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.dsn = dsn
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.migrate = migrate
        self.timeout_s = timeout_s
        self.events = events
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.dsn)})"

    # -- plumbing ----------------------------------------------------------------

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"postgres store {redact(self.dsn)}: {type(exc).__name__}: {exc}")

    async def _run(self, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``op(conn, *args)`` on a pooled connection; one retry when the connection broke."""
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        for attempt in (1, 2):
            acquired = False
            try:
                async with pool.acquire(timeout=self.timeout_s) as conn:
                    acquired = True
                    return await op(conn, *args)
            except RETRY as exc:
                # No connection to be had (server down, refused): no point in retrying.
                if attempt == 2 or not acquired:
                    raise self._error(exc) from exc
                if isinstance(exc, BROKEN):
                    # The server likely restarted: every idle connection is stale too.
                    await pool.expire_connections()
                log.info("postgres store: retrying after %s: %s", type(exc).__name__, exc)
            except FAILURE as exc:
                raise self._error(exc) from exc
        raise AssertionError("unreachable")

    # -- open and close ------------------------------------------------------------

    async def _create_pool(self, settings: dict[str, str]) -> asyncpg.Pool[asyncpg.Record]:
        try:
            return await asyncpg.create_pool(
                self.dsn,
                min_size=self.pool_min,
                max_size=self.pool_max,
                timeout=self.timeout_s,
                command_timeout=self.timeout_s,
                server_settings={"application_name": "voxgate", **settings},
            )
        except (*FAILURE, ValueError) as exc:
            raise self._error(exc) from exc

    async def open(self) -> None:
        """Connect the pool and apply (or check) migrations; StoreError when that fails."""
        if self._pool is not None:
            return
        pool = await self._create_pool({})
        try:
            async with pool.acquire(timeout=self.timeout_s) as conn:
                if self.migrate:
                    applied = await migrations.apply(conn)
                    for migration in applied:
                        log.info(
                            "applied migration %04d_%s to %s",
                            migration.version,
                            migration.name,
                            redact(self.dsn),
                        )
                else:
                    await migrations.check(conn)
                synchronous_commit = await conn.fetchval("SHOW synchronous_commit")
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, FAILURE):
                raise self._error(exc) from exc
            raise
        if synchronous_commit == "off":
            # An ack promises durability: a commit must not return before its WAL is flushed.
            # Any other value (local, remote_write, on, remote_apply) flushes locally at least.
            log.warning(
                "%s has synchronous_commit=off; voxgate's connections set it on",
                redact(self.dsn),
            )
            pool.terminate()
            pool = await self._create_pool({"synchronous_commit": "on"})
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout_s)
        except TimeoutError:
            pool.terminate()
