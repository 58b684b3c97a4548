"""The event bus: carries a session's events to every process that has listeners for it.

Two implementations of :class:`EventBus`:

- :class:`LocalBus` (no ``VOXGATE_REDIS_URL``): delivery within this process.
- :class:`RedisBus`: Redis pub/sub, one channel per session
  (``voxgate:events:<session id>``). Publishing never waits for Redis: messages
  go to a bounded outbox that one task sends in pipelines. Receiving uses one
  connection per process, subscribed to exactly the sessions this process has
  listeners for (SUBSCRIBE on the first, UNSUBSCRIBE after the last); local
  routing to listeners is the hub's. Nothing here keeps per-session state once
  a session is unsubscribed.

Pub/sub is at-most-once. Where messages may have been lost the bus says so
through ``resync`` (after the subscriber reconnects: every session; after
the publisher dropped messages: a ``{"k":"r"}`` hint on each affected
session's channel once Redis answers again), and feeds re-read the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import orjson
import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript

from voxgate.errors import VoxgateError
from voxgate.redis_client import keep_connected

log = logging.getLogger("voxgate.fanout")

CHANNEL_PREFIX = "voxgate:events:"
# A bus message asking subscribers to re-read the store: messages for the session were lost.
RESYNC_MESSAGE = orjson.dumps({"k": "r"})

# Called with (session id, message) for each message of a subscribed session.
Deliver = Callable[[str, bytes], None]
# Called with the sessions whose messages may have been lost (None: all of them).
Resync = Callable[[Sequence[str] | None], None]

# Publishes ARGV[i] on channel KEYS[i], for every i.
_PUBLISH_SCRIPT = "for i = 1, #KEYS do redis.call('PUBLISH', KEYS[i], ARGV[i]) end"
_SUBSCRIBE_TIMEOUT_S = 5.0
_PING_INTERVAL_S = 5.0
_PUBLISH_BATCH = 512
# Sessions remembered for a resync hint; beyond this (a long outage) their listeners
# still resync when their own subscriber reconnects, which such an outage causes too.
_LOST_LIMIT = 100_000
OUTBOX_LIMIT = 65_536
_WARN_EVERY_S = 10.0


class BusError(VoxgateError):
    """The bus cannot take a subscription right now (Redis unreachable)."""


class EventBus(Protocol):
    """Publish and subscribe session events; ``start`` before use, ``stop`` at shutdown."""

    # True when a message may be wanted by another process: publish even without local feeds.
    broadcast: bool

    async def start(self, deliver: Deliver, resync: Resync) -> None:
        """Begin delivering subscribed sessions' messages to ``deliver``."""

    async def stop(self) -> None:
        """Send what is queued (briefly), then release connections."""

    def publish(self, session_id: str, message: bytes) -> None:
        """Queue ``message`` for the session's subscribers; never blocks, never raises."""

    async def subscribe(self, session_id: str) -> None:
        """Return once every message published from now on reaches ``deliver``.

        Raises :class:`BusError` when that cannot be promised in a few seconds.
        """

    def unsubscribe(self, session_id: str) -> None:
        """Stop delivering the session's messages and forget it."""

    def stats(self) -> dict[str, int]:
        """Counters: subscriptions, published, dropped."""


class LocalBus:
    """Delivery within this process: publishing hands the message straight to ``deliver``."""

    broadcast = False

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._subscribed: set[str] = set()
        self.published = 0

    async def start(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None
        self._subscribed.clear()

    def publish(self, session_id: str, message: bytes) -> None:
        if self._deliver is not None and session_id in self._subscribed:
            self.published += 1
            self._deliver(session_id, message)

    async def subscribe(self, session_id: str) -> None:
        self._subscribed.add(session_id)

    def unsubscribe(self, session_id: str) -> None:
        self._subscribed.discard(session_id)

    def stats(self) -> dict[str, int]:
        return {"subscriptions": len(self._subscribed), "published": self.published, "dropped": 0}


class RedisBus:
    """Redis pub/sub: one channel per session, one subscriber connection per process."""

    broadcast = True

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = CHANNEL_PREFIX) -> None:
        """Publish through ``client`` (shared; its owner closes it); subscribe on a
        connection of its own made with the client's connection settings."""
        self._prefix = prefix
        self._client: redis.asyncio.Redis | None = client
        self._script: AsyncScript | None = None
        self._deliver: Deliver | None = None
        self._resync: Resync | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Publishing.
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._outbox_empty.set()
        self._lost: set[str] = set()  # sessions whose messages were dropped: hint once sent
        self.published = 0
        self.dropped = 0
        self._warned = 0.0
        # Subscribing. ``_channels``: session -> waiter of its newest SUBSCRIBE, None once
        # confirmed. ``_pending``: per session, the waiters of SUBSCRIBEs sent and not yet
        # confirmed, oldest first (Redis confirms in order; None for abandoned ones).
        self._channels: dict[str, asyncio.Future[None] | None] = {}
        self._pending: dict[str, collections.deque[asyncio.Future[None] | None]] = {}
        self._commands: collections.deque[tuple[bytes, ...]] = collections.deque()
        self._commands_ready = asyncio.Event()
        self._connected = False
        self._first = True  # no subscriber connection made yet: nothing to resync after it
        self.reconnects = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver
        self._resync = resync
        assert self._client is not None
        self._script = self._client.register_script(_PUBLISH_SCRIPT)
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="voxgate-bus-publish"),
            asyncio.create_task(self._subscribe_loop(), name="voxgate-bus-subscribe"),
        ]

    async def stop(self) -> None:
        if self._tasks:
            publisher, subscriber = self._tasks
            subscriber.cancel()
            # Let queued messages go out for a moment: listeners elsewhere may wait for them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._outbox_empty.wait()
            publisher.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for waiter in self._channels.values():
            if waiter is not None and not waiter.done():
                waiter.cancel()
        self._channels.clear()
        self._pending.clear()

    async def drained(self) -> None:
        """Return once everything published so far was handed to Redis (or dropped)."""
        await self._outbox_empty.wait()

    def stats(self) -> dict[str, int]:
        return {
            "subscriptions": len(self._channels),
            "published": self.published,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
        }

    # -- publishing --------------------------------------------------------------------

    def publish(self, session_id: str, message: bytes) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            lost, _ = self._outbox.popleft()
            if len(self._lost) < _LOST_LIMIT:
                self._lost.add(lost)
            self.dropped += 1
        self._outbox.append((session_id, message))
        self._outbox_empty.clear()
        self._outbox_ready.set()

    async def _publish_loop(self) -> None:
        client = self._client
        assert client is not None
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox or self._lost:
                batch: list[tuple[str, bytes]] = []
                while self._outbox and len(batch) < _PUBLISH_BATCH:
                    batch.append(self._outbox.popleft())
                hints = list(self._lost)
                channels = [self._prefix + sid for sid, _ in batch]
                channels += [self._prefix + sid for sid in hints]
                messages = [message for _, message in batch] + [RESYNC_MESSAGE] * len(hints)
                try:
                    await self._send_batch(client, channels, messages)
                except (redis.exceptions.RedisError, OSError) as exc:
                    self.dropped += len(batch)
                    for session_id, _ in batch:
                        if len(self._lost) < _LOST_LIMIT:
                            self._lost.add(session_id)
                    self._warn("cannot publish to Redis (%d messages dropped so far): %s", exc)
                    await asyncio.sleep(0.5)
                    continue
                self.published += len(batch)
                self._lost.difference_update(hints)
            self._outbox_empty.set()

    async def _send_batch(
        self, client: redis.asyncio.Redis, channels: list[str], messages: list[bytes]
    ) -> None:
        # One EVALSHA publishes the whole batch: a third of the client CPU of a pipeline.
        if self._script is not None:
            try:
                await self._script(keys=channels, args=messages)
                return
            except redis.exceptions.ResponseError as exc:
                log.warning("event bus: Redis refused the publish script (%s): pipelining", exc)
                self._script = None
        pipe = client.pipeline(transaction=False)
        for channel, message in zip(channels, messages, strict=True):
            pipe.publish(channel, message)
        await pipe.execute()

    def _warn(self, message: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning(message, self.dropped, exc)

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(self, session_id: str) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        old = self._channels.get(session_id)
        if old is not None and not old.done():
            old.cancel()
        self._channels[session_id] = waiter
        if self._connected:
            self._pending.setdefault(session_id, collections.deque()).append(waiter)
            self._send(b"SUBSCRIBE", session_id)
        try:
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_S):
                await asyncio.shield(waiter)
        except TimeoutError:
            raise BusError("Redis did not confirm the subscription in time") from None

    def unsubscribe(self, session_id: str) -> None:
        waiter = self._channels.pop(session_id, None)
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if self._connected:
            self._send(b"UNSUBSCRIBE", session_id)

    def _send(self, command: bytes, session_id: str | None = None) -> None:
        if session_id is None:
            self._commands.append((command,))
        else:
            self._commands.append((command, (self._prefix + session_id).encode()))
        self._commands_ready.set()

    async def _subscribe_loop(self) -> None:
        await keep_connected(
            self._subscription,
            self._warn_subscriber,
            name="event bus subscriber",
            min_delay_s=0.1,
            max_delay_s=2.0,
        )

    async def _subscription(self, connected: Callable[[], None]) -> None:
        """One subscriber connection: (re)subscribe, then read and write until it fails."""
        client = self._client
        assert client is not None
        pool = client.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            self._on_connected(conn, self._first)
            self._first = False
            connected()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(conn))
                group.create_task(self._write(conn))
        finally:
            self._connected = False
            self._commands.clear()
            self._pending.clear()
            with contextlib.suppress(Exception):
                await conn.disconnect()

    def _on_connected(self, conn: AbstractConnection, first: bool) -> None:
        self._connected = True
        self._commands.clear()
        self._pending = {sid: collections.deque([w]) for sid, w in self._channels.items()}
        if self._channels:
            names = [(self._prefix + sid).encode() for sid in self._channels]
            self._commands.append((b"SUBSCRIBE", *names))
            self._commands_ready.set()
        if not first:
            self.reconnects += 1
            log.info("event bus: reconnected to Redis; listeners re-read the store")
            assert self._resync is not None
            self._resync(None)

    def _warn_subscriber(self, error: BaseException) -> None:
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning("event bus: Redis subscriber connection lost: %s", error)

    async def _write(self, conn: AbstractConnection) -> None:
        while True:
            await self._commands_ready.wait()
            self._commands_ready.clear()
            if self._commands:
                commands = list(self._commands)
                self._commands.clear()
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _read(self, conn: AbstractConnection) -> None:
        deliver = self._deliver
        assert deliver is not None
        prefix = len(self._prefix)
        pinged = False
        while True:
            response = await conn.read_response(timeout=_PING_INTERVAL_S, push_request=True)
            if response is None:
                if pinged:
                    raise redis.exceptions.ConnectionError("Redis did not answer PING")
                pinged = True
                self._send(b"PING")
                continue
            pinged = False
            kind = response[0]
            if kind == b"message":
                deliver(response[1][prefix:].decode(), response[2])
            elif kind == b"subscribe":
                self._confirmed(response[1][prefix:].decode())

    def _confirmed(self, session_id: str) -> None:
        queue = self._pending.get(session_id)
        if not queue:
            return
        waiter = queue.popleft()
        if not queue:
            del self._pending[session_id]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            if self._channels.get(session_id) is waiter:
                self._channels[session_id] = None
