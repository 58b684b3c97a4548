"""The Store's webhook outbox: which transitions enqueue events, and how senders claim them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from voxgate._native import crc32c
from voxgate.store.base import (
    ArchiveRecord,
    EventType,
    OutboxEvent,
    Session,
    Store,
    Tier,
)
from voxgate.store.outbox import event_id

from .conftest import Backend, frame, payload_of


@pytest.fixture
async def events_store(backend: Backend) -> AsyncIterator[Store]:
    """A store that enqueues webhook events."""
    backend.events = True
    opened = await backend.open_store()
    yield opened
    await opened.close()


async def new_session(store: Store) -> Session:
    return await store.create_session(
        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={"call": "c-1"}
    )


async def commit(store: Store, session_id: str, seqs: list[int], *, end: int | None) -> None:
    await store.commit(
        [frame(session_id, seq, payload_of(session_id, seq), end=seq == end) for seq in seqs]
    )


async def claim_all(store: Store, lease_s: float = 60.0) -> list[OutboxEvent]:
    return await store.claim_events(limit=100, lease_s=lease_s)


def body(event: OutboxEvent) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(event.body)
    return decoded


async def test_end_and_completion_each_enqueue_one_event(events_store: Store) -> None:
    store = events_store
    s = await new_session(store)
    await commit(store, s.id, [0, 2], end=2)  # END stored, seq 1 missing
    await commit(store, s.id, [2], end=2)  # the END again: a duplicate, no new event
    await commit(store, s.id, [1], end=None)  # the gap closes: complete
    await commit(store, s.id, [0, 1], end=None)  # duplicates after completion

    events = await claim_all(store)
    assert [e.type for e in events] == [EventType.ENDED, EventType.COMPLETED]
    assert [e.id for e in events] == [
        event_id(s.id, EventType.ENDED),
        event_id(s.id, EventType.COMPLETED),
    ]
    ended, completed = (body(e) for e in events)
    assert ended["id"] == events[0].id
    assert ended["type"] == "session.ended"
    assert ended["session"]["id"] == s.id
    assert ended["session"]["state"] == "ended"
    assert ended["session"]["end_seq"] == 2
    assert ended["session"]["frames"] == 2
    assert ended["session"]["stream_crc32c"] is None
    assert ended["session"]["metadata"] == {"call": "c-1"}
    assert completed["session"]["state"] == "complete"
    assert completed["session"]["frames"] == 3
    expected_crc = crc32c(b"".join(payload_of(s.id, seq) for seq in range(3)))
    assert completed["session"]["stream_crc32c"] == expected_crc
    assert completed["session"]["tier"] == "hot"
    assert datetime.fromisoformat(completed["created_at"]) <= datetime.now(UTC)
    assert all(e.attempts == 0 and e.session_id == s.id for e in events)


async def test_an_in_order_stream_ends_and_completes_in_one_commit(events_store: Store) -> None:
    store = events_store
    s = await new_session(store)
    other = await new_session(store)
    await commit(store, s.id, [0, 1], end=None)
    assert await claim_all(store) == []  # open sessions enqueue nothing
    # One commit covering two sessions: only the one that ends gets events.
    await store.commit(
        [
            frame(s.id, 2, payload_of(s.id, 2), end=True),
            frame(other.id, 0, payload_of(other.id, 0)),
        ]
    )
    events = await claim_all(store)
    assert [(e.session_id, e.type) for e in events] == [
        (s.id, EventType.ENDED),
        (s.id, EventType.COMPLETED),
    ]
    assert body(events[0])["session"]["state"] == "complete"  # as it stands after the commit


async def test_delete_and_retention_moves_enqueue_their_events(events_store: Store) -> None:
    store = events_store
    aging = await new_session(store)
    await commit(store, aging.id, [0, 1], end=1)
    await claim_all(store, lease_s=3600)  # ended + completed, out of the way
    doomed = await new_session(store)
    await commit(store, doomed.id, [0], end=None)
    assert await store.delete_session(doomed.id)
    assert not await store.delete_session(doomed.id)

    current = await store.get_session(aging.id)
    assert current is not None
    assert await store.begin_move(aging.id, Tier.WARM, current.updated_at)
    record = ArchiveRecord(path="x.vga", bytes=10, payload_crc32c=1, created_at=datetime.now(UTC))
    assert await store.finish_archive(aging.id, record)
    assert not await store.finish_archive(aging.id, record)  # no move under way: no event
    assert await store.begin_move(aging.id, Tier.COLD, current.updated_at)
    assert await store.finish_cold(aging.id)

    events = await claim_all(store)
    assert [(e.session_id, e.type) for e in events] == [
        (doomed.id, EventType.DELETED),
        (aging.id, EventType.ARCHIVED),
        (aging.id, EventType.EXPIRED),
    ]
    deleted, archived, expired = (body(e)["session"] for e in events)
    # The tombstone: metadata is deleted with the session, and not sent either.
    assert deleted["state"] == "deleted"
    assert deleted["metadata"] == {}
    assert archived["tier"] == "warm"
    assert archived["state"] == "complete"
    assert expired["tier"] == "cold"
    assert expired["metadata"] == {"call": "c-1"}


async def test_a_store_without_events_enqueues_nothing(store: Store) -> None:
    s = await new_session(store)
    await commit(store, s.id, [0, 1], end=1)
    await store.delete_session(s.id)
    assert await claim_all(store) == []
    assert await store.event_counts() == {"pending": 0, "failed": 0}


async def test_enqueue_event_is_idempotent(events_store: Store) -> None:
    store = events_store
    s = await new_session(store)
    assert await store.enqueue_event(s.id, EventType.ENDED)
    assert not await store.enqueue_event(s.id, EventType.ENDED)
    assert not await store.enqueue_event("ses_unknown", EventType.ENDED)
    # The commit that really ends it finds the event enqueued already: still one.
    await commit(store, s.id, [0], end=0)
    events = await claim_all(store)
    assert [e.type for e in events] == [EventType.ENDED, EventType.COMPLETED]


async def test_a_lease_keeps_an_event_from_every_other_claim(
    backend: Backend, events_store: Store
) -> None:
    store = events_store
    s = await new_session(store)
    await commit(store, s.id, [0], end=0)
    other = backend.new_store()  # another process or instance
    await other.open()
    try:
        first = await store.claim_events(limit=1, lease_s=3600)
        assert [e.type for e in first] == [EventType.ENDED]
        second = await other.claim_events(limit=10, lease_s=3600)
        assert [e.type for e in second] == [EventType.COMPLETED]  # the leased one is skipped
        assert await other.claim_events(limit=10, lease_s=3600) == []
        assert await store.event_counts() == {"pending": 2, "failed": 0}
        assert await other.event_delivered(second[0].id, second[0].claim)
        assert await store.event_counts() == {"pending": 1, "failed": 0}
    finally:
        await other.close()


async def test_an_expired_lease_lets_the_event_be_claimed_again(events_store: Store) -> None:
    store = events_store
    s = await new_session(store)
    await store.enqueue_event(s.id, EventType.DELETED)
    (stale,) = await store.claim_events(limit=10, lease_s=0)  # a claimer that died at once
    (fresh,) = await store.claim_events(limit=10, lease_s=3600)
    assert fresh.id == stale.id
    assert fresh.body == stale.body
    assert fresh.claim != stale.claim
    # The late claimer's outcome no longer counts; the current claimer's does.
    assert not await store.event_delivered(stale.id, stale.claim)
    assert not await store.retry_event(stale.id, stale.claim, delay_s=0, error="late")
    assert await store.event_delivered(fresh.id, fresh.claim)
    assert await store.claim_events(limit=10, lease_s=0) == []


async def test_retries_count_attempts_and_failed_events_stay_out(events_store: Store) -> None:
    store = events_store
    s = await new_session(store)
    await store.enqueue_event(s.id, EventType.DELETED)
    (event,) = await claim_all(store)
    assert await store.retry_event(event.id, event.claim, delay_s=0, error="answered 500")
    (again,) = await claim_all(store)
    assert again.attempts == 1
    assert again.body == event.body
    assert await store.retry_event(again.id, again.claim, delay_s=3600, error="answered 503")
    assert await claim_all(store) == []  # backing off
    assert await store.event_counts() == {"pending": 1, "failed": 0}

    await store.enqueue_event(s.id, EventType.ENDED)
    (doomed,) = await claim_all(store)
    assert await store.fail_event(doomed.id, doomed.claim, error="timeout")
    assert not await store.event_delivered(doomed.id, doomed.claim)  # given up stays given up
    assert await store.event_counts() == {"pending": 1, "failed": 1}
    assert await claim_all(store, lease_s=0) == []


async def test_claimers_at_once_take_disjoint_events(backend: Backend, events_store: Store) -> None:
    store = events_store
    sessions = [await new_session(store) for _ in range(30)]
    for s in sessions:
        await store.enqueue_event(s.id, EventType.DELETED)
    others = [backend.new_store() for _ in range(3)]
    for other in others:
        await other.open()
    try:
        claimers = [store, *others]
        rounds = await asyncio.gather(
            *(c.claim_events(limit=4, lease_s=3600) for c in claimers for _ in range(3))
        )
        claimed = [e.id for batch in rounds for e in batch]
        assert len(claimed) == len(set(claimed)) == 30
    finally:
        for other in others:
            await other.close()
