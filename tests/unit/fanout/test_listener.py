"""A listener's buffer and ordering: drop-oldest progress, transcript re-reads, audio lag."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from voxgate.fanout.events import AUDIO, PROGRESS, End, Out, event_out, transcript_out
from voxgate.fanout.hub import Hub
from voxgate.fanout.listener import PROGRESS_BUFFER, Listener
from voxgate.store.base import TranscriptIn
from voxgate.store.sqlite import SqliteStore

from .conftest import SETTINGS, frame, new_session


async def joined(hub: Hub, session_id: str, **kwargs: Any) -> Listener:
    options: dict[str, Any] = {"audio": False, "from_seq": 0, "last_event_id": 0, **kwargs}
    listener = hub.new_listener(session_id, **options)
    await hub.join(listener)
    return listener


async def running(
    hub: Hub, session_id: str, **kwargs: Any
) -> tuple[Listener, AsyncGenerator[Out | End, None]]:
    """A joined listener and its running output, past its ``hello``."""
    listener = await joined(hub, session_id, **kwargs)
    run = listener.run()
    assert decoded(await anext(run))["type"] == "hello"
    return listener, run


async def take(run: AsyncGenerator[Out | End, None], count: int) -> list[Out | End]:
    return [await anext(run) for _ in range(count)]


def decoded(out: Out | End) -> dict[str, Any]:
    assert isinstance(out, Out), out
    event: dict[str, Any] = json.loads(out.data)
    return event


async def add(store: SqliteStore, session_id: str, text: str) -> int:
    entry = TranscriptIn(role="user", text=text, is_final=True, timestamp=0)
    result = await store.add_transcript(session_id, entry)
    assert result.transcript is not None
    return result.transcript.id


async def test_progress_beyond_the_buffer_drops_the_oldest(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    listener, run = await running(hub, sid)
    offered = PROGRESS_BUFFER + 8
    for n in range(offered):
        listener.offer(event_out(PROGRESS, n=n))
    delivered = [decoded(out) for out in await take(run, PROGRESS_BUFFER)]
    assert [event["n"] for event in delivered] == list(range(8, offered))
    assert delivered[0]["dropped"] == 8
    assert all("dropped" not in event for event in delivered[1:])
    assert listener.dropped_total == 8
    await run.aclose()
    hub.leave(listener)


async def test_an_overflowing_queue_rereads_transcripts_in_order(
    hub: Hub, store: SqliteStore
) -> None:
    sid = await new_session(store)
    listener, run = await running(hub, sid)
    ids = [await add(store, sid, f"t{i}") for i in range(3 * SETTINGS.listen_buffer_events)]
    for transcript in await store.list_transcripts(sid, limit=100):
        listener.offer(transcript_out(transcript))  # all at once: more than the buffer holds
    assert listener.rereads >= 1
    got = [decoded(out)["id"] for out in await take(run, len(ids))]
    assert got == ids
    # Nothing else is pending: no repeats come out of what was queued.
    listener.offer(event_out(PROGRESS, n=0))
    assert decoded(await anext(run))["type"] == "progress"
    await run.aclose()
    hub.leave(listener)


async def test_a_transcript_skipped_on_the_way_is_read_from_the_store(
    hub: Hub, store: SqliteStore
) -> None:
    sid = await new_session(store)
    first = await add(store, sid, "one")
    listener, run = await running(hub, sid, last_event_id=0)
    assert decoded(await anext(run))["id"] == first
    second, third = await add(store, sid, "two"), await add(store, sid, "three")
    [later] = [t for t in await store.list_transcripts(sid) if t.id == third]
    listener.offer(transcript_out(later))  # "two" was lost (or is late) on the bus
    assert [decoded(out)["text"] for out in await take(run, 2)] == ["two", "three"]
    [earlier] = [t for t in await store.list_transcripts(sid) if t.id == second]
    listener.offer(transcript_out(earlier))  # arrives late: already sent, dropped
    listener.offer(event_out(PROGRESS, n=1))
    assert decoded(await anext(run))["type"] == "progress"
    await run.aclose()
    hub.leave(listener)


async def test_audio_lag_ends_the_listener_with_its_resume_point(
    hub: Hub, store: SqliteStore
) -> None:
    sid = await new_session(store)
    await hub.store.commit([frame(sid, seq) for seq in range(300)])
    listener = await joined(hub, sid, audio=True, from_seq=0, last_event_id=0)
    run = listener.run()
    hello = decoded(await anext(run))
    assert hello["next_seq"] == 300
    first = await anext(run)  # history: at most one read's worth
    assert isinstance(first, Out)
    assert first.kind == AUDIO
    sent = listener.cursor
    assert 0 < sent < 300
    # Live frames pile up past the limit while the listener is still on history.
    await hub.store.commit(
        [frame(sid, seq) for seq in range(300, 300 + SETTINGS.listen_max_lag_frames + 1)]
    )
    feed = listener.feed
    assert feed is not None
    feed.request_sync()
    end = None
    async for out in run:
        if isinstance(out, End):
            end = out
            break
    assert end is not None
    assert (end.code, end.error) == (4429, "slow_consumer")
    assert end.resume is not None
    assert end.resume["from_seq"] == listener.cursor
    assert f"from_seq={listener.cursor}" in end.message
    hub.leave(listener)


async def test_history_alone_never_counts_as_lag(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    await hub.store.commit([frame(sid, seq, end=seq == 499) for seq in range(500)])
    listener, run = await running(hub, sid, audio=True)
    while listener.cursor < 500:
        out = await anext(run)
        assert isinstance(out, Out), out
        assert out.kind == AUDIO
    await run.aclose()
    hub.leave(listener)


async def test_deletion_ends_the_listener_after_telling_it(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    listener, run = await running(hub, sid)
    await store.delete_session(sid)
    hub.session_deleted(sid)
    assert decoded(await anext(run)) == {"type": "state", "state": "deleted"}
    end = await anext(run)
    assert end == End(4410, "gone", "session deleted")
    hub.leave(listener)


async def test_events_queued_before_a_deletion_still_come_first(
    hub: Hub, store: SqliteStore
) -> None:
    sid = await new_session(store)
    listener, run = await running(hub, sid)
    frames = [frame(sid, 0, end=True)]
    hub.committed(frames, await store.commit(frames))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # progress and complete are queued now, not yet sent
    await store.delete_session(sid)
    hub.session_deleted(sid)
    kinds = [decoded(out) for out in await take(run, 3)]
    assert [(e["type"], e.get("state")) for e in kinds] == [
        ("progress", None),
        ("state", "complete"),
        ("state", "deleted"),
    ]
    assert await anext(run) == End(4410, "gone", "session deleted")
    hub.leave(listener)
