"""``voxgate retention run`` killed with SIGKILL at every step, then run again.

``paused_run.py`` (beside this file) wraps the runner and its store from
the outside and stops it dead at a named point; the test kills it there with
a real SIGKILL, checks what the kill left, and runs it again: every session
ends where it belongs, with its audio intact, and an archive written before
the kill is kept, not written twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services import PostgresServer
from unit.store.conftest import Backend, PostgresBackend, SqliteBackend
from voxgate.cli.retention import EXIT_BUSY
from voxgate.retention.archive import ArchiveReader, archive_relpath, verify_archive
from voxgate.store.base import Session, Tier

from .conftest import frame, payload_of

PAUSE_TIMEOUT_S = 60.0
PAUSED_RUN = Path(__file__).with_name("paused_run.py")


class Target:
    """The store a test's runner works on: the environment for the CLI, and the store itself."""

    def __init__(self, root: Path, backend: Backend, database_url: str | None) -> None:
        self.backend = backend
        self.archive_dir = root / "archive"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
        self.env.update(
            {
                "VOXGATE_DATA_DIR": str(root / "data"),
                "VOXGATE_ARCHIVE_DIR": str(self.archive_dir),
                "VOXGATE_RETENTION_HOT_DAYS": "0",
                "VOXGATE_RETENTION_IDLE_HOURS": "0",
            }
        )
        if database_url is not None:
            self.env["VOXGATE_DATABASE_URL"] = database_url


@pytest.fixture(params=["sqlite", "postgres"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return Target(tmp_path, SqliteBackend(tmp_path / "data"), None)
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    dsn = postgres.create_database(f"kill_{uuid.uuid4().hex[:12]}")
    return Target(tmp_path, PostgresBackend(dsn), dsn)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "retention", "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_cli(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    done = cli(env, *args)
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines else None
    return done.returncode, report, done.stderr


class PausedRunner:
    """A ``voxgate retention run`` stopped at a pause point, until killed."""

    def __init__(self, env: dict[str, str], point: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(PAUSED_RUN), point],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.point = point
        self.session_id = self._wait()

    def _wait(self) -> str:
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            if line.startswith(f"retention paused at {self.point} "):
                return line.split()[-1]
        self.proc.wait(timeout=10)
        raise AssertionError(f"runner exited {self.proc.returncode} before {self.point}: {seen}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL


async def populate(target: Target, count: int = 3) -> dict[str, tuple[Session, bytes]]:
    """Ended sessions of a few hundred KiB each, and their audio."""
    store = await target.backend.open_store()
    try:
        made = {}
        for n in range(count):
            session = await store.create_session(
                codec="opus", sample_rate=48000, channels=1, metadata={"n": n}
            )
            payloads = [payload_of(session.id, seq, 20_000 + n) for seq in range(20)]
            await store.commit(
                [frame(session.id, seq, p, end=seq == 19) for seq, p in enumerate(payloads)]
            )
            got = await store.get_session(session.id)
            assert got is not None
            made[session.id] = (got, b"".join(payloads))
        return made
    finally:
        await store.close()


async def tiers_of(target: Target) -> dict[str, Tier]:
    store = await target.backend.open_store()
    try:
        return {s.id: s.tier for s in await store.list_sessions(limit=100, after=None)}
    finally:
        await store.close()


@pytest.mark.parametrize("point", ["begun", "writing", "written", "verified", "finished"])
async def test_a_run_killed_anywhere_finishes_on_the_next_run(target: Target, point: str) -> None:
    archive_dir = target.archive_dir
    sessions = await populate(target)
    env = target.env

    runner = PausedRunner(env, point)
    victim = runner.session_id
    runner.kill()
    archive = archive_dir / archive_relpath(sessions[victim][0])
    tiers = await tiers_of(target)
    assert tiers[victim] is (Tier.WARM if point == "finished" else Tier.HOT)
    assert archive.exists() == (point in ("written", "verified", "finished"))
    inode = archive.stat().st_ino if archive.exists() else None

    code, report, stderr = run_cli(env)
    assert code == 0, stderr
    assert report is not None
    assert report["outcome"] == "ok"
    written_before = point in ("written", "verified")
    assert report["reused"] == (1 if written_before else 0)
    assert report["archived"] == len(sessions) - (1 if written_before or point == "finished" else 0)
    assert report["failed"] == 0

    assert set((await tiers_of(target)).values()) == {Tier.WARM}
    for session, audio in sessions.values():
        path = archive_dir / archive_relpath(session)
        verify_archive(path, session_id=session.id)
        with ArchiveReader(path) as reader:
            assert reader.read_exact(*reader.audio_span()) == audio
        assert not await target.backend.holds_bytes(payload_of(session.id, 7, 20_000)[:200])
    if inode is not None:
        assert archive.stat().st_ino == inode, "an archive written before the kill is kept"
    assert list((archive_dir / ".tmp").iterdir()) == []

    code, report, _ = run_cli(env)
    assert code == 0
    assert report is not None
    assert (report["archived"], report["reused"], report["expired"]) == (0, 0, 0)


async def test_a_run_killed_while_expiring_finishes_on_the_next_run(target: Target) -> None:
    archive_dir = target.archive_dir
    sessions = await populate(target, count=2)
    env = target.env
    code, _, stderr = run_cli(env)
    assert code == 0, stderr
    cold_env = {**env, "VOXGATE_RETENTION_WARM_DAYS": "0"}

    runner = PausedRunner(cold_env, "expired")
    victim = runner.session_id
    runner.kill()
    assert (await tiers_of(target))[victim] is Tier.COLD
    assert (archive_dir / archive_relpath(sessions[victim][0])).exists()  # not removed yet

    code, report, stderr = run_cli(cold_env)
    assert code == 0, stderr
    assert report is not None
    assert (report["expired"], report["discarded"]) == (1, 1)
    assert set((await tiers_of(target)).values()) == {Tier.COLD}
    assert [p for p in archive_dir.rglob("*.tar.zst")] == []


async def test_only_one_runner_works_at_a_time(target: Target) -> None:
    await populate(target, count=2)
    env = target.env
    runner = PausedRunner(env, "begun")
    try:
        code, report, stderr = run_cli(env)
        assert code == EXIT_BUSY, stderr
        assert report is None
        assert "another runner holds the lock" in stderr
    finally:
        runner.kill()
    code, report, _ = run_cli(env)
    assert code == 0
    assert report is not None
    assert report["archived"] == 2


async def test_dry_run_lists_moves_and_changes_nothing(target: Target) -> None:
    sessions = await populate(target, count=2)
    done = cli(target.env, "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert {(m["session_id"], m["from"], m["to"]) for m in lines[:-1]} == {
        (sid, "hot", "warm") for sid in sessions
    }
    assert lines[-1]["dry_run"] is True
    assert set((await tiers_of(target)).values()) == {Tier.HOT}


async def test_an_archive_damaged_before_verification_is_never_trusted(target: Target) -> None:
    archive_dir = target.archive_dir
    sessions = await populate(target, count=2)
    env = target.env
    runner = PausedRunner(env, "written")
    victim = runner.session_id
    runner.kill()
    archive = archive_dir / archive_relpath(sessions[victim][0])
    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 3] ^= 0x10
    archive.write_bytes(bytes(damaged))

    code, report, stderr = run_cli(env)
    assert code == 0, stderr
    assert report is not None
    assert (report["archived"], report["reused"], report["failed"]) == (2, 0, 0)
    assert "rewriting unsound archive" in stderr
    with ArchiveReader(archive) as reader:
        assert reader.read_exact(*reader.audio_span()) == sessions[victim][1]
