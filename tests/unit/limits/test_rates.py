"""Rate limits: the COUNT/PERIOD syntax, GCRA in memory and in a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio

from services import RedisServer
from voxgate.limits import (
    Decision,
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    SqliteRateLimiter,
)
from voxgate.rates import Rate, parse_rate
from voxgate.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/5m", Rate(10, 300.0)),
        ("20/15m", Rate(20, 900.0)),
        ("120/1m", Rate(120, 60.0)),
        ("120/m", Rate(120, 60.0)),
        ("3/10", Rate(3, 10.0)),
        ("3 / 1.5s", Rate(3, 1.5)),
        ("100/2h", Rate(100, 7200.0)),
        ("off", None),
        ("OFF", None),
    ],
)
def test_rate_syntax(text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["10", "ten/5m", "10/5d", "-1/5m", "10/0", "10/5m/2", "0/5m"])
def test_bad_rates_are_refused_by_the_settings(text: str) -> None:
    with pytest.raises(SettingsError, match="VOXGATE_RATE_LIMIT_TOKENS"):
        Settings.from_env({"VOXGATE_RATE_LIMIT_TOKENS": text})


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    # Per API key (docs/operations.md "Limits" gives the arithmetic).
    assert parse_rate(settings.rate_limit_sessions) == Rate(5000, 60.0)
    assert parse_rate(settings.rate_limit_tokens) == Rate(20000, 60.0)
    assert parse_rate(settings.rate_limit_transcripts) == Rate(300000, 60.0)
    # Per client IP.
    assert parse_rate(settings.rate_limit_auth_failures) == Rate(20, 60.0)
    assert parse_rate(settings.rate_limit_uploads) == Rate(600, 60.0)
    assert parse_rate(settings.rate_limit_listen_connects) == Rate(600, 60.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_limiter_allows_a_burst_then_one_per_interval() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    rate = Rate(10, 300.0)
    decisions = [await limiter.hit("sessions", "1.2.3.4", rate) for _ in range(10)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions] == list(range(9, -1, -1))
    refused = await limiter.hit("sessions", "1.2.3.4", rate)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(30.0)
    assert refused.headers()["Retry-After"] == "30"
    assert refused.headers()["RateLimit-Limit"] == "10"
    assert refused.headers()["RateLimit-Remaining"] == "0"
    assert refused.headers()["RateLimit-Reset"] == "300"
    # Another address and another limit have their own allowance.
    assert (await limiter.hit("sessions", "5.6.7.8", rate)).allowed
    assert (await limiter.hit("tokens", "1.2.3.4", rate)).allowed
    clock.now += 30.0
    assert (await limiter.hit("sessions", "1.2.3.4", rate)).allowed
    assert not (await limiter.hit("sessions", "1.2.3.4", rate)).allowed
    clock.now += 300.0
    back = await limiter.hit("sessions", "1.2.3.4", rate)
    assert (back.allowed, back.remaining) == (True, 9)


async def burst(limiter: RateLimiter, key: str, rate: Rate, n: int) -> list[Decision]:
    return [await limiter.hit("test", key, rate) for _ in range(n)]


async def test_redis_limiter_is_shared_by_two_clients(redis_server: RedisServer) -> None:
    key = uuid.uuid4().hex
    rate = Rate(5, 60.0)
    first = RedisRateLimiter.from_url(redis_server.url)
    second = RedisRateLimiter.from_url(redis_server.url)
    try:
        a = await burst(first, key, rate, 3)
        b = await burst(second, key, rate, 3)
        assert [d.allowed for d in a + b] == [True] * 5 + [False]
        assert [d.remaining for d in a + b][:5] == [4, 3, 2, 1, 0]
        assert b[-1].retry_after_s == pytest.approx(12.0, abs=0.5)
        # Concurrent hits are counted atomically: exactly the allowance passes.
        other = uuid.uuid4().hex
        results = await asyncio.gather(
            *(limiter.hit("test", other, rate) for limiter in [first, second] * 10)
        )
        assert sum(d.allowed for d in results) == 5
    finally:
        await first.close()
        await second.close()


async def test_redis_limiter_recovers_its_allowance(redis_server: RedisServer) -> None:
    key = uuid.uuid4().hex
    rate = Rate(2, 0.4)
    limiter = RedisRateLimiter.from_url(redis_server.url)
    try:
        assert [d.allowed for d in await burst(limiter, key, rate, 3)] == [True, True, False]
        await asyncio.sleep(0.45)
        assert [d.allowed for d in await burst(limiter, key, rate, 3)] == [True, True, False]
        client = redis.asyncio.Redis.from_url(redis_server.url)
        ttl_ms = await client.pttl(f"voxgate:rl:test:{key}")
        await client.aclose()
        assert 0 < ttl_ms <= 400, "the key expires once the allowance is whole again"
    finally:
        await limiter.close()


async def test_redis_limiter_fails_open_when_redis_is_down() -> None:
    from servers import free_port

    limiter = RedisRateLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        decisions = await burst(limiter, "k", Rate(1, 60.0), 3)
        assert all(d.allowed for d in decisions)
    finally:
        await limiter.close()


async def test_sqlite_limiter_is_shared_through_its_file(tmp_path: Path) -> None:
    clock = FakeClock()
    first = SqliteRateLimiter(tmp_path / "limits.db", clock)
    second = SqliteRateLimiter(tmp_path / "limits.db", clock)
    rate = Rate(4, 60.0)
    try:
        a = await burst(first, "1.2.3.4", rate, 2)
        b = await burst(second, "1.2.3.4", rate, 3)
        assert [d.allowed for d in a + b] == [True] * 4 + [False]
        assert b[-1].retry_after_s == pytest.approx(15.0)
        assert (await first.hit("test", "5.6.7.8", rate)).allowed
        clock.now += 15.0
        assert (await second.hit("test", "1.2.3.4", rate)).allowed
        assert not (await first.hit("test", "1.2.3.4", rate)).allowed
    finally:
        await first.close()
        await second.close()


def test_limits_pick_redis_then_the_shared_file_then_memory(tmp_path: Path) -> None:
    shared = tmp_path / "limits.db"
    assert isinstance(Limits(Settings()).limiter, MemoryRateLimiter)
    assert isinstance(Limits(Settings(), shared_file=shared).limiter, SqliteRateLimiter)
    with_redis = Settings(redis_url="redis://127.0.0.1:1/0")
    assert isinstance(Limits(with_redis, shared_file=shared).limiter, RedisRateLimiter)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
async def test_a_check_that_does_not_count_only_tells(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``count=False`` (the failed-authentication block check) decides without using
    the allowance, on every limiter."""
    limiter: RateLimiter
    if kind == "memory":
        limiter = MemoryRateLimiter()
    elif kind == "sqlite":
        limiter = SqliteRateLimiter(tmp_path / "limits.db")
    else:
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        limiter = RedisRateLimiter.from_url(redis_server.url)
    key, rate = uuid.uuid4().hex, Rate(2, 60.0)
    try:
        peeks = [await limiter.hit("test", key, rate, count=False) for _ in range(5)]
        assert all(d.allowed for d in peeks)
        assert [d.allowed for d in await burst(limiter, key, rate, 2)] == [True, True]
        assert not (await limiter.hit("test", key, rate, count=False)).allowed
        assert not (await limiter.hit("test", key, rate)).allowed
    finally:
        await limiter.close()
