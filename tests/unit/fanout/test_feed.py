"""Feeds: merging progress in any order, re-reading the store when acks went missing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson

from voxgate.fanout.events import Out
from voxgate.fanout.feed import Feed
from voxgate.fanout.hub import Hub
from voxgate.fanout.listener import Listener
from voxgate.store.base import TranscriptIn
from voxgate.store.sqlite import SqliteStore

from .conftest import frame, new_session


class Recorder(Listener):
    """A listener that only records what its feed offers it."""

    def __init__(self, hub: Hub, session_id: str) -> None:
        settings = hub.settings
        super().__init__(
            hub.store,
            session_id,
            audio=False,
            from_seq=0,
            last_event_id=0,
            buffer_events=settings.listen_buffer_events,
            max_lag_frames=settings.listen_max_lag_frames,
        )
        self.seen: list[dict[str, Any]] = []

    def offer(self, out: Out) -> None:
        self.seen.append(json.loads(out.data))


async def recorded(hub: Hub, session_id: str) -> tuple[Feed, Recorder]:
    recorder = Recorder(hub, session_id)
    feed = await hub.join(recorder)
    return feed, recorder


def progress(acked: list[list[int]], frames: int, **fields: Any) -> dict[str, Any]:
    message = {
        "k": "p",
        "acked": acked,
        "next_seq": acked[-1][1] + 1,
        "frames": frames,
        "bytes": frames * 3,
        "end_seq": None,
        "complete": False,
        "stream_crc32c": None,
        "window": 4096,
    }
    message.update(fields)
    return orjson.loads(orjson.dumps(message))  # type: ignore[no-any-return]


async def test_messages_in_any_order_and_twice_give_the_same_view(
    hub: Hub, store: SqliteStore
) -> None:
    sid = await new_session(store)
    await store.commit([frame(sid, seq) for seq in range(20)])  # what the store will say
    feed, recorder = await recorded(hub, sid)
    # The feed's first read saw all 20; messages describing them change nothing.
    feed.receive(progress([[10, 19]], 20))
    feed.receive(progress([[0, 9]], 10))
    assert recorder.seen == []
    assert (feed.next_seq, feed.missing, feed.frames) == (20, [], 20)

    other = await new_session(store)
    feed, recorder = await recorded(hub, other)
    later = progress([[10, 19]], 10)  # a second commit's message overtook the first's
    feed.receive(later)
    assert (feed.next_seq, feed.missing) == (20, [[0, 9]])
    feed.receive(progress([[0, 9]], 20))
    feed.receive(progress([[0, 9]], 20))  # again: nothing new
    assert [(e["acked"], e["missing"], e["next_seq"]) for e in recorder.seen] == [
        ([[10, 19]], [[0, 9]], 20),
        ([[0, 9]], [], 20),
    ]
    assert recorder.seen[-1]["window_bytes"] == 4096


async def test_state_changes_are_told_once(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    feed, recorder = await recorded(hub, sid)
    feed.receive(progress([[0, 3], [5, 5]], 5, end_seq=5))
    feed.receive(progress([[5, 5]], 5, end_seq=5))
    feed.receive(progress([[4, 4]], 6, end_seq=5, complete=True, stream_crc32c=77))
    feed.receive(progress([[4, 4]], 6, end_seq=5, complete=True, stream_crc32c=77))
    states = [e for e in recorder.seen if e["type"] == "state"]
    assert states == [
        {"type": "state", "state": "ended", "end_seq": 5},
        {
            "type": "state",
            "state": "complete",
            "last_seq": 5,
            "frames": 6,
            "bytes": 18,
            "stream_crc32c": 77,
        },
    ]
    assert feed.state == "complete"


async def test_lost_acks_are_read_from_the_store(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    feed, recorder = await recorded(hub, sid)
    # Two commits happen; only the second one's message arrives.
    await store.commit([frame(sid, seq) for seq in range(10)])
    await store.commit([frame(sid, seq) for seq in range(10, 20)])
    feed.receive(progress([[10, 19]], 20))
    assert feed.missing == [[0, 9]]  # for now: 20 frames reported, 10 accounted for
    for _ in range(200):
        if feed.missing == []:
            break
        await asyncio.sleep(0.01)
    assert (feed.next_seq, feed.missing, feed.frames) == (20, [], 20)
    assert recorder.seen[-1]["acked"] == [[0, 9]]


async def test_a_resync_hint_reads_transcripts_and_progress(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    feed, recorder = await recorded(hub, sid)
    # Stored while their messages were lost on the way.
    await store.commit([frame(sid, 0)])
    entry = TranscriptIn(role="user", text="lost", is_final=True, timestamp=0)
    await store.add_transcript(sid, entry)
    feed.receive({"k": "r"})
    for _ in range(200):
        if len(recorder.seen) >= 2:
            break
        await asyncio.sleep(0.01)
    kinds = {e["type"]: e for e in recorder.seen}
    assert kinds["progress"]["acked"] == [[0, 0]]
    assert kinds["transcript"]["text"] == "lost"
