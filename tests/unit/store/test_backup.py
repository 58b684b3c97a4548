"""Backups of the embedded store: online snapshot, verification, rotation, restore."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from voxgate.store.backup import (
    MANIFEST,
    BackupError,
    backups_to_keep,
    create_backup,
    list_backups,
    prune_backups,
    restore_backup,
    verify_backup,
)
from voxgate.store.sqlite import DB_NAME, SEGMENTS_DIR, SqliteStore

from .conftest import frame, payload_of

KEEP = {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12}


async def filled(data_dir: Path) -> tuple[SqliteStore, dict[str, bytes], str]:
    """An open store with two sessions (one complete) and a deleted one whose bytes are erased."""
    store = SqliteStore(data_dir, segment_max_bytes=4096)
    await store.open()
    audio = {}
    for n in range(2):
        session = await store.create_session(
            codec="opus", sample_rate=48000, channels=1, metadata={}
        )
        payloads = [payload_of(session.id, seq, 700) for seq in range(10)]
        await store.commit(
            [frame(session.id, seq, p, end=n == 0 and seq == 9) for seq, p in enumerate(payloads)]
        )
        audio[session.id] = b"".join(payloads)
    deleted = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    await store.commit(
        [frame(deleted.id, seq, payload_of(deleted.id, seq, 700)) for seq in range(3)]
    )
    await store.delete_session(deleted.id)
    return store, audio, deleted.id


def holds(root: Path, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in root.rglob("*") if p.is_file())


async def test_a_backup_of_a_running_store_checks_out(tmp_path: Path) -> None:
    store, _audio, deleted = await filled(tmp_path / "data")
    try:
        path, info, pruned = create_backup(tmp_path / "data", tmp_path / "backups", **KEEP)
    finally:
        await store.close()
    assert pruned == []
    assert (info.sessions, info.frames, info.payload_bytes) == (3, 20, 20 * 700)
    assert DB_NAME in info.files
    assert any(name.startswith(f"{SEGMENTS_DIR}/") for name in info.files)
    assert verify_backup(path) == info
    assert list_backups(tmp_path / "backups") == [
        (path.name, info.created_at.replace(microsecond=0))
    ]
    assert not holds(path, payload_of(deleted, 1, 700)), "deleted payloads stay out of backups"


@pytest.mark.parametrize("damage", ["segment byte", "database page", "extra file", "missing file"])
async def test_a_damaged_backup_fails_verification(tmp_path: Path, damage: str) -> None:
    store, _, _ = await filled(tmp_path / "data")
    await store.close()
    path, _, _ = create_backup(tmp_path / "data", tmp_path / "backups", **KEEP)
    segment = sorted((path / SEGMENTS_DIR).iterdir())[0]
    if damage == "segment byte":
        data = bytearray(segment.read_bytes())
        data[100] ^= 1
        segment.write_bytes(bytes(data))
    elif damage == "database page":
        with (path / DB_NAME).open("r+b") as f:
            f.seek(4096 + 50)
            f.write(b"\xff" * 64)
    elif damage == "extra file":
        (path / SEGMENTS_DIR / "stray.seg").write_bytes(b"x")
    else:
        segment.unlink()
    with pytest.raises(BackupError):
        verify_backup(path)


async def test_restore_refuses_while_a_store_is_open(tmp_path: Path) -> None:
    store, _, _ = await filled(tmp_path / "data")
    try:
        path, _, _ = create_backup(tmp_path / "data", tmp_path / "backups", **KEEP)
        with pytest.raises(BackupError, match="stop it before restoring"):
            restore_backup(path, tmp_path / "data", tmp_path / "archive")
    finally:
        await store.close()


async def test_restore_brings_back_the_store_as_backed_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store, audio, _ = await filled(data_dir)
    path, _, _ = create_backup(data_dir, tmp_path / "backups", **KEEP)
    late = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    await store.close()
    (data_dir / DB_NAME).write_bytes(os.urandom(8192))  # the disaster

    report = restore_backup(path, data_dir, tmp_path / "archive")
    assert report.set_aside is not None
    assert (Path(report.set_aside) / DB_NAME).is_file()
    assert report.missing_archives == []
    restored = SqliteStore(data_dir)
    await restored.open()
    try:
        for session_id, expected in audio.items():
            got = b"".join([p async for _, p in restored.read_payloads(session_id)])
            assert got == expected
        assert await restored.get_session(late.id) is None
        complete = [
            s for s in await restored.list_sessions(limit=10, after=None) if s.state == "complete"
        ]
        assert len(complete) == 1
    finally:
        await restored.close()


def test_rotation_keeps_the_newest_per_day_week_and_month() -> None:
    start = datetime(2024, 1, 1, 2, 30, tzinfo=UTC)
    # Two backups a day for 120 days.
    moments = [start + timedelta(days=d, hours=h) for d in range(120) for h in (0, 12)]
    kept = backups_to_keep(moments, daily=7, weekly=4, monthly=3)
    newest = max(moments)
    days = sorted({m.date() for m in kept}, reverse=True)
    assert newest in kept
    # Daily: the later backup of each of the last 7 days.
    for d in range(7):
        day = newest.date() - timedelta(days=d)
        assert max(m for m in moments if m.date() == day) in kept
        assert min(m for m in moments if m.date() == day) not in kept
    # Weekly and monthly: the newest of each of the last 4 ISO weeks and 3 months.
    for week in sorted({m.isocalendar()[:2] for m in moments}, reverse=True)[:4]:
        assert max(m for m in moments if m.isocalendar()[:2] == week) in kept
    for month in ((2024, 4), (2024, 3), (2024, 2)):
        assert max(m for m in moments if (m.year, m.month) == month) in kept
    assert max(m for m in moments if (m.year, m.month) == (2024, 1)) not in kept
    assert len(kept) == len(set(kept)) <= 7 + 4 + 3
    assert days[0] == newest.date()


def test_pruning_removes_what_rotation_does_not_keep(tmp_path: Path) -> None:
    names = ["20240101T000000Z", "20240101T120000Z", "20240102T000000Z", "20240301T000000Z"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST).write_text("{}")
    (tmp_path / "not-a-backup").mkdir()
    removed = prune_backups(tmp_path, daily=2, weekly=0, monthly=0)
    assert sorted(removed) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "20240102T000000Z",
        "20240301T000000Z",
        "not-a-backup",
    ]


def test_backup_commands_refuse_a_postgresql_deployment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["VOXGATE_DATA_DIR"] = str(tmp_path / "data")
    env["VOXGATE_DATABASE_URL"] = "postgresql://voxgate@127.0.0.1:9/voxgate"
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", "db", "backup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "pg_dump" in done.stderr
    assert not (tmp_path / "data" / "backups").exists()
