"""The Store's retention block: listing moves, begun and finished moves, figures, run records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from voxgate.store.base import (
    ArchiveRecord,
    Outcome,
    RetentionRun,
    Session,
    SessionState,
    Store,
    Tier,
    TranscriptIn,
)

from .conftest import Backend, frame, payload_of

LATER = timedelta(seconds=5)


async def new_session(store: Store) -> Session:
    return await store.create_session(
        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={"k": "v"}
    )


async def stream(store: Store, session_id: str, seqs: range, *, end: int | None = None) -> None:
    await store.commit(
        [frame(session_id, seq, payload_of(session_id, seq), end=seq == end) for seq in seqs]
    )


def cutoffs(
    *, hot: timedelta = LATER, warm: timedelta = -LATER, idle: timedelta = -LATER
) -> dict[str, datetime]:
    """Cutoffs relative to now: positive offsets make every session older than the cutoff."""
    now = datetime.now(UTC)
    return {"hot_before": now + hot, "warm_before": now + warm, "idle_before": now + idle}


async def moves_of(store: Store, **kwargs: timedelta) -> dict[str, tuple[Tier, Tier, bool]]:
    moves = await store.retention_moves(**cutoffs(**kwargs))
    return {m.session_id: (m.tier, m.target, m.resumed) for m in moves}


async def test_only_ended_or_idle_sessions_past_the_hot_age_move(store: Store) -> None:
    ended = await new_session(store)
    await stream(store, ended.id, range(3), end=2)
    gappy = await new_session(store)
    await stream(store, gappy.id, range(0, 4, 2), end=2)  # ended with a gap at seq 1
    open_ = await new_session(store)
    await stream(store, open_.id, range(2))

    # Everything is past the hot age, nothing idle yet: the open session stays.
    assert await moves_of(store) == {
        ended.id: (Tier.HOT, Tier.WARM, False),
        gappy.id: (Tier.HOT, Tier.WARM, False),
    }
    # Idle too: the open session moves as well.
    moved = await moves_of(store, idle=LATER)
    assert moved[open_.id] == (Tier.HOT, Tier.WARM, False)
    # Not past the hot age: nothing moves.
    assert await moves_of(store, hot=-LATER, idle=LATER) == {}
    # Past the warm age already: straight to cold.
    assert (await moves_of(store, warm=LATER))[ended.id] == (Tier.HOT, Tier.COLD, False)


async def test_a_begun_move_refuses_frames_and_is_listed_as_resumed(store: Store) -> None:
    session = await new_session(store)
    await stream(store, session.id, range(2))
    listed = (await store.retention_moves(**cutoffs(idle=LATER)))[0]
    assert await store.begin_move(session.id, Tier.WARM, listed.last_activity_at)
    assert not await store.begin_move(session.id, Tier.WARM, listed.last_activity_at)

    result = await store.commit([frame(session.id, 2, b"late")])
    assert result.outcomes == [Outcome.GONE]
    # Listed again, even with cutoffs that would not pick it: a killed run's move resumes.
    assert await moves_of(store, hot=-LATER) == {session.id: (Tier.HOT, Tier.WARM, True)}

    await store.cancel_move(session.id)
    result = await store.commit([frame(session.id, 2, b"late")])
    assert result.outcomes == [Outcome.STORED]


async def test_a_move_does_not_begin_once_the_session_took_frames(store: Store) -> None:
    session = await new_session(store)
    await stream(store, session.id, range(2))
    listed = (await store.retention_moves(**cutoffs(idle=LATER)))[0]
    await stream(store, session.id, range(2, 3))  # the client came back
    assert not await store.begin_move(session.id, Tier.WARM, listed.last_activity_at)
    assert not await store.begin_move(
        "ses_00000000000000000000000000", Tier.WARM, datetime.now(UTC)
    )


async def test_finishing_an_archive_drops_frames_and_their_bytes(
    backend: Backend, store: Store
) -> None:
    session = await new_session(store)
    await stream(store, session.id, range(0, 5, 2), end=4)  # 0, 2, 4: gaps 1 and 3
    keeper = await new_session(store)
    await stream(store, keeper.id, range(3))
    marker = payload_of(session.id, 2)
    assert await backend.holds_bytes(marker)
    listed = {m.session_id: m for m in await store.retention_moves(**cutoffs())}
    assert await store.begin_move(session.id, Tier.WARM, listed[session.id].last_activity_at)
    record = ArchiveRecord(
        path="2024/01/01/x.tar.zst", bytes=1234, payload_crc32c=99, created_at=datetime.now(UTC)
    )
    assert await store.finish_archive(session.id, record)

    moved = await store.get_session(session.id)
    assert moved is not None
    assert moved.tier is Tier.WARM
    assert moved.state is SessionState.ENDED
    assert (moved.frames, moved.bytes, moved.next_seq, moved.end_seq) == (3, 3 * 64, 5, 4)
    assert moved.metadata == {"k": "v"}
    assert await store.frame_index(session.id) == []
    assert await store.missing(session.id) == [[1, 1], [3, 3]]
    assert await store.archive_record(session.id) == record
    assert not await backend.holds_bytes(marker), "archived payload bytes must be erased"
    # The other session is untouched.
    assert [seq async for seq, _ in store.read_payloads(keeper.id)] == [0, 1, 2]
    # Finishing twice does nothing.
    assert not await store.finish_archive(session.id, record)
    assert (await store.commit([frame(session.id, 1, b"x")])).outcomes == [Outcome.GONE]


async def test_cold_keeps_metadata_and_the_archive_record_until_forgotten(store: Store) -> None:
    session = await new_session(store)
    await stream(store, session.id, range(2), end=1)
    listed = (await store.retention_moves(**cutoffs()))[0]
    await store.begin_move(session.id, Tier.WARM, listed.last_activity_at)
    record = ArchiveRecord(
        path="a/b.tar.zst", bytes=10, payload_crc32c=1, created_at=datetime.now(UTC)
    )
    await store.finish_archive(session.id, record)

    # Warm, past the warm age: to cold.
    assert await moves_of(store, warm=LATER) == {session.id: (Tier.WARM, Tier.COLD, False)}
    warm = await store.get_session(session.id)
    assert warm is not None
    assert await store.begin_move(session.id, Tier.COLD, warm.updated_at)
    assert await store.finish_cold(session.id)
    cold = await store.get_session(session.id)
    assert cold is not None
    assert cold.tier is Tier.COLD
    assert (cold.frames, cold.bytes, cold.stream_crc32c) == (
        warm.frames,
        warm.bytes,
        warm.stream_crc32c,
    )
    assert await store.archives_to_discard() == [(session.id, record)]
    await store.forget_archive(session.id)
    assert await store.archives_to_discard() == []
    assert await store.archive_record(session.id) is None
    assert await moves_of(store, warm=LATER, idle=LATER) == {}


async def test_deleting_a_warm_session_leaves_its_archive_to_discard(store: Store) -> None:
    session = await new_session(store)
    await stream(store, session.id, range(2), end=1)
    listed = (await store.retention_moves(**cutoffs()))[0]
    await store.begin_move(session.id, Tier.WARM, listed.last_activity_at)
    record = ArchiveRecord(
        path="c.tar.zst", bytes=10, payload_crc32c=1, created_at=datetime.now(UTC)
    )
    await store.finish_archive(session.id, record)
    assert await store.delete_session(session.id)
    assert await store.archives_to_discard() == [(session.id, record)]


async def test_a_session_deleted_during_a_move_cannot_be_finished(store: Store) -> None:
    session = await new_session(store)
    await stream(store, session.id, range(2), end=1)
    listed = (await store.retention_moves(**cutoffs()))[0]
    await store.begin_move(session.id, Tier.WARM, listed.last_activity_at)
    assert await store.delete_session(session.id)
    record = ArchiveRecord(
        path="d.tar.zst", bytes=10, payload_crc32c=1, created_at=datetime.now(UTC)
    )
    assert not await store.finish_archive(session.id, record)
    assert await store.archive_record(session.id) is None
    assert await moves_of(store, warm=LATER, idle=LATER) == {}


async def test_storage_stats_per_tier(store: Store) -> None:
    empty = await store.storage_stats()
    assert {tier: (s.sessions, s.bytes, s.oldest) for tier, s in empty.items()} == {
        Tier.HOT: (0, 0, None),
        Tier.WARM: (0, 0, None),
        Tier.COLD: (0, 0, None),
    }
    sessions = [await new_session(store) for _ in range(3)]
    for i, session in enumerate(sessions):
        await stream(store, session.id, range(i + 1), end=i)
    deleted = await new_session(store)
    await stream(store, deleted.id, range(4))
    await store.delete_session(deleted.id)
    listed = {m.session_id: m for m in await store.retention_moves(**cutoffs())}
    first = sessions[0]
    await store.begin_move(first.id, Tier.WARM, listed[first.id].last_activity_at)
    record = ArchiveRecord(
        path="e.tar.zst", bytes=777, payload_crc32c=1, created_at=datetime.now(UTC)
    )
    await store.finish_archive(first.id, record)

    stats = await store.storage_stats()
    hot, warm, cold = stats[Tier.HOT], stats[Tier.WARM], stats[Tier.COLD]
    assert (hot.sessions, hot.bytes, hot.audio_bytes) == (2, 5 * 64, 5 * 64)
    assert hot.oldest is not None
    assert hot.oldest.id == sessions[1].id
    assert hot.oldest.created_at == sessions[1].created_at
    assert (warm.sessions, warm.bytes, warm.audio_bytes) == (1, 777, 64)
    assert warm.oldest is not None
    assert warm.oldest.id == first.id
    assert (cold.sessions, cold.bytes, cold.oldest) == (0, 0, None)
    for figures in stats.values():  # plain ints, as the API shows them
        assert {type(v) for v in (figures.sessions, figures.bytes, figures.audio_bytes)} == {int}


async def test_run_records_round_trip(store: Store) -> None:
    assert await store.last_retention_run() is None
    now = datetime.now(UTC)
    first = await store.record_retention_run(
        RetentionRun(started_at=now, finished_at=now, outcome="ok", archived=2)
    )
    second = await store.record_retention_run(
        RetentionRun(
            started_at=now + LATER,
            finished_at=now + 2 * LATER,
            outcome="partial",
            archived=1,
            failed=1,
            errors=["ses_x: disk full"],
        )
    )
    assert first.id is not None
    assert second.id is not None
    assert second.id > first.id
    assert await store.last_retention_run() == second


async def test_the_retention_lock_admits_one_holder(backend: Backend) -> None:
    first, second = await backend.open_store(), await backend.open_store()
    try:
        async with first.retention_lock() as held:
            assert held
            async with second.retention_lock() as also:
                assert not also
        async with second.retention_lock() as held_now:
            assert held_now
    finally:
        await first.close()
        await second.close()


async def test_cold_sessions_keep_their_transcripts(store: Store) -> None:
    session = await new_session(store)
    await stream(store, session.id, range(2), end=1)
    said = TranscriptIn(role="caller", text="hello there", is_final=True, timestamp=1.5, seq=0)
    await store.add_transcript(session.id, said)
    before = await store.list_transcripts(session.id)
    assert [t.text for t in before] == ["hello there"]
    listed = (await store.retention_moves(**cutoffs(warm=LATER)))[0]
    assert listed.target is Tier.COLD
    assert await store.begin_move(session.id, Tier.COLD, listed.last_activity_at)
    assert await store.finish_cold(session.id)
    assert await store.frame_index(session.id) == []
    assert await store.list_transcripts(session.id) == before
