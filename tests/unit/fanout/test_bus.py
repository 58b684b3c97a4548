"""The Redis event bus against a real Redis: subscriptions, delivery, loss and recovery."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import redis

from services import RedisServer
from voxgate.fanout.bus import OUTBOX_LIMIT, RESYNC_MESSAGE, BusError, LocalBus, RedisBus
from voxgate.redis_client import redis_client


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.resyncs: list[Sequence[str] | None] = []
        self.changed = asyncio.Event()

    def deliver(self, session_id: str, message: bytes) -> None:
        self.messages.append((session_id, message))
        self.changed.set()

    def resync(self, session_ids: Sequence[str] | None) -> None:
        self.resyncs.append(session_ids)
        self.changed.set()

    async def until(self, done: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def started_bus(url: str, prefix: str, inbox: Inbox) -> AsyncIterator[RedisBus]:
    """A bus on a client made as the server makes it, started; stopped and closed after."""
    client = redis_client(url)
    bus = RedisBus(client, prefix=prefix)
    await bus.start(inbox.deliver, inbox.resync)
    try:
        yield bus
    finally:
        await bus.stop()
        await client.aclose()


@pytest.fixture
async def buses(redis_server: RedisServer) -> AsyncIterator[tuple[RedisBus, Inbox, str]]:
    """A started bus with its own channel prefix, its inbox, and that prefix."""
    prefix = f"voxgate:test:{uuid.uuid4().hex[:8]}:"
    inbox = Inbox()
    async with started_bus(redis_server.url, prefix, inbox) as bus:
        yield bus, inbox, prefix


def subscribers(redis_server: RedisServer, channel: str) -> int:
    with redis.Redis.from_url(redis_server.url) as client:
        counts = client.pubsub_numsub(channel)
        return int(counts[0][1])


async def test_only_subscribed_sessions_are_delivered(
    buses: tuple[RedisBus, Inbox, str], redis_server: RedisServer
) -> None:
    bus, inbox, prefix = buses
    await bus.subscribe("ses_a")
    assert subscribers(redis_server, prefix + "ses_a") == 1
    bus.publish("ses_b", b"not for us")
    bus.publish("ses_a", b"one")
    bus.publish("ses_a", b"two")
    await inbox.until(lambda: len(inbox.messages) == 2)
    assert inbox.messages == [("ses_a", b"one"), ("ses_a", b"two")]

    bus.unsubscribe("ses_a")
    for _ in range(100):
        if subscribers(redis_server, prefix + "ses_a") == 0:
            break
        await asyncio.sleep(0.02)
    assert subscribers(redis_server, prefix + "ses_a") == 0
    assert bus.stats()["subscriptions"] == 0


async def test_unsubscribe_then_subscribe_again_keeps_the_subscription(
    buses: tuple[RedisBus, Inbox, str],
) -> None:
    bus, inbox, _ = buses
    await bus.subscribe("ses_a")
    bus.unsubscribe("ses_a")
    await bus.subscribe("ses_a")  # confirmed by its own SUBSCRIBE, after the UNSUBSCRIBE
    bus.publish("ses_a", b"still here")
    await inbox.until(lambda: bool(inbox.messages))
    assert inbox.messages == [("ses_a", b"still here")]


async def test_a_lost_subscriber_connection_resyncs_everything(
    buses: tuple[RedisBus, Inbox, str], redis_server: RedisServer
) -> None:
    bus, inbox, prefix = buses
    await bus.subscribe("ses_a")
    with redis.Redis.from_url(redis_server.url) as client:
        killed = client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    await inbox.until(lambda: inbox.resyncs == [None])
    # Subscribed again on the new connection.
    for _ in range(100):
        if subscribers(redis_server, prefix + "ses_a") == 1:
            break
        await asyncio.sleep(0.02)
    bus.publish("ses_a", b"after")
    await inbox.until(lambda: ("ses_a", b"after") in inbox.messages)
    assert bus.stats()["reconnects"] >= 1


async def test_an_overflowing_outbox_drops_the_oldest_and_leaves_a_hint(
    buses: tuple[RedisBus, Inbox, str],
) -> None:
    bus, inbox, _ = buses
    await bus.subscribe("ses_a")
    await bus.subscribe("ses_b")
    # Published faster than anything can be sent (no await in between): the outbox overflows.
    bus.publish("ses_a", b"oldest")
    for i in range(OUTBOX_LIMIT):
        bus.publish("ses_b", b"%d" % i)
    assert bus.stats()["dropped"] == 1
    await inbox.until(lambda: ("ses_a", RESYNC_MESSAGE) in inbox.messages)
    assert ("ses_a", b"oldest") not in inbox.messages
    await inbox.until(lambda: len(inbox.messages) == OUTBOX_LIMIT + 1)


async def test_publishing_while_redis_is_down_never_blocks(redis_server: RedisServer) -> None:
    prefix = f"voxgate:test:{uuid.uuid4().hex[:8]}:"
    listening, publishing = Inbox(), Inbox()
    async with (
        started_bus(redis_server.url, prefix, listening) as receiver,
        started_bus(redis_server.url, prefix, publishing) as sender,
    ):
        await receiver.subscribe("ses_a")
        redis_server.stop()
        sender.publish("ses_a", b"lost")
        for _ in range(100):
            if sender.stats()["dropped"]:
                break
            await asyncio.sleep(0.05)
        assert sender.stats()["dropped"] == 1
        redis_server.start()
        # The receiver knows it may have missed messages: its feeds re-read the store.
        await listening.until(lambda: listening.resyncs == [None], within=20)
        sender.publish("ses_a", b"back")
        await listening.until(lambda: ("ses_a", b"back") in listening.messages)
        assert ("ses_a", b"lost") not in listening.messages


async def test_subscribing_without_redis_fails_in_bounded_time() -> None:
    async with started_bus("redis://127.0.0.1:1/0", "voxgate:events:", Inbox()) as bus:
        with pytest.raises(BusError):
            await bus.subscribe("ses_a")
        bus.publish("ses_a", b"nowhere")  # never blocks, never raises


async def test_the_local_bus_delivers_subscribed_sessions_only() -> None:
    bus = LocalBus()
    inbox = Inbox()
    await bus.start(inbox.deliver, inbox.resync)
    await bus.subscribe("ses_a")
    bus.publish("ses_a", b"yes")
    bus.publish("ses_b", b"no")
    bus.unsubscribe("ses_a")
    bus.publish("ses_a", b"no longer")
    assert inbox.messages == [("ses_a", b"yes")]
    await bus.stop()
