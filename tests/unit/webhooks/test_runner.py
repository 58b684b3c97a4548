"""The outbox runner against a real HTTP receiver on 127.0.0.1, on both stores.

Rounds are driven by hand (``run_once``) and retries are made due at once
(``backoff_base_s=0``), so every step is decided, never raced against a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import REGISTRY

from unit.store.conftest import Backend, backend, frame, payload_of  # noqa: F401
from voxgate.store.base import Store
from voxgate.webhooks.runner import WebhookRunner, backoff_s

from .receiver import SECRET, Delivery, Receiver, docs_python_verifier

verify = docs_python_verifier()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.start()
    yield running
    running.stop()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:  # noqa: F811
    backend.events = True
    opened = await backend.open_store()
    yield opened
    await opened.close()


def runner_for(store: Store, receiver: Receiver, **options: float) -> WebhookRunner:
    settings: dict[str, float] = {"backoff_base_s": 0.0, "timeout_s": 5.0, **options}
    return WebhookRunner(store, receiver.url, SECRET, **settings)  # type: ignore[arg-type]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def ended_and_completed(store: Store) -> str:
    session = await store.create_session(
        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={}
    )
    await store.commit(
        [frame(session.id, seq, payload_of(session.id, seq), end=seq == 2) for seq in range(3)]
    )
    return session.id


def check_signed(delivery: Delivery) -> None:
    assert verify(SECRET, delivery.headers["voxgate-signature"], delivery.body)
    event = delivery.event
    assert delivery.headers["voxgate-event-id"] == event["id"]
    assert delivery.headers["voxgate-event-type"] == event["type"]
    assert delivery.headers["content-type"] == "application/json"


async def test_events_arrive_signed_once_and_leave_the_outbox(
    store: Store, receiver: Receiver
) -> None:
    sid = await ended_and_completed(store)
    runner = runner_for(store, receiver)
    delivered = metric("voxgate_webhooks_delivered_total")
    try:
        assert await runner.run_once() == 2
        assert await runner.run_once() == 0
    finally:
        await runner.stop()
    got = receiver.snapshot()
    assert [d.event["type"] for d in got] == ["session.ended", "session.completed"]
    for delivery in got:
        check_signed(delivery)
        assert delivery.event["session"]["id"] == sid
        assert delivery.headers["voxgate-delivery-attempt"] == "1"
    assert await store.event_counts() == {"pending": 0, "failed": 0}
    assert metric("voxgate_webhooks_delivered_total") == delivered + 2


@pytest.mark.parametrize("failure", ["500", "302", "down", "slow"])
async def test_failed_attempts_are_retried_with_the_same_event(
    store: Store, receiver: Receiver, failure: str
) -> None:
    session = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    await store.delete_session(session.id)
    reason = {"500": "5xx", "302": "3xx", "down": "network", "slow": "timeout"}[failure]
    failed = metric("voxgate_webhook_attempts_failed_total", reason=reason)
    runner = runner_for(store, receiver, timeout_s=0.5)
    try:
        if failure == "down":
            receiver.stop()
        elif failure == "slow":
            receiver.delay_s = 2.0
        else:
            receiver.status = int(failure)
        assert await runner.run_once() == 1
        assert await runner.run_once() == 1  # due again at once (no backoff here)
        assert metric("voxgate_webhook_attempts_failed_total", reason=reason) == failed + 2
        assert await store.event_counts() == {"pending": 1, "failed": 0}
        if failure == "down":
            receiver.start()
        receiver.delay_s, receiver.status = 0.0, 204
        assert await runner.run_once() == 1
        assert await runner.run_once() == 0
    finally:
        await runner.stop()
    assert await store.event_counts() == {"pending": 0, "failed": 0}
    got = receiver.snapshot()
    # (A slow receiver may record its timed-out requests after the answered one.)
    (answered,) = [d for d in got if d.headers["voxgate-delivery-attempt"] == "3"]
    check_signed(answered)
    assert answered.event["type"] == "session.deleted"
    # Every attempt the receiver saw carried the same event: one id, one body.
    assert {d.event_id for d in got} == {answered.event_id}
    assert {d.body for d in got} == {answered.body}


async def test_an_event_failing_past_its_deadline_is_given_up(
    store: Store, receiver: Receiver
) -> None:
    session = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    await store.delete_session(session.id)
    receiver.status = 503
    given_up = metric("voxgate_webhooks_given_up_total")
    runner = runner_for(store, receiver, give_up_after_s=0.0)
    try:
        assert await runner.run_once() == 1
        assert await runner.run_once() == 0  # never again
    finally:
        await runner.stop()
    assert len(receiver.snapshot()) == 1
    assert await store.event_counts() == {"pending": 0, "failed": 1}
    assert metric("voxgate_webhooks_given_up_total") == given_up + 1


async def test_runners_of_several_processes_send_each_event_once(
    backend: Backend,  # noqa: F811
    store: Store,
    receiver: Receiver,
) -> None:
    for _ in range(12):
        await ended_and_completed(store)
    others = [backend.new_store() for _ in range(2)]
    for other in others:
        await other.open()
    runners = [runner_for(s, receiver, batch=3) for s in (store, *others)]
    try:
        while sum(await asyncio.gather(*(r.run_once() for r in runners))):
            pass
    finally:
        for runner in runners:
            await runner.stop()
        for other in others:
            await other.close()
    ids = [d.event_id for d in receiver.snapshot()]
    assert len(ids) == len(set(ids)) == 24


async def test_a_started_runner_delivers_by_itself(store: Store, receiver: Receiver) -> None:
    runner = runner_for(store, receiver, poll_s=0.05)
    runner.start()
    try:
        await ended_and_completed(store)
        await asyncio.to_thread(receiver.wait_for, lambda got: len(got) >= 2)
    finally:
        await runner.stop()
    assert sorted(d.event["type"] for d in receiver.snapshot()) == [
        "session.completed",
        "session.ended",
    ]


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    assert [backoff_s(n, rng=lambda: 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_s(11, rng=lambda: 1.0) == 600.0  # 1024 s capped at 10 min
    assert backoff_s(10_000, rng=lambda: 1.0) == 600.0
    assert backoff_s(3, rng=lambda: 0.0) == 2.0  # at least half of it
