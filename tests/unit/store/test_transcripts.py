"""The Store's transcript log and listener reads, run against every backend kind."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from voxgate._native import FLAG_END
from voxgate.store.base import (
    ListenSnapshot,
    Store,
    StoredFrame,
    Transcript,
    TranscriptIn,
    TranscriptOutcome,
)

from .conftest import Backend, frame, payload_of

UNKNOWN = "ses_00000000000000000000000000"


async def new_session_id(store: Store) -> str:
    session = await store.create_session(
        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={}
    )
    return session.id


async def add(
    store: Store,
    session_id: str,
    role: str,
    text: str,
    *,
    final: bool,
    seq: int | None = None,
    timestamp: int | float | str = 0,
) -> tuple[TranscriptOutcome, Transcript | None]:
    result = await store.add_transcript(
        session_id,
        TranscriptIn(role=role, text=text, is_final=final, timestamp=timestamp, seq=seq),
    )
    return result.outcome, result.transcript


async def stored(store: Store, session_id: str) -> list[tuple[int, str, str, bool, int | None]]:
    """(id, role, text, is_final, supersedes) of every stored entry, by id."""
    return [
        (t.id, t.role, t.text, t.is_final, t.supersedes)
        for t in await store.list_transcripts(session_id, limit=1000)
    ]


# -- transcripts -------------------------------------------------------------------


async def test_ids_start_at_one_and_entries_keep_what_was_posted(store: Store) -> None:
    sid = await new_session_id(store)
    before = datetime.now(UTC)
    outcome, first = await add(store, sid, "user", "hello", final=True, timestamp=1712.5)
    assert outcome is TranscriptOutcome.STORED
    assert first is not None
    assert (first.id, first.session_id, first.role, first.text) == (1, sid, "user", "hello")
    assert first.is_final
    assert first.timestamp == 1712.5
    assert first.seq is None
    assert first.supersedes is None
    assert before <= first.received_at <= datetime.now(UTC)
    _, second = await add(store, sid, "agent", "hi", final=True, timestamp="2024-05-01T10:00:00Z")
    _, third = await add(store, sid, "user", "bye", final=True, seq=7, timestamp=1712000000123)
    assert second is not None
    assert third is not None
    assert (second.id, third.id) == (2, 3)
    listed = await store.list_transcripts(sid)
    assert listed == [first, second, third]
    assert [type(t.timestamp) for t in listed] == [float, str, int]
    assert listed[2].seq == 7
    assert await store.last_transcript_id(sid) == 3


async def test_ids_are_per_session(store: Store) -> None:
    a, b = await new_session_id(store), await new_session_id(store)
    await add(store, a, "user", "a1", final=True)
    await add(store, a, "user", "a2", final=True)
    _, entry = await add(store, b, "user", "b1", final=True)
    assert entry is not None
    assert entry.id == 1
    assert [t.text for t in await store.list_transcripts(a)] == ["a1", "a2"]
    assert [t.text for t in await store.list_transcripts(b)] == ["b1"]


async def test_list_pages_by_id(store: Store) -> None:
    sid = await new_session_id(store)
    for i in range(7):
        await add(store, sid, "user", f"t{i}", final=True)
    pages: list[list[int]] = []
    after = 0
    while page := await store.list_transcripts(sid, after=after, limit=3):
        pages.append([t.id for t in page])
        after = page[-1].id
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    assert await store.list_transcripts(sid, after=7) == []
    assert await store.list_transcripts(sid, limit=0) == []


async def test_keyed_interims_are_superseded_by_their_final(store: Store) -> None:
    sid = await new_session_id(store)
    await add(store, sid, "user", "hel", final=False, seq=0)
    await add(store, sid, "user", "hello wo", final=False, seq=0)
    await add(store, sid, "agent", "one moment", final=False, seq=0)  # another role: another key
    await add(store, sid, "user", "next", final=False, seq=1)  # another seq: another key
    _, final = await add(store, sid, "user", "hello world", final=True, seq=0)
    assert final is not None
    assert (final.id, final.supersedes) == (5, 2)
    assert await stored(store, sid) == [
        (3, "agent", "one moment", False, None),
        (4, "user", "next", False, None),
        (5, "user", "hello world", True, 2),
    ]
    # The highest id ever used stays the high-water mark.
    assert await store.last_transcript_id(sid) == 5


async def test_unkeyed_interims_form_one_open_utterance_per_role(store: Store) -> None:
    sid = await new_session_id(store)
    await add(store, sid, "user", "I w", final=False)  # 1
    await add(store, sid, "agent", "Let", final=False)  # 2
    await add(store, sid, "user", "I want", final=False)  # 3 supersedes 1
    await add(store, sid, "user", "I want a refund", final=True)  # 4 supersedes 3
    await add(store, sid, "user", "for", final=False)  # 5: a new utterance
    await add(store, sid, "agent", "Let me check", final=True)  # 6 supersedes 2
    await add(store, sid, "user", "for order 12", final=True)  # 7 supersedes 5
    await add(store, sid, "user", "thanks", final=True)  # 8: a final alone
    assert await stored(store, sid) == [
        (4, "user", "I want a refund", True, 3),
        (6, "agent", "Let me check", True, 2),
        (7, "user", "for order 12", True, 5),
        (8, "user", "thanks", True, None),
    ]


async def test_unkeyed_and_keyed_entries_do_not_supersede_each_other(store: Store) -> None:
    sid = await new_session_id(store)
    await add(store, sid, "user", "keyed", final=False, seq=0)  # 1
    await add(store, sid, "user", "open", final=False)  # 2
    await add(store, sid, "user", "open final", final=True)  # 3 supersedes 2 only
    await add(store, sid, "user", "keyed final", final=True, seq=0)  # 4 supersedes 1 only
    assert await stored(store, sid) == [
        (3, "user", "open final", True, 2),
        (4, "user", "keyed final", True, 1),
    ]


async def test_a_stored_final_closes_its_key(store: Store) -> None:
    sid = await new_session_id(store)
    _, final = await add(store, sid, "user", "yes please", final=True, seq=3)
    assert final is not None
    before = await stored(store, sid)

    outcome, answer = await add(store, sid, "user", "yes please", final=True, seq=3)
    assert outcome is TranscriptOutcome.DUPLICATE
    assert answer == final
    outcome, answer = await add(store, sid, "user", "yes, please", final=True, seq=3)
    assert outcome is TranscriptOutcome.CONFLICT
    assert answer == final
    outcome, answer = await add(store, sid, "user", "yes pl", final=False, seq=3)
    assert outcome is TranscriptOutcome.STALE
    assert answer == final

    assert await stored(store, sid) == before
    assert await store.last_transcript_id(sid) == final.id
    # The same seq of another role is another key.
    outcome, _ = await add(store, sid, "agent", "ok", final=True, seq=3)
    assert outcome is TranscriptOutcome.STORED


async def test_unknown_and_deleted_sessions_are_gone(store: Store, backend: Backend) -> None:
    assert await add(store, UNKNOWN, "user", "x", final=True) == (TranscriptOutcome.GONE, None)
    assert await store.list_transcripts(UNKNOWN) == []
    assert await store.last_transcript_id(UNKNOWN) == 0

    sid = await new_session_id(store)
    secret = "the PIN is 8172-SECRET-TRANSCRIPT"
    await add(store, sid, "user", secret, final=True)
    assert await store.delete_session(sid)
    assert await store.list_transcripts(sid) == []
    assert await add(store, sid, "user", "late", final=True) == (TranscriptOutcome.GONE, None)
    assert not await backend.holds_bytes(secret.encode()), "deleted transcript text is stored"


async def test_transcripts_survive_reopen_and_are_shared_between_instances(
    backend: Backend,
) -> None:
    one = await backend.open_store()
    sid = await new_session_id(one)
    await add(one, sid, "user", "before", final=False, seq=1)
    await one.close()

    one, two = await backend.open_store(), await backend.open_store()
    try:
        _, entry = await add(two, sid, "user", "after", final=True, seq=1)
        assert entry is not None
        assert (entry.id, entry.supersedes) == (2, 1)
        assert await stored(one, sid) == [(2, "user", "after", True, 1)]
    finally:
        await one.close()
        await two.close()


async def test_concurrent_adds_from_two_instances_get_distinct_ids(backend: Backend) -> None:
    one, two = await backend.open_store(), await backend.open_store()
    try:
        sid = await new_session_id(one)

        async def post(store: Store, role: str) -> list[int]:
            ids = []
            for i in range(25):
                _, entry = await add(store, sid, role, f"{role}{i}", final=True)
                assert entry is not None
                ids.append(entry.id)
            return ids

        first, second = await asyncio.gather(post(one, "user"), post(two, "agent"))
        assert first == sorted(first)
        assert second == sorted(second)
        assert sorted(first + second) == list(range(1, 51))
        assert len(await store_ids(one, sid)) == 50
    finally:
        await one.close()
        await two.close()


async def store_ids(store: Store, session_id: str) -> list[int]:
    return [t.id for t in await store.list_transcripts(session_id, limit=1000)]


# -- frames for listeners ----------------------------------------------------------


async def test_read_frames_in_seq_order_with_their_headers(store: Store) -> None:
    sid = await new_session_id(store)
    payloads = {seq: payload_of(sid, seq, 30 + seq) for seq in range(10)}
    await store.commit(
        [
            frame(sid, seq, payloads[seq], end=seq == 9, pts_us=(1 << 64) - 1 - seq)
            for seq in (5, 1, 0, 9, 3, 2, 4, 8, 7, 6)
        ]
    )
    got = await store.read_frames(sid, 0, 9, max_frames=100, max_bytes=1 << 20)
    assert [f.seq for f in got] == list(range(10))
    assert [f.payload for f in got] == [payloads[s] for s in range(10)]
    assert [f.pts_us for f in got] == [(1 << 64) - 1 - s for s in range(10)]
    assert [f.flags & FLAG_END for f in got] == [0] * 9 + [FLAG_END]
    entries = await store.frame_index(sid)
    assert [f.crc32c for f in got] == [e.crc32c for e in entries]
    assert await store.read_frames(sid, 3, 5, max_frames=100, max_bytes=1 << 20) == got[3:6]


async def test_read_frames_respects_its_limits(store: Store) -> None:
    sid = await new_session_id(store)
    await store.commit([frame(sid, seq, bytes([seq]) * 100) for seq in range(20)])
    by_count = await store.read_frames(sid, 0, 19, max_frames=7, max_bytes=1 << 20)
    assert [f.seq for f in by_count] == list(range(7))
    by_bytes = await store.read_frames(sid, 4, 19, max_frames=100, max_bytes=350)
    assert [f.seq for f in by_bytes] == [4, 5, 6]
    # A frame larger than max_bytes still comes, alone.
    one = await store.read_frames(sid, 10, 19, max_frames=100, max_bytes=1)
    assert [f.seq for f in one] == [10]


async def test_read_frames_skips_gaps_and_empty_cases(store: Store) -> None:
    sid = await new_session_id(store)
    await store.commit([frame(sid, seq, b"p%d" % seq) for seq in (0, 1, 4, 5)])
    got = await store.read_frames(sid, 0, 10, max_frames=100, max_bytes=1 << 20)
    assert [(f.seq, f.payload) for f in got] == [(0, b"p0"), (1, b"p1"), (4, b"p4"), (5, b"p5")]
    assert await store.read_frames(sid, 2, 3, max_frames=100, max_bytes=1 << 20) == []
    assert await store.read_frames(sid, 5, 4, max_frames=100, max_bytes=1 << 20) == []
    assert await store.read_frames(UNKNOWN, 0, 10, max_frames=100, max_bytes=1 << 20) == []
    await store.delete_session(sid)
    assert await store.read_frames(sid, 0, 10, max_frames=100, max_bytes=1 << 20) == []


async def test_read_frames_sees_commits_of_another_instance(backend: Backend) -> None:
    one, two = await backend.open_store(), await backend.open_store()
    try:
        sid = await new_session_id(one)
        await one.commit([frame(sid, 0, b"first")])
        assert await two.read_frames(sid, 0, 5, max_frames=10, max_bytes=100) == [
            StoredFrame(0, 0, 0, (await one.frame_index(sid))[0].crc32c, b"first")
        ]
        await two.commit([frame(sid, 1, b"second")])
        got = await one.read_frames(sid, 0, 5, max_frames=10, max_bytes=100)
        assert [f.payload for f in got] == [b"first", b"second"]
    finally:
        await one.close()
        await two.close()


async def test_listen_snapshot(store: Store) -> None:
    assert await store.listen_snapshot(UNKNOWN) == ListenSnapshot(None, [], 0)
    sid = await new_session_id(store)
    await store.commit([frame(sid, seq, b"x") for seq in (0, 1, 4, 7)])
    await add(store, sid, "user", "a", final=False)
    await add(store, sid, "user", "b", final=True)
    snapshot = await store.listen_snapshot(sid)
    assert snapshot.session == await store.get_session(sid)
    assert snapshot.missing == [[2, 3], [5, 6]]
    assert snapshot.last_transcript_id == 2
