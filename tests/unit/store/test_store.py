"""The Store protocol's behaviour, run against every backend kind."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest

from voxgate._native import crc32c
from voxgate.store.base import (
    FrameEntry,
    FrameIn,
    Outcome,
    Session,
    SessionState,
    Store,
    StoreError,
)

from .conftest import Backend, frame, payload_of


async def new_session(store: Store, **metadata: object) -> Session:
    return await store.create_session(
        codec="pcm_s16le", sample_rate=16000, channels=1, metadata=dict(metadata)
    )


async def read_all(
    store: Store, session_id: str, first: int = 0, last: int | None = None
) -> list[tuple[int, bytes]]:
    return [item async for item in store.read_payloads(session_id, first, last)]


# -- sessions ------------------------------------------------------------------


async def test_create_and_get_session(store: Store) -> None:
    before = datetime.now(UTC)
    session = await store.create_session(
        codec="opus", sample_rate=48000, channels=2, metadata={"user": "u1", "tags": [1, 2]}
    )
    assert session.id.startswith("ses_")
    assert len(session.id) == 4 + 26
    assert session.state is SessionState.OPEN
    assert before <= session.created_at <= datetime.now(UTC)
    got = await store.get_session(session.id)
    assert got == session
    assert got.codec == "opus"
    assert got.sample_rate == 48000
    assert got.channels == 2
    assert got.metadata == {"user": "u1", "tags": [1, 2]}
    assert (got.next_seq, got.frames, got.bytes, got.end_seq, got.stream_crc32c) == (
        0,
        0,
        0,
        None,
        None,
    )


async def test_unknown_session_is_none(store: Store) -> None:
    assert await store.get_session("ses_00000000000000000000000000") is None
    assert await store.missing("ses_00000000000000000000000000") == []
    assert await store.frame_index("ses_00000000000000000000000000") == []
    assert await read_all(store, "ses_00000000000000000000000000") == []
    assert await store.delete_session("ses_00000000000000000000000000") is False


async def test_list_sessions_pages_by_id_and_skips_tombstones(store: Store) -> None:
    created = [await new_session(store, n=i) for i in range(7)]
    ids = sorted(s.id for s in created)
    assert ids == [s.id for s in created], "ids sort by creation time"
    await store.delete_session(ids[3])

    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await store.list_sessions(limit=2, after=after)
        if not page:
            break
        pages.append([s.id for s in page])
        after = page[-1].id
    assert [sid for page in pages for sid in page] == ids[:3] + ids[4:]
    assert all(len(page) <= 2 for page in pages)
    assert await store.list_sessions(limit=100, after=ids[-1]) == []
    listed = await store.list_sessions(limit=1, after=None)
    assert listed[0] == await store.get_session(ids[0])


async def test_delete_removes_frames_and_payload_bytes(store: Store, backend: Backend) -> None:
    keep = await new_session(store)
    doomed = await new_session(store)
    secret = b"SECRET-AUDIO-" + bytes(random.randbytes(16)).hex().encode()
    kept = b"KEPT-AUDIO-" + bytes(random.randbytes(16)).hex().encode()
    frames = [frame(doomed.id, seq, secret + b"%d" % seq) for seq in range(20)]
    frames += [frame(keep.id, seq, kept + b"%d" % seq) for seq in range(20)]
    random.shuffle(frames)  # interleave both sessions' payloads in storage
    result = await store.commit(frames)
    assert set(result.outcomes) == {Outcome.STORED}
    assert await backend.holds_bytes(secret)

    assert await store.delete_session(doomed.id) is True
    assert not await backend.holds_bytes(secret), "payload bytes must really be gone"
    assert await backend.holds_bytes(kept)

    tomb = await store.get_session(doomed.id)
    assert tomb is not None
    assert tomb.state is SessionState.DELETED
    assert tomb.frames == 0
    assert tomb.bytes == 0
    assert await store.frame_index(doomed.id) == []
    assert await read_all(store, doomed.id) == []
    assert await store.missing(doomed.id) == []
    assert await store.delete_session(doomed.id) is False

    later = await store.commit([frame(doomed.id, 20, b"late"), frame(keep.id, 20, b"x")])
    assert later.outcomes == [Outcome.GONE, Outcome.STORED]
    assert doomed.id not in later.progress
    assert [seq for seq, _ in await read_all(store, keep.id)] == list(range(21))
    assert (await read_all(store, keep.id))[5][1] == kept + b"5"


# -- commit outcomes -------------------------------------------------------------


async def test_commit_outcomes(store: Store) -> None:
    session = await new_session(store)
    sid = session.id
    first = await store.commit([frame(sid, 0, b"zero"), frame(sid, 1, b"one")])
    assert first.outcomes == [Outcome.STORED, Outcome.STORED]
    progress = first.progress[sid]
    assert (progress.next_seq, progress.frames, progress.bytes) == (2, 2, 7)
    assert progress.end_seq is None
    assert not progress.complete

    again = await store.commit(
        [
            frame(sid, 0, b"zero"),  # same CRC
            frame(sid, 1, b"ONE"),  # other CRC
            frame(sid, 5, b"five", end=True),
            frame(sid, 6, b"six"),  # after END
            frame("ses_00000000000000000000000000", 0, b"nobody"),
        ]
    )
    assert again.outcomes == [
        Outcome.DUPLICATE,
        Outcome.CONFLICT,
        Outcome.STORED,
        Outcome.SEQUENCE,
        Outcome.GONE,
    ]
    assert set(again.progress) == {sid}
    assert again.progress[sid].end_seq == 5
    assert await read_all(store, sid, 1, 1) == [(1, b"one")], "stored copy is never overwritten"
    state = await store.get_session(sid)
    assert state is not None
    assert state.state is SessionState.ENDED
    assert (state.next_seq, state.frames, state.bytes, state.end_seq) == (6, 3, 11, 5)


async def test_end_below_a_stored_frame_is_sequence(store: Store) -> None:
    sid = (await new_session(store)).id
    await store.commit([frame(sid, 0, b"a"), frame(sid, 4, b"e")])
    result = await store.commit([frame(sid, 2, b"c", end=True), frame(sid, 2, b"c")])
    assert result.outcomes == [Outcome.SEQUENCE, Outcome.STORED]
    # Another END after the stored one, or an END where a plain frame is stored, is refused too.
    await store.commit([frame(sid, 5, b"f", end=True)])
    late = await store.commit([frame(sid, 7, b"h", end=True), frame(sid, 4, b"e", end=True)])
    assert late.outcomes == [Outcome.SEQUENCE, Outcome.CONFLICT]


async def test_same_seq_twice_in_one_batch(store: Store) -> None:
    sid = (await new_session(store)).id
    result = await store.commit(
        [
            frame(sid, 0, b"first"),
            frame(sid, 0, b"first"),
            frame(sid, 1, b"kept"),
            frame(sid, 1, b"other"),
        ]
    )
    assert result.outcomes == [
        Outcome.STORED,
        Outcome.DUPLICATE,
        Outcome.STORED,
        Outcome.CONFLICT,
    ]
    assert await read_all(store, sid) == [(0, b"first"), (1, b"kept")]
    assert result.progress[sid].frames == 2


async def test_end_then_later_seq_in_one_batch(store: Store) -> None:
    sid = (await new_session(store)).id
    result = await store.commit([frame(sid, 1, b"b", end=True), frame(sid, 2, b"c")])
    assert result.outcomes == [Outcome.STORED, Outcome.SEQUENCE]


async def test_one_commit_spans_sessions(store: Store) -> None:
    a, b = (await new_session(store)).id, (await new_session(store)).id
    frames = [frame(a, 0, b"a0"), frame(b, 0, b"b0"), frame(a, 1, b"a1", end=True)]
    result = await store.commit(frames)
    assert result.outcomes == [Outcome.STORED] * 3
    assert result.progress[a].complete
    assert result.progress[a].stream_crc32c == crc32c(b"a0a1")
    assert result.progress[b].next_seq == 1
    assert not result.progress[b].complete


async def test_empty_commit(store: Store) -> None:
    result = await store.commit([])
    assert result.outcomes == []
    assert result.progress == {}


async def test_memoryview_payloads_and_u64_pts(store: Store) -> None:
    sid = (await new_session(store)).id
    message = b"....hello world...."
    view = memoryview(message)
    big_pts = (1 << 64) - 1
    result = await store.commit(
        [FrameIn(sid, 0, 0, big_pts, crc32c(b"hello"), view[4:9]), frame(sid, 1, b"", end=True)]
    )
    assert result.outcomes == [Outcome.STORED, Outcome.STORED]
    assert await store.frame_index(sid) == [
        FrameEntry(0, 0, big_pts, 5, crc32c(b"hello")),
        FrameEntry(1, 1, 0, 0, 0),
    ]
    assert await read_all(store, sid) == [(0, b"hello"), (1, b"")]
    assert result.progress[sid].stream_crc32c == crc32c(b"hello")


# -- gaps and completion ---------------------------------------------------------


async def test_missing_lists_gaps_below_next_seq(store: Store) -> None:
    sid = (await new_session(store)).id
    assert await store.missing(sid) == []
    await store.commit([frame(sid, seq, b"x%d" % seq) for seq in (3, 4, 7, 12)])
    assert await store.missing(sid) == [[0, 2], [5, 6], [8, 11]]
    await store.commit([frame(sid, seq, b"x%d" % seq) for seq in (0, 1, 2, 6)])
    assert await store.missing(sid) == [[5, 5], [8, 11]]
    await store.commit([frame(sid, seq, b"x%d" % seq) for seq in (5, 8, 9, 10, 11)])
    assert await store.missing(sid) == []
    session = await store.get_session(sid)
    assert session is not None
    assert session.next_seq == 13


async def test_completion_and_stream_crc(store: Store) -> None:
    sid = (await new_session(store)).id
    payloads = [random.randbytes(random.randint(1, 300)) for _ in range(50)]
    order = list(range(50))
    random.shuffle(order)
    # The END frame arrives early, the last gap closes in the final commit.
    order.remove(49)
    order.insert(5, 49)
    chunks = [order[i : i + 7] for i in range(0, 50, 7)]
    for i, chunk in enumerate(chunks):
        result = await store.commit([frame(sid, s, payloads[s], end=s == 49) for s in chunk])
        progress = result.progress[sid]
        if i < len(chunks) - 1:
            assert not progress.complete
            assert progress.stream_crc32c is None
            assert (await store.get_session(sid)).state is SessionState.ENDED  # type: ignore[union-attr]
    assert progress.complete
    assert progress.end_seq == 49
    assert progress.frames == 50
    assert progress.bytes == sum(map(len, payloads))
    assert progress.stream_crc32c == crc32c(b"".join(payloads))
    session = await store.get_session(sid)
    assert session is not None
    assert session.state is SessionState.COMPLETE
    assert session.stream_crc32c == crc32c(b"".join(payloads))

    # A complete session answers duplicates and refuses anything past END.
    after = await store.commit([frame(sid, 3, payloads[3]), frame(sid, 50, b"more")])
    assert after.outcomes == [Outcome.DUPLICATE, Outcome.SEQUENCE]
    assert after.progress[sid].complete


async def test_single_end_frame_completes(store: Store) -> None:
    sid = (await new_session(store)).id
    result = await store.commit([frame(sid, 0, b"", end=True)])
    assert result.progress[sid].complete
    assert result.progress[sid].stream_crc32c == 0


# -- reading ---------------------------------------------------------------------


async def test_read_payloads_in_order_across_batches(store: Store) -> None:
    sid = (await new_session(store)).id
    seqs = list(range(700))
    random.shuffle(seqs)
    for i in range(0, 700, 100):
        await store.commit(
            [frame(sid, s, payload_of(sid, s, 50 + s % 30)) for s in seqs[i : i + 100]]
        )
    got = await read_all(store, sid)
    assert [seq for seq, _ in got] == list(range(700))
    assert all(data == payload_of(sid, seq, 50 + seq % 30) for seq, data in got)
    ranged = await read_all(store, sid, 250, 520)
    assert [seq for seq, _ in ranged] == list(range(250, 521))
    index = await store.frame_index(sid, 10, 12)
    assert [e.seq for e in index] == [10, 11, 12]
    assert index[0].crc32c == crc32c(payload_of(sid, 10, 60))
    assert index[0].length == 60


async def test_read_payloads_skips_gaps(store: Store) -> None:
    sid = (await new_session(store)).id
    await store.commit([frame(sid, s, b"p%d" % s) for s in (0, 2, 3, 9)])
    assert await read_all(store, sid) == [(0, b"p0"), (2, b"p2"), (3, b"p3"), (9, b"p9")]


async def test_reads_that_start_in_a_gap_go_on_after_it(store: Store) -> None:
    """A read from a seq no block holds starts at the next block, however large the
    block before the gap is (it once stopped there, having read nothing)."""
    sid = (await new_session(store)).id
    big = [payload_of(sid, s, 400_000) for s in range(30)]
    await store.commit([frame(sid, s, big[s]) for s in range(0, 12)])  # one 4.8 MB block
    await store.commit([frame(sid, s, big[s]) for s in range(20, 30)])
    assert [s async for s, _ in store.read_payloads(sid, 15, 29)] == list(range(20, 30))
    assert [e.seq for e in await store.frame_index(sid, 15, 25)] == list(range(20, 26))
    read = await store.read_frames(sid, 15, 29, max_frames=3, max_bytes=10_000_000)
    assert [(f.seq, f.payload) for f in read] == [(s, big[s]) for s in (20, 21, 22)]
    assert [s async for s, _ in store.read_payloads(sid, 12, 19)] == []


async def test_large_payloads_read_back(store: Store) -> None:
    sid = (await new_session(store)).id
    payloads = [random.randbytes(300_000) for _ in range(20)]
    await store.commit([frame(sid, s, p) for s, p in enumerate(payloads)])
    assert [p for _, p in await read_all(store, sid)] == payloads


# -- stream ownership --------------------------------------------------------------


async def test_claim_stream_increments(store: Store) -> None:
    a, b = (await new_session(store)).id, (await new_session(store)).id
    assert await store.stream_generations([a, b]) == {a: 0, b: 0}
    assert await store.claim_stream(a) == 1
    assert await store.claim_stream(a) == 2
    assert await store.claim_stream(b) == 1
    assert await store.stream_generations([a, b, "ses_00000000000000000000000000"]) == {a: 2, b: 1}
    assert await store.stream_generations([]) == {}
    with pytest.raises(StoreError):
        await store.claim_stream("ses_00000000000000000000000000")


async def test_claims_are_shared_between_store_instances(backend: Backend) -> None:
    one, two = await backend.open_store(), await backend.open_store()
    try:
        sid = (await new_session(one)).id
        assert await one.claim_stream(sid) == 1
        assert await two.claim_stream(sid) == 2
        assert await one.stream_generations([sid]) == {sid: 2}
    finally:
        await one.close()
        await two.close()


# -- persistence -----------------------------------------------------------------


async def test_reopen_keeps_everything(backend: Backend) -> None:
    store = await backend.open_store()
    a = await new_session(store, name="a")
    b = await new_session(store)
    payloads = {s: payload_of(a.id, s, 100 + s) for s in range(40)}
    await store.commit([frame(a.id, s, p, end=s == 39) for s, p in payloads.items() if s != 17])
    await store.commit([frame(b.id, s, b"b%d" % s) for s in (0, 1, 5)])
    await store.claim_stream(a.id)
    before = [await store.get_session(a.id), await store.get_session(b.id)]
    await store.close()

    store = await backend.open_store()
    try:
        assert [await store.get_session(a.id), await store.get_session(b.id)] == before
        assert await store.missing(a.id) == [[17, 17]]
        assert await store.missing(b.id) == [[2, 4]]
        assert await store.stream_generations([a.id]) == {a.id: 1}
        got = await read_all(store, a.id)
        assert got == [(s, p) for s, p in payloads.items() if s != 17]
        result = await store.commit([frame(a.id, 17, payloads[17]), frame(a.id, 3, payloads[3])])
        assert result.outcomes == [Outcome.STORED, Outcome.DUPLICATE]
        assert result.progress[a.id].complete
        assert result.progress[a.id].stream_crc32c == crc32c(b"".join(payloads.values()))
    finally:
        await store.close()


async def test_two_store_instances_commit_concurrently(backend: Backend) -> None:
    """Two instances on one backend (as two processes would be) keep every frame exactly once."""
    one, two = await backend.open_store(), await backend.open_store()
    try:
        sessions = [(await new_session(one)).id for _ in range(6)]
        total = 120

        def plan(rng: random.Random) -> list[list[FrameIn]]:
            frames = [
                frame(sid, seq, payload_of(sid, seq, 40 + seq % 50), end=seq == total - 1)
                for sid in sessions
                for seq in range(total)
            ]
            rng.shuffle(frames)
            return [frames[i : i + 37] for i in range(0, len(frames), 37)]

        async def run(store: Store, batches: list[list[FrameIn]]) -> list[tuple[str, int, Outcome]]:
            seen = []
            for batch in batches:
                result = await store.commit(batch)
                seen += [
                    (f.session_id, f.seq, o) for f, o in zip(batch, result.outcomes, strict=True)
                ]
            return seen

        # Both instances send every frame, in different orders, at the same time.
        first, second = await asyncio.gather(
            run(one, plan(random.Random(1))), run(two, plan(random.Random(2)))
        )
        stored: dict[tuple[str, int], int] = {}
        for sid, seq, outcome in first + second:
            assert outcome in (Outcome.STORED, Outcome.DUPLICATE)
            if outcome is Outcome.STORED:
                stored[sid, seq] = stored.get((sid, seq), 0) + 1
        assert len(stored) == len(sessions) * total
        assert set(stored.values()) == {1}, "each frame is stored by exactly one instance"

        for reader in (one, two):
            for sid in sessions:
                session = await reader.get_session(sid)
                assert session is not None
                assert session.state is SessionState.COMPLETE
                expected = [payload_of(sid, s, 40 + s % 50) for s in range(total)]
                assert session.stream_crc32c == crc32c(b"".join(expected))
                assert [p for _, p in await read_all(reader, sid)] == expected
    finally:
        await one.close()
        await two.close()


# -- against a model ---------------------------------------------------------------


class Model:
    """What one session should hold after a series of commits, frame by frame."""

    def __init__(self) -> None:
        self.stored: dict[int, FrameIn] = {}
        self.end: int | None = None

    def apply(self, item: FrameIn) -> Outcome:
        old = self.stored.get(item.seq)
        if old is not None:
            same = (old.crc32c, len(old.payload), old.flags) == (
                item.crc32c,
                len(item.payload),
                item.flags,
            )
            return Outcome.DUPLICATE if same else Outcome.CONFLICT
        if self.end is not None and item.seq > self.end:
            return Outcome.SEQUENCE
        if item.flags & 1 and self.stored and item.seq < max(self.stored):
            return Outcome.SEQUENCE
        self.stored[item.seq] = item
        if item.flags & 1:
            self.end = item.seq
        return Outcome.STORED

    def missing(self) -> list[list[int]]:
        top = max(self.stored, default=-1)
        gaps: list[list[int]] = []
        for seq in range(top):
            if seq not in self.stored:
                if gaps and gaps[-1][1] == seq - 1:
                    gaps[-1][1] = seq
                else:
                    gaps.append([seq, seq])
        return gaps

    @property
    def complete(self) -> bool:
        return self.end is not None and len(self.stored) == self.end + 1


@pytest.mark.parametrize("seed", range(8))
async def test_random_commits_match_the_model(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    sessions = [(await new_session(store)).id for _ in range(3)]
    models = {sid: Model() for sid in sessions}
    length = rng.randint(20, 60)
    for _ in range(60):
        batch = []
        for _ in range(rng.randint(1, 12)):
            sid = rng.choice(sessions)
            seq = rng.randint(0, length + 3)
            variant = rng.choice([b"", b"", b"", b"~"])  # mostly the canonical payload
            payload = payload_of(sid, seq, 10 + seq % 7) + variant
            batch.append(frame(sid, seq, payload, end=seq >= length and rng.random() < 0.5))
        result = await store.commit(batch)
        expected = [models[item.session_id].apply(item) for item in batch]
        assert result.outcomes == expected
        for sid in {item.session_id for item in batch}:
            model, progress = models[sid], result.progress[sid]
            assert progress.next_seq == max(model.stored, default=-1) + 1
            assert progress.frames == len(model.stored)
            assert progress.bytes == sum(len(f.payload) for f in model.stored.values())
            assert progress.end_seq == model.end
            assert progress.complete == model.complete
            if model.complete:
                data = b"".join(model.stored[s].payload for s in sorted(model.stored))
                assert progress.stream_crc32c == crc32c(data)
    for sid, model in models.items():
        assert await store.missing(sid) == model.missing()
        got = await read_all(store, sid)
        assert got == [(s, bytes(model.stored[s].payload)) for s in sorted(model.stored)]
