"""``voxgate db check [--repair]``: the index checked against, and rebuilt from, the segments.

Each test damages a store the way an operator could find it (index rows gone,
the whole database gone, a corrupt block, wrong counters) and checks that the
check says so and the repair gives back every frame the segments still hold.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson

from voxgate.core import native
from voxgate.store.base import Outcome, SessionState
from voxgate.store.sqlite import DB_NAME, SEGMENTS_DIR, SqliteStore

from .conftest import frame, payload_of

Audio = dict[str, list[tuple[int, bytes]]]


async def _fill(store: SqliteStore) -> tuple[Audio, dict[str, SessionState]]:
    """Three sessions: complete, with a gap, deleted; several commits and segments."""
    sessions = [
        await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
        for _ in range(3)
    ]
    complete, gappy, deleted = (s.id for s in sessions)
    for first in range(0, 40, 10):
        batch = [frame(complete, s, payload_of(complete, s, 300)) for s in range(first, first + 10)]
        batch += [
            frame(gappy, s, payload_of(gappy, s)) for s in range(first, first + 10) if s != 15
        ]
        batch += [frame(deleted, s, payload_of(deleted, s)) for s in range(first, first + 10)]
        await store.commit(batch)
    end = payload_of(complete, 40, 5)
    await store.commit([frame(complete, 40, end, end=True)])
    assert await store.delete_session(deleted)
    audio = {sid: [(s, p) async for s, p in store.read_payloads(sid)] for sid in (complete, gappy)}
    states = {}
    for sid in (complete, gappy, deleted):
        session = await store.get_session(sid)
        assert session is not None
        states[sid] = session.state
    assert states[complete] is SessionState.COMPLETE
    return audio, states


async def _same_audio(store: SqliteStore, audio: Audio) -> None:
    for sid, frames in audio.items():
        assert [(s, p) async for s, p in store.read_payloads(sid)] == frames
        session = await store.get_session(sid)
        assert session is not None
        assert session.frames == len(frames)


async def test_a_sound_store_checks_clean(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data", segment_max_bytes=8 * 1024)
    await store.open()
    try:
        audio, _ = await _fill(store)
        report = await store.check()
        assert (report.problem_count, report.problems) == (0, [])
        assert report.frames == sum(len(f) for f in audio.values())
        assert report.segments > 1
    finally:
        await store.close()


async def test_lost_index_rows_are_rebuilt_from_the_segments(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir, segment_max_bytes=8 * 1024)
    await store.open()
    try:
        audio, states = await _fill(store)
        complete = next(sid for sid, state in states.items() if state is SessionState.COMPLETE)
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            conn.execute("DELETE FROM extents")
            conn.execute("DELETE FROM recent_extents")
            conn.execute("UPDATE sessions SET frames = 7 WHERE id = ?", (complete,))
        report = await store.check()
        assert report.problem_count > 0
        assert any("not in the index" in p for p in report.problems)
        assert any("counters" in p for p in report.problems)
        assert not report.ok
        repaired = await store.check(repair=True)
        assert repaired.repaired
        assert (await store.check()).problem_count == 0
        await _same_audio(store, audio)
        session = await store.get_session(complete)
        assert session is not None
        assert session.state is SessionState.COMPLETE
        assert session.stream_crc32c == native.crc32c(b"".join(p for _, p in audio[complete]))
        gappy = next(sid for sid in audio if sid != complete)
        assert await store.missing(gappy) == [[15, 15]]
    finally:
        await store.close()


def _voxgate_db_check(data_dir: Path, *args: str) -> tuple[int, dict[str, object]]:
    run = subprocess.run(
        [sys.executable, "-m", "voxgate", "db", "check", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VOXGATE_DATABASE_URL": ""},
    )
    assert run.stdout, run.stderr
    report: dict[str, object] = orjson.loads(run.stdout)
    return run.returncode, report


async def test_a_deleted_database_is_rebuilt_from_the_segments(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir, segment_max_bytes=8 * 1024)
    await store.open()
    audio, states = await _fill(store)
    await store.close()
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        (data_dir / name).unlink(missing_ok=True)
    # The command line, as an operator runs it: problems first, then the repair.
    code, report = _voxgate_db_check(data_dir)
    assert code == 1
    assert report["problem_count"]
    code, report = _voxgate_db_check(data_dir, "--repair")
    assert (code, report["repaired"]) == (0, True)
    code, report = _voxgate_db_check(data_dir)
    assert (code, report["problem_count"]) == (0, 0)
    store = SqliteStore(data_dir)
    await store.open()
    try:
        await _same_audio(store, audio)
        for sid, state in states.items():
            session = await store.get_session(sid)
            if state is SessionState.DELETED:
                assert session is None  # erased before the loss: nothing to bring back
            else:
                assert session is not None
                assert session.state is state
        # The rebuilt sessions take frames again.
        sid = next(iter(audio))
        more = await store.commit([frame(sid, 0, audio[sid][0][1])])
        assert more.outcomes == [Outcome.DUPLICATE]
    finally:
        await store.close()


async def test_a_corrupt_block_is_found_and_its_frames_become_missing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir, segment_max_bytes=1 << 20)
    await store.open()
    try:
        audio, states = await _fill(store)
        gappy = next(sid for sid, state in states.items() if state is SessionState.OPEN)
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            segment, offset, length = conn.execute(
                "SELECT s.name, e.offset, e.length FROM all_extents e JOIN segments s"
                " ON s.id = e.segment WHERE e.session_id = ? AND e.first_seq = 20",
                (gappy,),
            ).fetchone()
        path = data_dir / SEGMENTS_DIR / segment
        data = bytearray(path.read_bytes())
        data[offset + length - 3] ^= 0xFF  # a payload byte of the block's last frame
        path.write_bytes(bytes(data))
        report = await store.check()
        assert any(f"{gappy} seqs 20-29" in p for p in report.problems)
        await store.check(repair=True)
        # The intact frames of the block are saved; the damaged one is missing, to be
        # sent again.
        assert await store.missing(gappy) == [[15, 15], [29, 29]]
        assert (await store.check()).problem_count == 0
        kept = [(s, p) for s, p in audio[gappy] if s != 29]
        assert [(s, p) async for s, p in store.read_payloads(gappy)] == kept
        resent = await store.commit([frame(gappy, 29, payload_of(gappy, 29))])
        assert resent.outcomes == [Outcome.STORED]
        assert [(s, p) async for s, p in store.read_payloads(gappy)] == audio[gappy]
    finally:
        await store.close()


async def test_a_block_hidden_in_a_payload_is_never_indexed(tmp_path: Path) -> None:
    """A client's payload may hold bytes shaped like a block of another session: a
    repair walks from block to block and never reads inside a payload."""
    data_dir = tmp_path / "data"
    store = SqliteStore(data_dir)
    await store.open()
    try:
        victim = (await store.create_session(codec=None, sample_rate=None, channels=None,
                                             metadata={})).id  # fmt: skip
        mallory = (await store.create_session(codec=None, sample_rate=None, channels=None,
                                              metadata={})).id  # fmt: skip
        record = native.encode_frame(0, b"FORGED", 0, True)
        forged = native.block_header(victim, 0, 1, len(record)) + record
        await store.commit([frame(mallory, 0, forged), frame(mallory, 1, forged)])
        with sqlite3.connect(data_dir / DB_NAME) as conn:
            name, offset = conn.execute(
                "SELECT s.name, e.offset FROM all_extents e JOIN segments s ON s.id = e.segment"
            ).fetchone()
            conn.execute("DELETE FROM extents")
            conn.execute("DELETE FROM recent_extents")
        # And the real block's header is damaged: nothing tells where blocks start now.
        path = data_dir / SEGMENTS_DIR / name
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        report = await store.check(repair=True)
        assert any("no valid block" in p for p in report.problems)
        victim_session = await store.get_session(victim)
        assert victim_session is not None
        assert victim_session.frames == 0
        assert [s async for s, _ in store.read_payloads(victim)] == []
    finally:
        await store.close()
