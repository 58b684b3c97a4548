"""A data dir written by the schema-5 release (one index row per frame) opens as blocks.

``data/release-v5.tar.gz`` was made by that release (``data/make_release_v5.py``),
``data/release-v5.json`` holds what it answered about every session. Opened by
this store, the dir must answer the same, every payload byte included, with the
old per-frame rows and bare-payload segments gone.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest

from voxgate.store.backup import check_store_files
from voxgate.store.base import Outcome, StoreError
from voxgate.store.sqlite import DB_NAME, MIGRATIONS, SEGMENTS_DIR, SqliteStore, upgrade

from .conftest import frame
from .data.make_release_v5 import answers as _answers

DATA = Path(__file__).parent / "data"


def _unpack(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    with tarfile.open(DATA / "release-v5.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "data", json.loads((DATA / "release-v5.json").read_text())


async def test_a_schema_5_data_dir_is_converted_to_blocks(tmp_path: Path) -> None:
    data_dir, expected = _unpack(tmp_path)
    old_segments = {p.name for p in (data_dir / SEGMENTS_DIR).iterdir()}
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    store = SqliteStore(data_dir)
    await store.open()
    try:
        sids = expected["sessions"]
        for tag, sid in sids.items():
            if tag == "deleted":
                session = await store.get_session(sid)
                assert session is not None
                assert session.state.value == expected["answers"][tag]["state"]
                continue
            assert await _answers(store, sid) == expected["answers"][tag], tag
        # The converted store goes on: resends are judged against the converted
        # blocks, gaps fill, new frames land.
        gaps_sid = sids["gaps"]
        result = await store.commit(
            [
                frame(gaps_sid, 3, _payload("gaps", 3)),  # stored by the old release
                frame(gaps_sid, 4, b"not what was stored"),
                frame(gaps_sid, 5, _payload("gaps", 5)),
                frame(gaps_sid, 6, _payload("gaps", 6)),
            ]
        )
        assert result.outcomes == [
            Outcome.DUPLICATE,
            Outcome.CONFLICT,
            Outcome.STORED,
            Outcome.STORED,
        ]
        assert await store.missing(gaps_sid) == [[10, 11]]
    finally:
        await store.close()
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "frames" not in tables
    # The old bare-payload segments are gone; what is left describes itself.
    assert not old_segments & {p.name for p in (data_dir / SEGMENTS_DIR).iterdir()}
    version, _sessions, frames, _payload_bytes = check_store_files(data_dir)
    assert version == len(MIGRATIONS)
    stored_before = sum(a.get("frames", 0) for a in expected["answers"].values())
    assert frames == stored_before + 2  # seqs 5 and 6 of "gaps"


def _payload(tag: str, seq: int) -> bytes:
    """The payload ``make_release_v5.py`` gave ``seq`` of the session tagged ``tag``."""
    size = (seq * 37 + len(tag) * 11) % 700
    data = bytes((seq * 7 + i + ord(tag[0])) % 256 for i in range(size))
    return data or b"\x00"


async def test_a_crash_during_the_conversion_leaves_the_old_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir, expected = _unpack(tmp_path)

    def crash(*args: Any) -> None:
        raise OSError(5, "simulated crash before the conversion commits")

    monkeypatch.setattr(upgrade, "datasync", crash)
    store = SqliteStore(data_dir)
    with pytest.raises(StoreError, match="simulated crash"):
        await store.open()
    monkeypatch.undo()
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        assert conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0] > 0
    store = SqliteStore(data_dir)
    await store.open()
    try:
        sid = expected["sessions"]["complete"]
        assert await _answers(store, sid) == expected["answers"]["complete"]
    finally:
        await store.close()


async def test_the_conversion_rolls_segments_and_survives_a_lost_one(tmp_path: Path) -> None:
    """Blocks go into segments of ``segment_max_bytes`` like commits do; a frame whose
    old segment is gone is dropped and reported missing, never claimed stored."""
    data_dir, expected = _unpack(tmp_path)
    with sqlite3.connect(data_dir / DB_NAME) as conn:
        # The segment holding frame 40 of "busy" (and whatever else lies there).
        name, lost = conn.execute(
            "SELECT s.name, (SELECT COUNT(*) FROM frames g WHERE g.segment = s.id)"
            " FROM frames f JOIN segments s ON s.id = f.segment"
            " WHERE f.session_id = ? AND f.seq = 40",
            (expected["sessions"]["busy"],),
        ).fetchone()
    (data_dir / SEGMENTS_DIR / name).unlink()
    store = SqliteStore(data_dir, segment_max_bytes=8 * 1024)
    await store.open()
    try:
        report = await store.check()
        assert (report.problem_count, report.problems) == (0, [])
        assert report.segments > 2
        busy = expected["sessions"]["busy"]
        session = await store.get_session(busy)
        assert session is not None
        stored = [seq async for seq, _ in store.read_payloads(busy)]
        assert len(stored) < 120
        # Every lost frame is reported: missing below next_seq, or past it (a client
        # resuming sends from next_seq on).
        missing = {seq for a, b in await store.missing(busy) for seq in range(a, b + 1)}
        after = set(range(session.next_seq, 120))
        assert missing | after == set(range(120)) - set(stored)
        assert session.frames == len(stored)
        total = sum(a.get("frames", 0) for a in expected["answers"].values())
        assert report.frames == total - lost
    finally:
        await store.close()
