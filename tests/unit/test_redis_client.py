"""The one reconnect loop of Redis subscriptions: what it reports and when it retries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from voxgate.redis_client import is_redis_failure, keep_connected


def test_a_task_group_of_redis_failures_is_a_redis_failure() -> None:
    lost = RedisConnectionError("gone")
    assert is_redis_failure(lost)
    assert is_redis_failure(ExceptionGroup("both tasks", [lost, OSError("reset")]))
    assert not is_redis_failure(ExceptionGroup("mixed", [lost, KeyError("bug")]))
    assert not is_redis_failure(ValueError("bug"))


async def test_failures_are_reported_and_the_session_runs_again_until_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[BaseException] = [RedisConnectionError("refused"), KeyError("a bug")]
    lost: list[BaseException] = []
    connected_runs = 0
    serving = asyncio.Event()

    async def session(connected: Callable[[], None]) -> None:
        nonlocal connected_runs
        if failures:
            raise failures.pop(0)
        connected()
        connected_runs += 1
        serving.set()
        await asyncio.Event().wait()  # serves until cancelled

    loop = asyncio.create_task(
        keep_connected(session, lost.append, name="test channel", min_delay_s=0, max_delay_s=0)
    )
    await serving.wait()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert [type(e) for e in lost] == [RedisConnectionError]  # Redis failures go to on_lost
    assert "test channel failed, reconnecting" in caplog.text  # anything else is logged
    assert connected_runs == 1
