"""The retention runner in-process: moves, verification before deletion, failures, the lock."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from voxgate.retention import storage_gauges
from voxgate.retention.archive import ArchiveReader, archive_relpath, verify_archive
from voxgate.retention.runner import Retention, next_run_after
from voxgate.settings import Settings
from voxgate.store.base import Outcome, Session, Store, Tier

from .conftest import Backend, frame, payload_of


def policy(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "archive_dir": str(tmp_path / "archive"),
        "retention_hot_days": 0,
        "retention_warm_days": 30,
        "retention_idle_hours": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def streamed(
    store: Store, frames: int, size: int = 64, *, end: bool = True
) -> tuple[Session, bytes]:
    """A session with ``frames`` frames (ended unless told), and its audio."""
    session = await store.create_session(
        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={}
    )
    payloads = [payload_of(session.id, seq, size) for seq in range(frames)]
    await store.commit(
        [frame(session.id, seq, p, end=end and seq == frames - 1) for seq, p in enumerate(payloads)]
    )
    got = await store.get_session(session.id)
    assert got is not None
    return got, b"".join(payloads)


def archived_audio(retention: Retention, path: Path) -> bytes:
    with ArchiveReader(path) as reader:
        return reader.read_exact(*reader.audio_span())


async def test_a_run_archives_verifies_then_drops_hot_frames(
    tmp_path: Path, backend: Backend, store: Store
) -> None:
    retention = Retention(store, policy(tmp_path))
    big, big_audio = await streamed(store, 12, size=200_000)  # several compressed blocks
    small, small_audio = await streamed(store, 3)
    idle, idle_audio = await streamed(store, 2, end=False)  # open, idle past 0 hours
    marker = payload_of(big.id, 5, 200_000)

    run = await retention.run()
    assert run is not None
    assert (run.outcome, run.archived, run.reused, run.failed) == ("ok", 3, 0, 0)
    for session, audio in ((big, big_audio), (small, small_audio), (idle, idle_audio)):
        moved = await store.get_session(session.id)
        assert moved is not None
        assert moved.tier is Tier.WARM
        assert (moved.frames, moved.bytes) == (session.frames, session.bytes)
        record = await store.archive_record(session.id)
        assert record is not None
        assert record.path == archive_relpath(session)
        path = retention.archive_dir / record.path
        assert record.bytes == path.stat().st_size
        assert archived_audio(retention, path) == audio
        assert verify_archive(path, session_id=session.id).manifest.frames == session.frames
        assert await store.frame_index(session.id) == []
        # A warm session takes no frames any more.
        assert (await store.commit([frame(session.id, 99, b"late")])).outcomes == [Outcome.GONE]
    assert not await backend.holds_bytes(marker), "hot payload bytes stay erased once archived"
    assert run.bytes_archived == sum(
        (retention.archive_dir / archive_relpath(s)).stat().st_size for s in (big, small, idle)
    )
    assert await store.last_retention_run() == run
    assert not any((retention.archive_dir / ".tmp").iterdir())

    again = await retention.run()
    assert again is not None
    assert (again.outcome, again.archived, again.expired) == ("ok", 0, 0)


async def test_sessions_younger_than_the_hot_age_or_still_live_stay_hot(
    tmp_path: Path, store: Store
) -> None:
    retention = Retention(store, policy(tmp_path, retention_hot_days=1))
    session, _ = await streamed(store, 2)
    live = Retention(store, policy(tmp_path, retention_idle_hours=1))
    open_session, _ = await streamed(store, 2, end=False)
    for runner in (retention, live):
        run = await runner.run()
        assert run is not None
        assert run.archived == (1 if runner is live else 0)
    assert (await store.get_session(session.id)).tier is Tier.WARM  # type: ignore[union-attr]
    assert (await store.get_session(open_session.id)).tier is Tier.HOT  # type: ignore[union-attr]


async def test_one_failing_session_is_counted_and_retried_without_blocking_the_others(
    tmp_path: Path, store: Store
) -> None:
    retention = Retention(store, policy(tmp_path))
    sessions = [await streamed(store, 3) for _ in range(3)]
    stuck = sessions[1][0]
    blocker = retention.archive_dir / archive_relpath(stuck)
    blocker.mkdir(parents=True)  # a directory where its archive must go: the rename fails
    (blocker / "keep").write_text("x")

    run = await retention.run()
    assert run is not None
    assert (run.outcome, run.archived, run.failed) == ("partial", 2, 1)
    assert run.errors
    assert run.errors[0].startswith(stuck.id)
    assert (await store.get_session(stuck.id)).tier is Tier.HOT  # type: ignore[union-attr]
    # Its move was cancelled: it takes frames again, and nothing of it was lost.
    assert [seq async for seq, _ in store.read_payloads(stuck.id)] == [0, 1, 2]
    for session, _ in (sessions[0], sessions[2]):
        assert (await store.get_session(session.id)).tier is Tier.WARM  # type: ignore[union-attr]

    (blocker / "keep").unlink()
    blocker.rmdir()
    retried = await retention.run()
    assert retried is not None
    assert (retried.outcome, retried.archived, retried.failed) == ("ok", 1, 0)
    assert archived_audio(retention, blocker) == sessions[1][1]


async def test_an_unsound_file_at_the_archive_path_is_rewritten(
    tmp_path: Path, store: Store
) -> None:
    retention = Retention(store, policy(tmp_path))
    session, audio = await streamed(store, 4)
    path = retention.archive_dir / archive_relpath(session)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an archive")
    run = await retention.run()
    assert run is not None
    assert (run.archived, run.reused, run.failed) == (1, 0, 0)
    assert archived_audio(retention, path) == audio


async def test_a_dry_run_changes_nothing(tmp_path: Path, store: Store) -> None:
    retention = Retention(store, policy(tmp_path))
    session, _ = await streamed(store, 2)
    run = await retention.run(dry_run=True)
    assert run is not None
    assert run.dry_run
    assert run.archived == 1
    assert (await store.get_session(session.id)).tier is Tier.HOT  # type: ignore[union-attr]
    assert await store.last_retention_run() is None
    assert not retention.archive_dir.exists()


async def test_warm_sessions_go_cold_and_lose_their_archive_only(
    tmp_path: Path, store: Store
) -> None:
    session, _ = await streamed(store, 3)
    run = await Retention(store, policy(tmp_path)).run()
    assert run is not None
    assert run.archived == 1
    path = tmp_path / "archive" / archive_relpath(session)
    assert path.is_file()

    cold = Retention(store, policy(tmp_path, retention_warm_days=0))
    run = await cold.run()
    assert run is not None
    assert (run.outcome, run.expired) == ("ok", 1)
    got = await store.get_session(session.id)
    assert got is not None
    assert got.tier is Tier.COLD
    assert (got.frames, got.bytes, got.metadata, got.stream_crc32c) == (
        session.frames,
        session.bytes,
        session.metadata,
        session.stream_crc32c,
    )
    assert not path.exists()
    assert await store.archive_record(session.id) is None


async def test_hot_sessions_past_the_warm_age_go_straight_to_cold(
    tmp_path: Path, backend: Backend, store: Store
) -> None:
    session, _ = await streamed(store, 3)
    run = await Retention(store, policy(tmp_path, retention_warm_days=0)).run()
    assert run is not None
    assert (run.archived, run.expired) == (0, 1)
    assert (await store.get_session(session.id)).tier is Tier.COLD  # type: ignore[union-attr]
    assert not await backend.holds_bytes(payload_of(session.id, 1))


async def test_a_second_runner_does_not_run(tmp_path: Path, backend: Backend, store: Store) -> None:
    await streamed(store, 2)
    other = await backend.open_store()
    try:
        async with other.retention_lock() as held:
            assert held
            assert await Retention(store, policy(tmp_path)).run() is None
    finally:
        await other.close()


async def test_the_figures_are_published_as_prometheus_gauges(tmp_path: Path, store: Store) -> None:
    await streamed(store, 2)
    hot, _ = await streamed(store, 3, end=False)
    await Retention(store, policy(tmp_path, retention_idle_hours=1)).run()
    stats, last_run = await storage_gauges.refresh(store)
    assert last_run is not None

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert value("voxgate_storage_sessions", tier="hot") == 1
    assert value("voxgate_storage_sessions", tier="warm") == 1
    assert value("voxgate_storage_sessions", tier="cold") == 0
    assert value("voxgate_storage_bytes", tier="hot") == hot.bytes
    assert value("voxgate_storage_bytes", tier="warm") == stats[Tier.WARM].bytes > 0
    assert value("voxgate_storage_oldest_session_created_seconds", tier="hot") == pytest.approx(
        hot.created_at.timestamp()
    )
    assert value("voxgate_retention_last_run_ok") == 1
    assert value("voxgate_retention_last_run_sessions", result="archived") == 1
    assert value("voxgate_retention_last_run_finished_seconds") == pytest.approx(
        last_run.finished_at.timestamp()
    )


def test_the_daily_run_is_due_at_the_next_matching_time_of_day() -> None:
    at = time(3, 30, tzinfo=UTC)
    before = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    assert next_run_after(before, at) == datetime(2024, 5, 1, 3, 30, tzinfo=UTC)
    on_time = datetime(2024, 5, 1, 3, 30, tzinfo=UTC)
    assert next_run_after(on_time, at) == datetime(2024, 5, 2, 3, 30, tzinfo=UTC)
    year_end = datetime(2024, 12, 31, 23, 59, tzinfo=UTC)
    assert next_run_after(year_end, at) == datetime(2025, 1, 1, 3, 30, tzinfo=UTC)
    elsewhere = datetime(2024, 5, 1, 5, 0, tzinfo=UTC) + timedelta(hours=0)
    assert next_run_after(elsewhere.astimezone(), at) == datetime(2024, 5, 2, 3, 30, tzinfo=UTC)


async def test_an_unrecorded_archive_of_a_session_going_cold_is_removed(
    tmp_path: Path, store: Store
) -> None:
    session, _ = await streamed(store, 2)
    # Left by a move to warm that wrote its archive, then failed and was undone.
    orphan = tmp_path / "archive" / archive_relpath(session)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"archive of an undone move")
    run = await Retention(store, policy(tmp_path, retention_warm_days=0)).run()
    assert run is not None
    assert (run.outcome, run.expired) == ("ok", 1)
    assert not orphan.exists()


async def test_a_session_deleted_during_a_begun_move_is_no_failure(
    tmp_path: Path, store: Store
) -> None:
    session, _ = await streamed(store, 2)
    kept, _ = await streamed(store, 2)
    # A killed run began the move; the session was deleted before the next run.
    assert await store.begin_move(session.id, Tier.WARM, session.updated_at)
    assert await store.delete_session(session.id)
    retention = Retention(store, policy(tmp_path))
    run = await retention.run()
    assert run is not None
    assert (run.outcome, run.archived, run.failed) == ("ok", 1, 0)
    assert not (retention.archive_dir / archive_relpath(session)).exists()
    assert (retention.archive_dir / archive_relpath(kept)).exists()
