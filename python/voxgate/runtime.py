"""The composition root: the live parts of one server process, built from settings.

:class:`Runtime` builds each part and hands it its collaborators (store,
writer, ledger, registry of streams, tokens, limits, the fan-out hub and its
bus, retention); it starts them in order and stops them in reverse. Nothing
outside ``app.py`` and the API reaches into it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from voxgate import metrics
from voxgate.clientip import parse_networks
from voxgate.core import native as _native
from voxgate.fanout.bus import LocalBus, RedisBus
from voxgate.fanout.hub import Hub
from voxgate.granian_internals import take_over_worker_signals
from voxgate.heap import HeapTrimmer
from voxgate.ingest.claims import ClaimChannel
from voxgate.ingest.stream import StreamRegistry
from voxgate.ingest.writer import Writer
from voxgate.limits import Limits, RedisRateLimiter
from voxgate.redis_client import REDIS_ERRORS, hiredis_in_use, redacted_url, redis_client
from voxgate.retention.runner import Retention, RetentionSchedule
from voxgate.settings import WORKERS_ENV, Settings, ensure_api_keys
from voxgate.store.base import Store
from voxgate.store.postgres import PostgresStore
from voxgate.store.sqlite import SqliteStore
from voxgate.tokens.base import TokenStore
from voxgate.tokens.memory import MemoryTokenStore
from voxgate.tokens.metered import MeteredTokenStore
from voxgate.tokens.redis import RedisTokenStore
from voxgate.tokens.sqlite import SqliteTokenStore
from voxgate.webhooks.runner import WebhookRunner

log = logging.getLogger("voxgate")

# ``voxgate serve`` imports WORKERS_ENV from here.
__all__ = ["WORKERS_ENV", "Runtime", "store_for"]


_SINGLE_INSTANCE = (
    "VOXGATE_REDIS_URL is not set: stream tokens live in %s, so this is single-instance "
    "only; set VOXGATE_REDIS_URL before running a second instance"
)


def store_for(settings: Settings) -> Store:
    """The store ``settings`` select (unopened): PostgreSQL with a URL, else the embedded one."""
    if settings.database_url:
        # PostgreSQL's commit is the durability point at either durability level.
        return PostgresStore(
            settings.database_url,
            pool_min=settings.database_pool_min,
            pool_max=settings.database_pool_max,
            migrate=settings.database_migrate,
            timeout_s=settings.database_timeout_s,
            events=bool(settings.webhook_url),
        )
    return SqliteStore(
        Path(settings.data_dir),
        durability=settings.durability,
        segment_max_bytes=settings.segment_max_bytes,
        events=bool(settings.webhook_url),  # with webhooks, transitions enqueue events
    )


class Runtime:
    """Store, writer, tokens, ledger and open streams of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_keys, generated = ensure_api_keys(settings)
        if generated is not None:
            log.warning("generated an API key, kept in %s/api_key", settings.data_dir)
        log.info(
            "API keys: %s",
            ", ".join(f"{k.name} ({'admin' if k.admin else 'tenant'})" for k in self.api_keys),
        )
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store_for(settings)
        self.streams = StreamRegistry()
        self.tokens: TokenStore
        # Redis, when configured, is shared by every instance: tokens and takeover notices.
        self.redis: Redis | None = None
        self.claims: ClaimChannel | None = None
        if settings.redis_url:
            self.redis = redis_client(settings.redis_url)
            self.tokens = RedisTokenStore(self.redis)
            self.claims = ClaimChannel(self.redis, self.streams.supersede)
            self.streams.announce = self.claims.announce
            log.info(
                "stream tokens in Redis at %s (hiredis parser: %s)",
                redacted_url(settings.redis_url),
                "yes" if hiredis_in_use() else "no",
            )
        elif settings.serve_workers > 1:
            # Worker processes must share tokens: a file every worker of this host sees.
            self.tokens = SqliteTokenStore(data_dir / "tokens.db")
            log.warning(_SINGLE_INSTANCE, "a file of this host's data dir")
        else:
            self.tokens = MemoryTokenStore()
            log.warning(_SINGLE_INSTANCE, "this process's memory")
        self.tokens = MeteredTokenStore(self.tokens)
        workers = settings.serve_workers
        self.limits = Limits(
            settings,
            # The one Redis client of this process, when there is Redis.
            RedisRateLimiter(self.redis) if self.redis is not None else None,
            shared_file=data_dir / "limits.db" if workers > 1 else None,
        )
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.writer = Writer(
            self.store, max_frames=settings.commit_max_frames, max_bytes=settings.commit_max_bytes
        )
        self.ledger = _native.Ledger(
            settings.window_bytes,
            settings.global_high_bytes,
            settings.global_low_bytes,
            # Hard cap: credit already granted may overshoot the high watermark by this much.
            2 * settings.global_high_bytes,
        )
        bus = RedisBus(self.redis) if self.redis is not None else LocalBus()
        self.hub = Hub(settings, self.store, bus, self.streams.window_of)
        self.writer.on_commit = self.hub.committed
        self.retention = Retention(self.store, settings)
        self.retention_schedule = RetentionSchedule(self.retention, settings.retention_at)
        self.heap = HeapTrimmer(settings.heap_trim_s)
        self.webhooks = WebhookRunner.from_settings(self.store, settings)
        self.draining = False
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log.info("hot-path core: %s", _native.__name__)
        await self.store.open()
        await self.writer.start()
        await self.hub.start()
        self.streams.start(self.store, self.settings.supersede_poll_s)
        self.retention_schedule.start()
        self.heap.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.redis is not None and self.claims is not None:
            self.claims.start()
            try:
                await self.redis.ping()
            except REDIS_ERRORS as exc:
                # Not fatal: minting answers 503 until Redis is back, then all recovers.
                log.error("Redis unreachable at start, tokens unavailable until it is: %s", exc)
        # Granian tears WebSockets down abruptly once its worker sees SIGTERM, before
        # the lifespan shutdown runs: drain first (streams close with 1001 after their
        # acks), then do what Granian's own handler does (its private API, fenced).
        take_over_worker_signals(asyncio.get_running_loop(), self._on_signal)
        # What exists after start-up lives as long as the process: keep it out of
        # every later collection (the ingest path allocates fast; full collections
        # that rescan the whole heap showed up as a fifth of the server's CPU).
        gc.collect()
        gc.freeze()
        # The store thread hands the GIL back and forth with the event loop; at the
        # default 5 ms each hand-over can stall a commit that long under load.
        sys.setswitchinterval(0.001)

    def sample_metrics(self) -> Coroutine[Any, Any, None]:
        """The loop that copies this process's ledger and fan-out figures into gauges."""
        hub = self.hub
        return metrics.sample(
            window_bytes=self.settings.window_bytes,
            ledger=self.ledger.stats,
            fanout=lambda: (len(hub.listeners), len(hub.feeds)),
            bus=hub.bus.stats,
        )

    def _on_signal(self, stop: Callable[[], object]) -> None:
        if self._drain is not None:
            return

        async def drain_then_stop() -> None:
            log.info(
                "draining: closing streams with 1001 within %gs", self.settings.shutdown_grace_s
            )
            try:
                self.draining = True
                self.hub.close_listeners()
                await self.streams.close_all(self.settings.shutdown_grace_s)
            finally:
                stop()  # Granian's handler: stop serving, then lifespan shutdown

        self._drain = asyncio.get_running_loop().create_task(drain_then_stop())

    async def stop(self) -> None:
        """Stop taking streams, close open ones with 1001, flush commits, close the store."""
        self.draining = True
        await self.retention_schedule.stop()
        await self.heap.stop()
        self.hub.close_listeners()
        await self.streams.close_all(self.settings.shutdown_grace_s)
        await self.writer.stop()
        await self.hub.stop(self.settings.shutdown_grace_s)
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.tokens.close()
        await self.limits.close()
        if self.claims is not None:
            await self.claims.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.store.close()
