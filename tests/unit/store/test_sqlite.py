"""The embedded store's own promises: files on disk, crashes, several processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from voxgate._native import crc32c
from voxgate.store.base import Outcome, SessionState, StoreError
from voxgate.store.sqlite import DB_NAME, MIGRATIONS, SEGMENTS_DIR, SqliteStore
from voxgate.store.sqlite import frames as frames_module
from voxgate.store.sqlite.segments import pwrite_all

from .conftest import frame, payload_of
from .crash_child import payload as child_payload

REPO = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("crash_child.py")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(data_dir, durability="fsync", segment_max_bytes=4096)
    await opened.open()
    yield opened
    await opened.close()


async def new_session_id(store: SqliteStore) -> str:
    return (await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})).id


async def read_all(store: SqliteStore, session_id: str) -> list[tuple[int, bytes]]:
    return [item async for item in store.read_payloads(session_id)]


def segment_files(data_dir: Path) -> dict[str, int]:
    """Segment file name -> size."""
    return {p.name: p.stat().st_size for p in (data_dir / SEGMENTS_DIR).iterdir()}


def segment_rows(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Segment name -> (sealed, live, end_offset), read straight from the index."""
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        rows = conn.execute("SELECT name, sealed, live, end_offset FROM segments").fetchall()
    return {name: (sealed, live, end) for name, sealed, live, end in rows}


async def pragma(store: SqliteStore, name: str) -> object:
    """A PRAGMA's value, read on the store's own thread and connection."""

    def read() -> object:
        return store._conn.execute(f"PRAGMA {name}").fetchone()[0]

    return await store._call(read)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "python"), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


# -- layout and durability settings --------------------------------------------------


@pytest.mark.parametrize(("durability", "synchronous"), [("fsync", 2), ("process", 1)])
async def test_layout_and_pragmas(
    data_dir: Path, durability: Literal["fsync", "process"], synchronous: int
) -> None:
    store = SqliteStore(data_dir, durability=durability, segment_max_bytes=1024)
    await store.open()
    try:
        sid = await new_session_id(store)
        await store.commit([frame(sid, 0, b"x" * 10)])
        assert await pragma(store, "synchronous") == synchronous
        assert await pragma(store, "journal_mode") == "wal"
    finally:
        await store.close()
    assert (data_dir / DB_NAME).is_file()
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="durability"):
        SqliteStore("x", durability="never", segment_max_bytes=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="segment_max_bytes"):
        SqliteStore("x", durability="fsync", segment_max_bytes=0)


async def test_unusable_data_dir_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"not a directory")
    store = SqliteStore(blocker, durability="fsync", segment_max_bytes=1024)
    with pytest.raises(StoreError, match="I/O error"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.get_session("ses_x")


async def test_newer_schema_is_refused(data_dir: Path) -> None:
    store = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1024)
    await store.open()
    await store.close()
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        await store.open()


async def test_corrupt_payload_is_store_error(store: SqliteStore, data_dir: Path) -> None:
    sid = await new_session_id(store)
    await store.commit([frame(sid, 0, b"GOOD-PAYLOAD")])
    for path in (data_dir / SEGMENTS_DIR).iterdir():
        data = path.read_bytes()
        if b"GOOD-PAYLOAD" in data:
            path.write_bytes(data.replace(b"GOOD-PAYLOAD", b"EVIL-PAYLOAD"))
    with pytest.raises(StoreError, match="corrupt"):
        await read_all(store, sid)


# -- segments ------------------------------------------------------------------------


async def test_segments_rotate_and_empty_ones_are_unlinked(
    store: SqliteStore, data_dir: Path
) -> None:
    doomed, kept = await new_session_id(store), await new_session_id(store)
    # 4 KiB segments: the doomed session fills several on its own.
    for seq in range(0, 40, 4):
        await store.commit(
            [frame(doomed, s, payload_of(doomed, s, 500)) for s in range(seq, seq + 4)]
        )
    for seq in range(0, 10, 2):
        await store.commit([frame(kept, s, payload_of(kept, s, 900)) for s in range(seq, seq + 2)])
    before = segment_files(data_dir)
    assert len(before) >= 5
    assert max(before.values()) <= 4096 + 4 * 900, (
        "a segment grows past the limit by one batch at most"
    )

    assert await store.delete_session(doomed)
    after = segment_files(data_dir)
    assert len(after) < len(before)
    rows = segment_rows(data_dir)
    assert set(after) == set(rows)
    assert all(live > 0 for _, live, _ in rows.values()), "segments left hold live frames"
    assert await read_all(store, kept) == [(s, payload_of(kept, s, 900)) for s in range(10)]
    for path in (data_dir / SEGMENTS_DIR).iterdir():
        assert doomed.encode() not in path.read_bytes()


async def test_close_seals_and_reopen_starts_a_new_segment(data_dir: Path) -> None:
    store = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    await store.open()
    sid = await new_session_id(store)
    await store.commit([frame(sid, 0, b"first life")])
    await store.close()
    first = segment_files(data_dir)
    assert len(first) == 1
    assert all(sealed == 1 for sealed, _, _ in segment_rows(data_dir).values())

    await store.open()
    try:
        await store.commit([frame(sid, 1, b"second life")])
        files = segment_files(data_dir)
        assert len(files) == 2
        for name, size in first.items():
            assert files[name] == size, "a reopened store never appends to an old segment"
        assert await read_all(store, sid) == [(0, b"first life"), (1, b"second life")]
    finally:
        await store.close()


async def test_segment_without_live_frames_goes_at_close(data_dir: Path) -> None:
    store = SqliteStore(data_dir, durability="process", segment_max_bytes=1 << 20)
    await store.open()
    sid = await new_session_id(store)
    await store.commit([frame(sid, 0, b"short-lived")])
    assert await store.delete_session(sid)
    assert len(segment_files(data_dir)) == 1  # still being written
    await store.close()
    assert segment_files(data_dir) == {}
    assert segment_rows(data_dir) == {}


async def test_dead_writers_segment_is_cut_to_its_last_commit(data_dir: Path) -> None:
    dead = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    await dead.open()
    sid = await new_session_id(dead)
    await dead.commit([frame(sid, 0, b"committed")])
    segment = dead._segment
    assert segment is not None
    committed = segment.offset  # the block: its header, the frame's header and payload
    assert committed > len(b"committed")
    # A crash after writing a block, before its commit: bytes nobody indexed.
    os.pwrite(segment.fd, b"UNCOMMITTED-TAIL", committed)
    os.close(segment.fd)  # the process dies: its lock goes with it
    dead._segment = None
    await dead.close()

    survivor = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    await survivor.open()
    try:
        assert segment_files(data_dir) == {segment.name: committed}
        assert segment_rows(data_dir)[segment.name][0] == 1  # sealed
        assert await read_all(survivor, sid) == [(0, b"committed")]
    finally:
        await survivor.close()


async def test_live_writers_segment_is_left_alone(data_dir: Path) -> None:
    one = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    two = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    await one.open()
    try:
        sid = await new_session_id(one)
        await one.commit([frame(sid, 0, b"one")])
        await two.open()  # reaps on open: one's segment is locked, so untouched
        await two.commit([frame(sid, 1, b"two")])
        await one.commit([frame(sid, 2, b"three")])
        rows = segment_rows(data_dir)
        assert sorted(sealed for sealed, _, _ in rows.values()) == [0, 0]
        assert await read_all(two, sid) == [(0, b"one"), (1, b"two"), (2, b"three")]
    finally:
        await one.close()
        await two.close()


async def test_delete_erases_bytes_in_another_writers_segment(data_dir: Path) -> None:
    writer = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    deleter = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    await writer.open()
    await deleter.open()
    try:
        sid = await new_session_id(writer)
        await writer.commit([frame(sid, s, b"OTHER-PROCESS-SECRET-%d" % s) for s in range(30)])
        assert await deleter.delete_session(sid)
        for path in (data_dir / SEGMENTS_DIR).iterdir():
            assert b"OTHER-PROCESS-SECRET" not in path.read_bytes()
        # The writer's segment stays (it is being written) and keeps taking frames.
        other = await new_session_id(writer)
        assert (await writer.commit([frame(other, 0, b"fine")])).outcomes == [Outcome.STORED]
        assert (await writer.commit([frame(sid, 30, b"late")])).outcomes == [Outcome.GONE]
    finally:
        await writer.close()
        await deleter.close()


async def test_reading_a_session_deleted_meanwhile_just_ends(data_dir: Path) -> None:
    reader = SqliteStore(data_dir, durability="process", segment_max_bytes=1 << 20)
    deleter = SqliteStore(data_dir, durability="process", segment_max_bytes=1 << 20)
    await reader.open()
    await deleter.open()
    try:
        sid = await new_session_id(reader)
        # 16 MiB in 20 blocks: a read takes about 4 MiB of blocks per step.
        for first in range(0, 1000, 50):
            await reader.commit(
                [frame(sid, s, payload_of(sid, s, 16 * 1024)) for s in range(first, first + 50)]
            )
        seen = []
        async for seq, data in reader.read_payloads(sid):
            if seq == 0:
                assert await deleter.delete_session(sid)
            assert data == payload_of(sid, seq, 16 * 1024)
            seen.append(seq)
        assert 0 < len(seen) < 1000
    finally:
        await reader.close()
        await deleter.close()


async def test_payload_erased_between_index_and_read_ends_the_read(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await new_session_id(store)
    await store.commit([frame(sid, s, payload_of(sid, s)) for s in range(10)])
    original = frames_module.pread_named

    def delete_then_read(*args: Any) -> bytes | None:
        if store._get_session_sync(sid).state is not SessionState.DELETED:  # type: ignore[union-attr]
            store._delete_session_sync(sid)  # zeroes the bytes the index just pointed at
        return original(*args)

    monkeypatch.setattr(frames_module, "pread_named", delete_then_read)
    assert await read_all(store, sid) == []


async def test_orphan_segment_file_is_removed_on_open(data_dir: Path) -> None:
    store = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1024)
    await store.open()
    await store.close()
    orphan = data_dir / SEGMENTS_DIR / "0000000000000-1-deadbeef00.seg"
    orphan.write_bytes(b"")  # created, never registered (nothing is written before that)
    # Bytes no row names are blocks of a lost index: kept for `voxgate db check --repair`.
    unindexed = data_dir / SEGMENTS_DIR / "0000000000000-1-deadbeef01.seg"
    unindexed.write_bytes(b"blocks")
    await store.open()
    await store.close()
    assert not orphan.exists()
    assert unindexed.read_bytes() == b"blocks"


async def test_interrupted_erasure_finishes_on_open(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(data_dir, durability="fsync", segment_max_bytes=1 << 20)
    await store.open()
    doomed, kept = await new_session_id(store), await new_session_id(store)
    await store.commit([frame(doomed, 0, b"ERASE-ME-PLEASE"), frame(kept, 0, b"KEEP-ME")])

    def crash(self: SqliteStore) -> list[int]:
        raise OSError("simulated crash before erasing")

    with monkeypatch.context() as patch:
        patch.setattr(SqliteStore, "_erase_pending", crash)
        assert await store.delete_session(doomed)
        assert any(
            b"ERASE-ME-PLEASE" in p.read_bytes() for p in (data_dir / SEGMENTS_DIR).iterdir()
        )
    await store.close()

    await store.open()
    try:
        for path in (data_dir / SEGMENTS_DIR).iterdir():
            assert b"ERASE-ME-PLEASE" not in path.read_bytes()
        assert await read_all(store, kept) == [(0, b"KEEP-ME")]
        tomb = await store.get_session(doomed)
        assert tomb is not None
        assert tomb.state is SessionState.DELETED
    finally:
        await store.close()


async def test_failed_commit_leaves_no_trace(
    store: SqliteStore, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await new_session_id(store)
    await store.commit([frame(sid, 0, b"before")])

    def broken_sync(fd: int) -> None:
        raise OSError(5, "simulated fsync failure")

    with monkeypatch.context() as patch:
        patch.setattr("voxgate.store.sqlite.frames.datasync", broken_sync)
        with pytest.raises(StoreError, match="simulated fsync failure"):
            await store.commit([frame(sid, 1, b"NEVER-ACKED")])
    # The next commit goes to a fresh segment; the failed one is cut back and sealed.
    result = await store.commit([frame(sid, 1, b"after")])
    assert result.outcomes == [Outcome.STORED]
    assert await read_all(store, sid) == [(0, b"before"), (1, b"after")]
    for path in (data_dir / SEGMENTS_DIR).iterdir():
        assert b"NEVER-ACKED" not in path.read_bytes()


def test_short_writes_are_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite

    def stingy_pwritev(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> int:
        return real_pwrite(fd, bytes(buffers[0])[:3], offset)  # at most 3 bytes per call

    monkeypatch.setattr(os, "pwritev", stingy_pwritev)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        parts: list[bytes | memoryview] = [b"hello", memoryview(b"..world..")[2:7], b"", b"!"]
        assert pwrite_all(fd, parts, 2) == 2 + 11
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0\0helloworld!"


# -- several processes and crashes ------------------------------------------------------


def spawn(data_dir: Path, session_id: str, durability: str) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), session_id, durability],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def read_answers(child: subprocess.Popen[str], at_least: int) -> list[tuple[str, int]]:
    """Lines the child printed, at least ``at_least`` frames' worth, then the child is killed."""
    assert child.stdout is not None
    answers: list[tuple[str, int]] = []
    while len(answers) < at_least:
        line = child.stdout.readline()
        assert line, f"child exited early with {child.poll()}"
        kind, seq = line.split()[:2]
        answers.append((kind, int(seq)))
    return answers


def kill(child: subprocess.Popen[str]) -> list[tuple[str, int]]:
    """SIGKILL the child; returns the complete lines it printed before dying."""
    child.send_signal(signal.SIGKILL)
    assert child.stdout is not None
    rest = child.stdout.read()
    child.wait()
    answers = []
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):
            kind, seq = line.split()[:2]
            answers.append((kind, int(seq)))
    return answers


@pytest.mark.parametrize("durability", ["fsync", "process"])
async def test_killed_process_loses_no_answered_frame(
    data_dir: Path, durability: Literal["fsync", "process"]
) -> None:
    store = SqliteStore(data_dir, durability=durability, segment_max_bytes=16 * 1024)
    await store.open()
    sid = await new_session_id(store)
    await store.close()

    child = await asyncio.to_thread(spawn, data_dir, sid, durability)
    answers = await asyncio.to_thread(read_answers, child, 600)
    answers += await asyncio.to_thread(kill, child)
    assert child.returncode == -signal.SIGKILL
    assert {kind for kind, _ in answers} == {"S"}
    acked = sorted(seq for _, seq in answers)

    await store.open()
    try:
        stored = dict(await read_all(store, sid))
        for seq in acked:
            assert stored.get(seq) == child_payload(sid, seq), f"acked frame {seq} lost"
        assert set(stored) == set(range(len(stored))), "batches commit whole and in order"
        # The dead process's segments are sealed and cut to what was committed.
        for name, (sealed, _, end) in segment_rows(data_dir).items():
            assert sealed == 1
            assert (data_dir / SEGMENTS_DIR / name).stat().st_size == end
        # This process writes on at the next seq, in its own segment.
        next_seq = len(stored)
        result = await store.commit([frame(sid, next_seq, b"after the crash")])
        assert result.outcomes == [Outcome.STORED]
        assert (await store.get_session(sid)).frames == next_seq + 1  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_two_processes_share_one_data_dir(data_dir: Path) -> None:
    """Two real processes store the same frames at once: each frame lands exactly once."""
    store = SqliteStore(data_dir, durability="fsync", segment_max_bytes=16 * 1024)
    await store.open()
    sid = await new_session_id(store)
    await store.close()

    children = [await asyncio.to_thread(spawn, data_dir, sid, "process") for _ in range(2)]
    answers = await asyncio.gather(*(asyncio.to_thread(read_answers, c, 800) for c in children))
    for child, mine in zip(children, answers, strict=True):
        mine += await asyncio.to_thread(kill, child)
    stored_by = [{seq for kind, seq in mine if kind == "S"} for mine in answers]
    assert not stored_by[0] & stored_by[1], "a frame was stored by both processes"
    assert {kind for mine in answers for kind, _ in mine} <= {"S", "D"}
    answered = {seq for mine in answers for _, seq in mine}

    await store.open()
    try:
        stored = dict(await read_all(store, sid))
        for seq in answered:
            assert stored.get(seq) == child_payload(sid, seq)
        index = await store.frame_index(sid)
        assert [entry.seq for entry in index] == sorted(stored)
        assert all(entry.crc32c == crc32c(stored[entry.seq]) for entry in index)
    finally:
        await store.close()


# -- query plans of the hot path ------------------------------------------------------


def test_the_hot_statements_seek_by_key(tmp_path: Path) -> None:
    """What a commit and a resend ask must seek by key, whatever the store holds: a scan
    of every hot session (through the tier index) once cost 0.5 ms per commit."""
    from voxgate.store.sqlite.frames import (
        EXTENT_AT,
        EXTENTS_FROM,
        PAYLOAD_RUNS,
        READ_SESSIONS,
    )

    conn = sqlite3.connect(tmp_path / "plans.db")
    for steps in MIGRATIONS:
        for statement in steps:
            conn.execute(statement)
    plans = {
        "sessions": (READ_SESSIONS, ('["a"]', "deleted")),
        "extent at": (EXTENT_AT, ("a", 5)),
        "extents from": (EXTENTS_FROM, ("a", 5, 9, 64)),
        "payload runs": (PAYLOAD_RUNS, ("a",)),
    }
    for name, (statement, args) in plans.items():
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, args)]
        searches = [s for s in plan if s.startswith(("SEARCH sessions", "SEARCH extents"))]
        assert searches, (name, plan)
        assert all("PRIMARY KEY" in s for s in searches), (name, plan)
        assert not any(s.startswith(("SCAN sessions", "SCAN extents")) for s in plan), name
        # The view read whole (then sorted) instead of each table's ordered search.
        whole_view = ("SCAN all_extents", "CO-ROUTINE all_extents", "SCALAR SUBQUERY")
        assert not any(s.startswith(whole_view) for s in plan), (name, plan)
    conn.close()


async def test_recent_extents_move_when_due_and_reads_span_both_tables(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits append index rows to recent_extents; the store moves them into extents
    once MERGE_ROWS, or MERGE_ROWS_PER_SESSION per session those rows belong to, have
    gathered, never waiting past MERGE_MAX_ROWS. Reads, resends and missing reports see
    both tables alike."""
    monkeypatch.setattr(frames_module, "MERGE_ROWS", 4)
    monkeypatch.setattr(frames_module, "MERGE_ROWS_PER_SESSION", 2)
    monkeypatch.setattr(frames_module, "MERGE_MAX_ROWS", 10)
    store = SqliteStore(data_dir, durability="fsync")
    await store.open()
    stored: dict[str, list[int]] = {}

    async def commit(sid: str, seq: int) -> None:
        await store.commit([frame(sid, seq, payload_of(sid, seq))])
        stored.setdefault(sid, []).append(seq)

    async def rows() -> tuple[int, int]:
        """(rows in extents, rows in recent_extents), after any move a commit asked for."""

        def count() -> tuple[int, int]:
            conn = store._conn
            (moved,) = conn.execute("SELECT count(*) FROM extents").fetchone()
            (recent,) = conn.execute("SELECT count(*) FROM recent_extents").fetchone()
            return moved, recent

        return await store._call(count)

    async def four_rows_of_a_new_session(moved: int) -> None:
        """A new session alone is due at max(4, 1 x 2) = 4 rows: its fourth one-frame
        commit moves them, after ``moved`` rows moved before."""
        sid = await new_session_id(store)
        for seq in range(3):
            await commit(sid, seq)
        assert await rows() == (moved, 3)
        await commit(sid, 3)
        assert await rows() == (moved + 4, 0)

    try:
        # Six sessions: due at min(max(4, 6 x 2), 10) = 10 rows, the cap.
        many = [await new_session_id(store) for _ in range(6)]
        for sid in many:
            await commit(sid, 0)
        assert await rows() == (0, 6)
        for sid in many[:3]:
            await commit(sid, 1)
        assert await rows() == (0, 9)
        await commit(many[3], 1)
        assert await rows() == (10, 0)
        # The move forgot those sessions.
        await four_rows_of_a_new_session(moved=10)
        # Resends add no rows and count no session.
        resent = await store.commit([frame(sid, 0, payload_of(sid, 0)) for sid in many])
        assert resent.outcomes == [Outcome.DUPLICATE] * 6
        await four_rows_of_a_new_session(moved=14)
        # Seq 3 of many[5] goes to recent_extents past a gap at 1-2 (moved rows before it).
        await commit(many[5], 3)
        assert await store.missing(many[5]) == [[1, 2]]
        result = await store.commit(
            [
                frame(many[5], 1, payload_of(many[5], 1)),
                frame(many[5], 0, payload_of(many[5], 0)),
                frame(many[5], 3, b"other bytes"),
            ]
        )
        stored[many[5]].append(1)
        assert result.outcomes == [Outcome.STORED, Outcome.DUPLICATE, Outcome.CONFLICT]
        assert await store.missing(many[5]) == [[2, 2]]
        for sid, seqs in stored.items():
            expected = [(seq, payload_of(sid, seq)) for seq in sorted(seqs)]
            assert await read_all(store, sid) == expected
            session = await store.get_session(sid)
            assert session is not None
            assert session.frames == len(seqs)
    finally:
        await store.close()
