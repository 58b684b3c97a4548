"""The group-commit writer over a real store: the embedded one and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from unit.store.conftest import Backend, PostgresBackend, SqliteBackend
from voxgate._native import FLAG_END, Batch, Ledger, StreamCore, crc32c, encode_frame
from voxgate.ingest.writer import Writer, WriterFull
from voxgate.store.base import (
    ArchiveRecord,
    CommitResult,
    EventType,
    FrameEntry,
    FrameIn,
    ListenSnapshot,
    OutboxEvent,
    Outcome,
    Part,
    Progress,
    RetentionRun,
    Session,
    Store,
    StoredFrame,
    StoreError,
    Tier,
    TierMove,
    TierStats,
    Transcript,
    TranscriptIn,
    TranscriptResult,
    frames_of,
)


def frame(session_id: str, seq: int, payload: bytes, *, end: bool = False) -> FrameIn:
    return FrameIn(session_id, seq, FLAG_END if end else 0, 0, crc32c(payload), payload)


# Credit enough for any test: batches are built as a stream would build them.
_LEDGER = Ledger(1 << 30, 1 << 40, 1 << 39, 1 << 41)


def batch_of(session_id: str, frames: list[tuple[int, bytes, bool]]) -> Batch:
    """One stream message of ``(seq, payload, end)`` frames, decoded by the core."""
    core = StreamCore(
        _LEDGER,
        _LEDGER.open(),
        session_id,
        max_frame_bytes=1 << 20,
        max_seq_ahead=1 << 40,
        next_seq=0,
    )
    message = b"".join(encode_frame(seq, payload, 0, end) for seq, payload, end in frames)
    batch = core.accept(message, False)
    assert batch is not None
    return batch


class CountingStore:
    """A real store of either kind, counting its commits; ``gate`` (when set) holds each commit."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.batches: list[list[FrameIn]] = []  # each commit's frames, Batches opened
        self.gate: asyncio.Event | None = None
        self.fail_with: BaseException | None = None

    async def commit(self, frames: Sequence[Part]) -> CommitResult:
        self.batches.append(frames_of(frames))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return await self.inner.commit(frames)

    # The rest of the Store protocol, as the inner store answers it.

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def create_session(
        self,
        *,
        codec: str | None,
        sample_rate: int | None,
        channels: int | None,
        metadata: dict[str, Any],
        tenant: str | None = None,
    ) -> Session:
        return await self.inner.create_session(
            codec=codec,
            sample_rate=sample_rate,
            channels=channels,
            metadata=metadata,
            tenant=tenant,
        )

    async def get_session(self, session_id: str) -> Session | None:
        return await self.inner.get_session(session_id)

    async def list_sessions(
        self, *, limit: int, after: str | None, tenant: str | None = None
    ) -> list[Session]:
        return await self.inner.list_sessions(limit=limit, after=after, tenant=tenant)

    async def delete_session(self, session_id: str) -> bool:
        return await self.inner.delete_session(session_id)

    async def missing(self, session_id: str) -> list[list[int]]:
        return await self.inner.missing(session_id)

    async def frame_index(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> list[FrameEntry]:
        return await self.inner.frame_index(session_id, first_seq, last_seq)

    async def payload_runs(self, session_id: str) -> list[tuple[int, int, int]]:
        return await self.inner.payload_runs(session_id)

    def read_payloads(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        return self.inner.read_payloads(session_id, first_seq, last_seq)

    async def claim_stream(self, session_id: str) -> int:
        return await self.inner.claim_stream(session_id)

    async def stream_generations(self, session_ids: Sequence[str]) -> dict[str, int]:
        return await self.inner.stream_generations(session_ids)

    # -- retention --

    async def retention_moves(
        self, *, hot_before: datetime, warm_before: datetime, idle_before: datetime
    ) -> list[TierMove]:
        return await self.inner.retention_moves(
            hot_before=hot_before, warm_before=warm_before, idle_before=idle_before
        )

    async def begin_move(self, session_id: str, target: Tier, seen_activity: datetime) -> bool:
        return await self.inner.begin_move(session_id, target, seen_activity)

    async def cancel_move(self, session_id: str) -> None:
        await self.inner.cancel_move(session_id)

    async def finish_archive(self, session_id: str, archive: ArchiveRecord) -> bool:
        return await self.inner.finish_archive(session_id, archive)

    async def finish_cold(self, session_id: str) -> bool:
        return await self.inner.finish_cold(session_id)

    async def archive_record(self, session_id: str) -> ArchiveRecord | None:
        return await self.inner.archive_record(session_id)

    async def archives_to_discard(self) -> list[tuple[str, ArchiveRecord]]:
        return await self.inner.archives_to_discard()

    async def forget_archive(self, session_id: str) -> None:
        await self.inner.forget_archive(session_id)

    async def storage_stats(self) -> dict[Tier, TierStats]:
        return await self.inner.storage_stats()

    async def record_retention_run(self, run: RetentionRun) -> RetentionRun:
        return await self.inner.record_retention_run(run)

    async def last_retention_run(self) -> RetentionRun | None:
        return await self.inner.last_retention_run()

    def retention_lock(self) -> AbstractAsyncContextManager[bool]:
        return self.inner.retention_lock()

    async def add_transcript(self, session_id: str, entry: TranscriptIn) -> TranscriptResult:
        return await self.inner.add_transcript(session_id, entry)

    async def list_transcripts(
        self, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Transcript]:
        return await self.inner.list_transcripts(session_id, after=after, limit=limit)

    async def last_transcript_id(self, session_id: str) -> int:
        return await self.inner.last_transcript_id(session_id)

    async def listen_snapshot(self, session_id: str) -> ListenSnapshot:
        return await self.inner.listen_snapshot(session_id)

    async def read_frames(
        self, session_id: str, first_seq: int, last_seq: int, *, max_frames: int, max_bytes: int
    ) -> list[StoredFrame]:
        return await self.inner.read_frames(
            session_id, first_seq, last_seq, max_frames=max_frames, max_bytes=max_bytes
        )

    async def enqueue_event(self, session_id: str, kind: EventType) -> bool:
        return await self.inner.enqueue_event(session_id, kind)

    async def claim_events(self, *, limit: int, lease_s: float) -> list[OutboxEvent]:
        return await self.inner.claim_events(limit=limit, lease_s=lease_s)

    async def event_delivered(self, event_id: str, claim: str) -> bool:
        return await self.inner.event_delivered(event_id, claim)

    async def retry_event(self, event_id: str, claim: str, *, delay_s: float, error: str) -> bool:
        return await self.inner.retry_event(event_id, claim, delay_s=delay_s, error=error)

    async def fail_event(self, event_id: str, claim: str, *, error: str) -> bool:
        return await self.inner.fail_event(event_id, claim, error=error)

    async def event_counts(self) -> dict[str, int]:
        return await self.inner.event_counts()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CountingStore]:
    backend: Backend
    if request.param == "sqlite":
        backend = SqliteBackend(tmp_path / "data", segment_max_bytes=1 << 20)
    else:
        pg = PostgresBackend(request.getfixturevalue("store_database"))
        await pg.reset()
        backend = pg
    opened = await backend.open_store()
    yield CountingStore(opened)
    await opened.close()


async def new_sessions(store: CountingStore, n: int) -> list[str]:
    return [
        (await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})).id
        for _ in range(n)
    ]


@pytest.fixture
async def writer(store: CountingStore) -> AsyncIterator[Writer]:
    started = Writer(store, max_frames=4096, max_bytes=1 << 20)
    await started.start()
    yield started
    await started.stop()


async def test_concurrent_streams_share_transactions(store: CountingStore, writer: Writer) -> None:
    sessions = await new_sessions(store, 40)
    rounds = 5

    async def stream(sid: str) -> list[CommitResult]:
        results = []
        for r in range(rounds):
            batch = [frame(sid, r * 3 + i, f"{sid}/{r}/{i}".encode()) for i in range(3)]
            results.append(await writer.commit(batch))
        return results

    answers = await asyncio.gather(*(stream(sid) for sid in sessions))
    calls = len(sessions) * rounds
    assert len(store.batches) <= calls // 5, f"{len(store.batches)} commits for {calls} calls"
    assert max(len({f.session_id for f in b}) for b in store.batches) > 10
    for sid, results in zip(sessions, answers, strict=True):
        for result in results:
            assert result.outcomes == [Outcome.STORED] * 3
            assert set(result.progress) == {sid}, "a caller sees only its own sessions"
        assert results[-1].progress[sid].next_seq == rounds * 3
    assert writer.commits == len(store.batches)


async def test_outcomes_are_sliced_per_caller(store: CountingStore, writer: Writer) -> None:
    a, b = await new_sessions(store, 2)
    await writer.commit([frame(a, 0, b"a0")])
    first, second = await asyncio.gather(
        writer.commit([frame(a, 0, b"a0"), frame(a, 1, b"a1"), frame("ses_nobody", 0, b"?")]),
        writer.commit([frame(b, 0, b"b0"), frame(a, 1, b"other")]),
    )
    assert len(store.batches) == 2  # the gathered pair went in one transaction
    assert first.outcomes == [Outcome.DUPLICATE, Outcome.STORED, Outcome.GONE]
    assert second.outcomes == [Outcome.STORED, Outcome.CONFLICT]
    assert set(first.progress) == {a}
    assert set(second.progress) == {a, b}


async def test_transactions_respect_frame_and_byte_limits(store: CountingStore) -> None:
    writer = Writer(store, max_frames=5, max_bytes=1000)
    await writer.start()
    try:
        sessions = await new_sessions(store, 12)
        results = await asyncio.gather(
            *(writer.commit([frame(sid, 0, b"x" * 300), frame(sid, 1, b"y")]) for sid in sessions)
        )
        assert all(r.outcomes == [Outcome.STORED, Outcome.STORED] for r in results)
        for batch in store.batches:
            assert len(batch) <= 5
            assert sum(len(f.payload) for f in batch) <= 1000
    finally:
        await writer.stop()


async def test_large_submission_is_split(store: CountingStore) -> None:
    writer = Writer(store, max_frames=4, max_bytes=100)
    await writer.start()
    try:
        (sid,) = await new_sessions(store, 1)
        frames = [frame(sid, seq, bytes([seq]) * 30, end=seq == 10) for seq in range(11)]
        result = await writer.commit(frames)
        assert result.outcomes == [Outcome.STORED] * 11
        assert result.progress[sid].complete, "progress comes from the last piece"
        assert len(store.batches) >= 4
        assert all(len(b) <= 4 and sum(len(f.payload) for f in b) <= 100 for b in store.batches)
    finally:
        await writer.stop()


async def test_store_error_reaches_every_waiter_of_the_batch(
    store: CountingStore, writer: Writer
) -> None:
    sessions = await new_sessions(store, 5)
    store.fail_with = StoreError("disk on fire")
    results = await asyncio.gather(
        *(writer.commit([frame(sid, 0, b"p")]) for sid in sessions), return_exceptions=True
    )
    assert len(store.batches) == 1
    assert all(isinstance(r, StoreError) and "disk on fire" in str(r) for r in results)
    assert writer.held_bytes == 0

    store.fail_with = None  # the writer keeps going after a failed commit
    result = await writer.commit([frame(sessions[0], 0, b"p")])
    assert result.outcomes == [Outcome.STORED]


async def test_unexpected_error_reaches_waiters_too(store: CountingStore, writer: Writer) -> None:
    (sid,) = await new_sessions(store, 1)
    store.fail_with = RuntimeError("bug")
    with pytest.raises(RuntimeError, match="bug"):
        await writer.commit([frame(sid, 0, b"p")])
    store.fail_with = None
    assert (await writer.commit([frame(sid, 0, b"p")])).outcomes == [Outcome.STORED]


async def test_held_bytes_are_capped(store: CountingStore) -> None:
    writer = Writer(store, max_frames=100, max_bytes=1000)  # hard limit 4000 bytes
    await writer.start()
    try:
        (sid,) = await new_sessions(store, 1)
        store.gate = asyncio.Event()
        pending = [asyncio.ensure_future(writer.commit([frame(sid, 0, b"a" * 1000)]))]
        await asyncio.sleep(0)  # the first one is now being committed (held at the gate)
        pending += [
            asyncio.ensure_future(writer.commit([frame(sid, seq, b"b" * 1000)]))
            for seq in (1, 2, 3)
        ]
        await asyncio.sleep(0)
        assert writer.held_bytes == 4000
        with pytest.raises(WriterFull):
            await writer.commit([frame(sid, 4, b"c")])
        assert isinstance(WriterFull("x"), StoreError)
        store.gate.set()
        results = await asyncio.gather(*pending)
        assert [r.outcomes for r in results] == [[Outcome.STORED]] * 4
        assert writer.held_bytes == 0
        assert (await writer.commit([frame(sid, 4, b"c")])).outcomes == [Outcome.STORED]
    finally:
        await writer.stop()


async def test_stop_commits_what_was_submitted(store: CountingStore) -> None:
    writer = Writer(store, max_frames=2, max_bytes=1 << 20)
    await writer.start()
    (sid,) = await new_sessions(store, 1)
    store.gate = asyncio.Event()
    pending = [asyncio.ensure_future(writer.commit([frame(sid, seq, b"s")])) for seq in range(6)]
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(writer.stop())
    await asyncio.sleep(0)
    with pytest.raises(StoreError, match="not running"):
        await writer.commit([frame(sid, 9, b"late")])
    store.gate.set()
    await stopping
    assert [r.outcomes for r in await asyncio.gather(*pending)] == [[Outcome.STORED]] * 6
    assert (await store.get_session(sid)).frames == 6  # type: ignore[union-attr]


async def test_cancelled_caller_is_skipped_while_queued(
    store: CountingStore, writer: Writer
) -> None:
    a, b = await new_sessions(store, 2)
    store.gate = asyncio.Event()
    first = asyncio.ensure_future(writer.commit([frame(a, 0, b"first")]))
    await asyncio.sleep(0)  # being committed
    gone = asyncio.ensure_future(writer.commit([frame(b, 0, b"abandoned")]))
    await asyncio.sleep(0)
    gone.cancel()
    store.gate.set()
    assert (await first).outcomes == [Outcome.STORED]
    assert (await writer.commit([frame(a, 1, b"next")])).outcomes == [Outcome.STORED]
    assert all(f.session_id != b for batch in store.batches for f in batch)
    assert writer.held_bytes == 0


async def test_commit_needs_a_running_writer(store: CountingStore) -> None:
    writer = Writer(store, max_frames=10, max_bytes=100)
    with pytest.raises(StoreError, match="not running"):
        await writer.commit([frame("ses_x", 0, b"p")])
    assert (await writer.commit([])).outcomes == []
    with pytest.raises(ValueError, match="at least 1"):
        Writer(store, max_frames=0, max_bytes=100)


class Answers:
    """Collects what :meth:`Writer.submit` calls back with; ``wait`` until ``n`` came."""

    def __init__(self) -> None:
        self.got: list[tuple[CommitResult | None, BaseException | None]] = []
        self._event = asyncio.Event()

    def __call__(
        self,
        batch: Batch,
        outcomes: list[Outcome] | None,
        progress: Progress | None,
        exc: BaseException | None,
    ) -> None:
        result = None
        if outcomes is not None:
            assert len(outcomes) == len(batch), "answers exactly the batch's frames"
            mine = {} if progress is None else {batch.session_id: progress}
            result = CommitResult(outcomes, mine)
        self.got.append((result, exc))
        self._event.set()

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(30):
            while len(self.got) < n:
                self._event.clear()
                await self._event.wait()


async def test_submitted_frames_share_transactions_with_commits(
    store: CountingStore, writer: Writer
) -> None:
    sessions = await new_sessions(store, 3)
    store.gate = asyncio.Event()
    answers = [Answers() for _ in sessions]
    first = asyncio.ensure_future(writer.commit([frame(sessions[0], 0, b"held")]))
    for _ in range(20):  # a few loop turns: the writer takes it to the store
        await asyncio.sleep(0)
    assert len(store.batches) == 1  # being committed, held at the gate
    for sid, answer in zip(sessions, answers, strict=True):
        batch = batch_of(sid, [(1, b"a", False), (2, b"b", False)])
        writer.submit(batch, 2, answer)
    store.gate.set()
    assert (await first).outcomes == [Outcome.STORED]
    for sid, answer in zip(sessions, answers, strict=True):
        await answer.wait(1)
        ((result, exc),) = answer.got  # called exactly once
        assert exc is None
        assert result is not None
        assert result.outcomes == [Outcome.STORED, Outcome.STORED]
        assert set(result.progress) == {sid}, "each caller hears of its own session only"
        assert result.progress[sid].next_seq == 3
    assert len(store.batches) == 2  # the held commit, then all three submissions in one


async def test_a_submitted_message_is_committed_whole(store: CountingStore) -> None:
    # A batch is one WebSocket message, bounded by the message size limit: splitting it
    # over transactions would only add commits.
    writer = Writer(store, max_frames=4, max_bytes=1000)
    await writer.start()
    try:
        (sid,) = await new_sessions(store, 1)
        frames = [(seq, bytes([seq]) * 30, seq == 10) for seq in range(11)]
        answer = Answers()
        writer.submit(batch_of(sid, frames), 330, answer)
        await answer.wait(1)
        ((result, exc),) = answer.got
        assert exc is None
        assert result is not None
        assert result.outcomes == [Outcome.STORED] * 11
        assert result.progress[sid].complete
        assert [len(b) for b in store.batches] == [11]
        stored = [p for _, p in [x async for x in store.read_payloads(sid)]]
        assert stored == [payload for _, payload, _ in frames]
    finally:
        await writer.stop()


async def test_submit_refuses_at_once_or_calls_back_with_the_error(
    store: CountingStore,
) -> None:
    writer = Writer(store, max_frames=100, max_bytes=1000)  # hard limit 4000 bytes
    (sid,) = await new_sessions(store, 1)
    never = Answers()
    with pytest.raises(StoreError, match="not running"):
        writer.submit(batch_of(sid, [(0, b"x", False)]), 1, never)
    await writer.start()
    try:
        store.gate = asyncio.Event()
        held = [Answers() for _ in range(4)]
        for seq, answer in enumerate(held):
            writer.submit(batch_of(sid, [(seq, b"a" * 1000, False)]), 1000, answer)
        with pytest.raises(WriterFull):
            writer.submit(batch_of(sid, [(9, b"c", False)]), 1, never)
        store.fail_with = StoreError("disk on fire")
        store.gate.set()
        for answer in held:
            await answer.wait(1)
            ((result, exc),) = answer.got
            assert result is None
            assert isinstance(exc, StoreError)
            assert "disk on fire" in str(exc)
        assert writer.held_bytes == 0
        assert never.got == []  # refused submissions are never called back
    finally:
        store.fail_with = None
        await writer.stop()
