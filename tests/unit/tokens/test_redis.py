"""The Redis token store and the takeover channel, against a real Redis server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from servers import free_port
from services import RedisServer
from voxgate.ingest.claims import CHANNEL, ClaimChannel, decode_claim, encode_claim
from voxgate.redis_client import hiredis_in_use, redacted_url, redis_client
from voxgate.tokens.base import TokenStoreError, token_hash
from voxgate.tokens.redis import KEY_PREFIX, RedisTokenStore


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = redis_client(redis_server.url)
    try:
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test alone, to stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_token_is_stored_only_as_its_hash_with_the_ttl(client: Redis) -> None:
    tokens = RedisTokenStore(client)
    minted = await tokens.mint("ses_hashed", 45)
    key = KEY_PREFIX + token_hash(minted.token)
    assert await client.get(key) == b"ses_hashed"
    assert 40 <= await client.ttl(key) <= 45
    async for name in client.scan_iter(match=f"{KEY_PREFIX}*"):
        assert minted.token.encode() not in name
        assert minted.token.encode() not in (await client.get(name) or b"")
    assert minted.ttl_s == 45
    assert minted.session_id == "ses_hashed"


async def test_a_token_is_consumed_once(client: Redis) -> None:
    tokens = RedisTokenStore(client)
    minted = await tokens.mint("ses_once", 60)
    assert await tokens.consume(minted.token) == "ses_once"
    assert await tokens.consume(minted.token) is None
    assert await tokens.consume("vgt_never_minted") is None


async def test_racing_consumers_get_the_session_exactly_once(redis_server: RedisServer) -> None:
    # Separate clients, as separate instances would be.
    clients = [redis_client(redis_server.url) for _ in range(8)]
    try:
        for _ in range(5):
            minted = await RedisTokenStore(clients[0]).mint("ses_race", 60)
            results = await asyncio.gather(
                *(RedisTokenStore(c).consume(minted.token) for c in clients)
            )
            assert results.count("ses_race") == 1, results
            assert results.count(None) == len(clients) - 1, results
    finally:
        for redis in clients:
            await redis.aclose()


async def test_an_expired_token_is_refused(client: Redis) -> None:
    tokens = RedisTokenStore(client)
    minted = await tokens.mint("ses_expiring", 1)
    key = KEY_PREFIX + token_hash(minted.token)
    # Let Redis expire it rather than sleeping: PEXPIRE to 1 ms, then wait until it is gone.
    await client.pexpire(key, 1)
    for _ in range(1000):
        if not await client.exists(key):
            break
        await asyncio.sleep(0.01)
    assert await tokens.consume(minted.token) is None


async def test_unreachable_redis_raises_token_store_error() -> None:
    redis = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    tokens = RedisTokenStore(redis)
    try:
        with pytest.raises(TokenStoreError):
            await tokens.mint("ses_down", 60)
        with pytest.raises(TokenStoreError):
            await tokens.consume("vgt_anything")
    finally:
        await redis.aclose()


async def test_a_redis_restart_between_calls_is_ridden_over(own_redis: RedisServer) -> None:
    redis = redis_client(own_redis.url)
    tokens = RedisTokenStore(redis)
    try:
        await tokens.mint("ses_before", 60)  # leaves a pooled connection behind
        own_redis.restart()
        # The pooled connection is dead; the retry policy reconnects instead of failing.
        minted = await tokens.mint("ses_after", 60)
        assert await tokens.consume(minted.token) == "ses_after"
    finally:
        await redis.aclose()


async def test_tokens_minted_before_a_restart_without_persistence_are_lost(
    own_redis: RedisServer,
) -> None:
    redis = redis_client(own_redis.url)
    tokens = RedisTokenStore(redis)
    try:
        minted = await tokens.mint("ses_lost", 60)
        own_redis.restart()
        assert await tokens.consume(minted.token) is None
    finally:
        await redis.aclose()


async def test_tokens_survive_a_restart_of_redis_with_aof(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    redis = redis_client(server.url)
    try:
        tokens = RedisTokenStore(redis)
        minted = await tokens.mint("ses_kept", 60)
        server.restart()  # SIGTERM: Redis writes its AOF out before exiting
        assert await tokens.consume(minted.token) == "ses_kept"
    finally:
        await redis.aclose()
        server.stop()


def test_the_client_uses_the_explicit_policy(redis_server: RedisServer) -> None:
    redis = redis_client(redis_server.url)
    kwargs = redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.0
    assert kwargs["socket_connect_timeout"] == 1.0
    assert kwargs["health_check_interval"] == 15
    retry = kwargs["retry"]
    assert retry.get_retries() == 2
    assert redis.connection_pool.max_connections == 64
    assert hiredis_in_use(), "redis[hiredis] is a dependency: hiredis must parse replies"


def test_passwords_stay_out_of_logged_urls() -> None:
    assert redacted_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redacted_url("redis://app:s3cret@cache/2") == "redis://app:***@cache/2"
    assert redacted_url("redis://cache:6379/0") == "redis://cache:6379/0"


# --- the takeover channel ---------------------------------------------------------


def test_claim_messages_round_trip_and_junk_is_ignored() -> None:
    assert decode_claim(encode_claim("ses_01ABC", 7).encode()) == ("ses_01ABC", 7)
    assert decode_claim("ses_01ABC 12") == ("ses_01ABC", 12)
    for junk in (b"", b"ses_x", b"ses_x seven", b" 3", b"ses_x -1"):
        assert decode_claim(junk) is None, junk


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {what} after 10 s")


async def wait_until_subscribed(*channels: ClaimChannel) -> None:
    await wait_until(lambda: all(channel.subscribed for channel in channels), "subscribed")


def recorder(queue: asyncio.Queue[tuple[str, int]]) -> Callable[[str, int], None]:
    def on_claim(session_id: str, generation: int) -> None:
        queue.put_nowait((session_id, generation))

    return on_claim


async def next_claim(heard: asyncio.Queue[tuple[str, int]]) -> tuple[str, int]:
    async with asyncio.timeout(10):
        return await heard.get()


async def test_a_claim_announced_by_one_instance_reaches_the_others(
    redis_server: RedisServer,
) -> None:
    clients = [redis_client(redis_server.url) for _ in range(2)]
    heard: list[asyncio.Queue[tuple[str, int]]] = [asyncio.Queue(), asyncio.Queue()]
    channels = [ClaimChannel(clients[i], recorder(heard[i])) for i in range(2)]
    try:
        for channel in channels:
            channel.start()
        await wait_until_subscribed(*channels)
        channels[0].announce("ses_claimed", 3)
        assert await next_claim(heard[1]) == ("ses_claimed", 3)
        assert await next_claim(heard[0]) == ("ses_claimed", 3)  # its own, harmless
        # Junk on the channel is skipped, the next real claim still arrives.
        await clients[1].publish(CHANNEL, "not a claim")
        channels[1].announce("ses_claimed", 4)
        assert await next_claim(heard[0]) == ("ses_claimed", 4)
    finally:
        for channel in channels:
            await channel.close()
        for redis in clients:
            await redis.aclose()


async def test_the_channel_resubscribes_after_a_redis_restart(own_redis: RedisServer) -> None:
    clients = [redis_client(own_redis.url) for _ in range(2)]
    heard: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    listener = ClaimChannel(clients[0], recorder(heard))
    speaker = ClaimChannel(clients[1], lambda s, g: None)
    try:
        listener.start()
        await wait_until_subscribed(listener)
        own_redis.stop()
        speaker.announce("ses_lost_claim", 1)  # nobody hears it, and nothing raises
        await wait_until(lambda: not listener.subscribed, "unsubscribed")
        own_redis.start()
        await wait_until_subscribed(listener)
        speaker.announce("ses_after_restart", 2)
        assert await next_claim(heard) == ("ses_after_restart", 2)
    finally:
        await listener.close()
        await speaker.close()
        for redis in clients:
            await redis.aclose()
