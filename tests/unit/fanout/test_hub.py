"""The publishing side: one progress message per session per event-loop turn, after commits."""

from __future__ import annotations

import asyncio

from voxgate.fanout.hub import Hub
from voxgate.ingest.writer import Writer
from voxgate.store.base import CommitResult, FrameIn, frames_of
from voxgate.store.sqlite import SqliteStore

from .conftest import frame, new_session
from .test_feed import recorded


async def test_commits_of_one_turn_make_one_message_per_session(
    hub: Hub, store: SqliteStore
) -> None:
    watched, unwatched = await new_session(store), await new_session(store)
    _, recorder = await recorded(hub, watched)
    first = [frame(watched, 0), frame(unwatched, 0), frame(watched, 1)]
    second = [frame(watched, 1), frame(watched, 3), frame(unwatched, 1)]
    results = await store.commit(first), await store.commit(second)
    hub.committed(first, results[0])
    hub.committed(second, results[1])
    assert recorder.seen == [], "nothing is published before the next turn"
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    progress = [e for e in recorder.seen if e["type"] == "progress"]
    assert len(progress) == 1
    assert progress[0]["acked"] == [[0, 1], [3, 3]]
    assert (progress[0]["frames"], progress[0]["missing"], progress[0]["next_seq"]) == (
        3,
        [[2, 2]],
        4,
    )
    assert unwatched not in hub.feeds


async def test_duplicates_alone_publish_nothing(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    _, recorder = await recorded(hub, sid)
    frames = [frame(sid, 0)]
    hub.committed(frames, await store.commit(frames))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(recorder.seen) == 1
    hub.committed(frames, await store.commit(frames))  # the same frame again: duplicate
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(recorder.seen) == 1


async def test_without_listeners_nothing_is_kept(hub: Hub, store: SqliteStore) -> None:
    sid = await new_session(store)
    frames = [frame(sid, 0)]
    hub.committed(frames, await store.commit(frames))
    assert hub._committed == []


async def test_the_writer_calls_its_hook_once_per_store_commit(store: SqliteStore) -> None:
    seen: list[tuple[list[FrameIn], CommitResult]] = []
    writer = Writer(store, max_frames=1000, max_bytes=1 << 20)
    writer.on_commit = lambda frames, result: seen.append((frames_of(frames), result))
    await writer.start()
    try:
        a, b = await new_session(store), await new_session(store)
        await asyncio.gather(
            writer.commit([frame(a, 0), frame(a, 1)]),
            writer.commit([frame(b, 0)]),
            writer.commit([frame(a, 1)]),
        )
    finally:
        await writer.stop()
    assert sum(len(frames) for frames, _ in seen) == 4
    assert len(seen) == writer.commits
    for frames, result in seen:
        assert len(result.outcomes) == len(frames)
        assert set(result.progress) == {f.session_id for f in frames}
