"""Embedded-store commit cost: CPU per frame of ``SqliteStore.commit`` in the shape of live load.

    python loadtests/commit_bench.py [--sessions 300] [--frames-per-session 5]
        [--frame-bytes 640] [--durability process] [--seconds 5] [--idle-sessions 0]
        [--statements] [--json out.json]

Each commit carries ``--frames-per-session`` in-order frames of each of
``--sessions`` sessions (the batch one commit gathers at N real-time streams:
one 5-frame message per stream), committed back to back for ``--seconds``.
Prints commits/s, frames/s, wall time per commit and the process's CPU
microseconds per frame (SQLite's own work included).
``--durability process`` (the default here) leaves the fsyncs out, so the
figure is the commit's own work. ``--idle-sessions N`` creates N other hot
sessions first (a store that has served a while). ``--statements`` times each
SQL statement and the segment sync on the store thread and prints microseconds
per commit for each (the timing itself adds a little).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from typing import Any

from voxgate.core import native
from voxgate.store.base import FrameIn
from voxgate.store.sqlite import SqliteStore
from voxgate.store.sqlite import frames as frames_module


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    payload = os.urandom(args.frame_bytes)
    crc = native.crc32c(payload)
    with tempfile.TemporaryDirectory(prefix="voxgate-commit-bench-") as data_dir:
        store = SqliteStore(data_dir, durability=args.durability)
        await store.open()
        spent: dict[str, float] = {}
        try:
            for _ in range(args.idle_sessions):
                await store.create_session(
                    codec="pcm_s16le", sample_rate=16000, channels=1, metadata={"kind": "idle"}
                )
            sessions = [
                (
                    await store.create_session(
                        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={}
                    )
                ).id
                for _ in range(args.sessions)
            ]
            seq = 0
            message = memoryview(b"\0" * 24 + payload)[24:]  # payloads are views, as on the wire

            def batch() -> list[FrameIn]:
                nonlocal seq
                frames = [
                    FrameIn(sid, seq + k, 0, (seq + k) * 20_000, crc, message)
                    for sid in sessions
                    for k in range(args.frames_per_session)
                ]
                seq += args.frames_per_session
                return frames

            await store.commit(batch())  # warm-up
            if args.statements:
                _time_statements(store, spent)
            commits = frames = 0
            cpu0, wall0 = time.process_time(), time.perf_counter()
            while time.perf_counter() - wall0 < args.seconds:
                todo = batch()
                await store.commit(todo)
                commits += 1
                frames += len(todo)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        finally:
            await store.close()
    return {
        "core": native.__name__,
        "sessions": args.sessions,
        "frames_per_session": args.frames_per_session,
        "frame_bytes": args.frame_bytes,
        "durability": args.durability,
        "commits_per_s": commits / wall,
        "frames_per_s": frames / wall,
        "cpu_us_per_frame": cpu / frames * 1e6,
        "wall_ms_per_commit": wall / commits * 1e3,
        "us_per_commit_by_step": {k: v / commits * 1e6 for k, v in spent.items()},
    }


class _TimedConnection:
    """The store thread's connection, timing each statement by its first words."""

    def __init__(self, conn: sqlite3.Connection, spent: dict[str, float]) -> None:
        self._conn = conn
        self._spent = spent

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        start = time.perf_counter()
        try:
            return self._conn.execute(sql, *args)
        finally:
            key = " ".join(sql.split()[:4])
            self._spent[key] = self._spent.get(key, 0.0) + time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _time_statements(store: SqliteStore, spent: dict[str, float]) -> None:
    """Time every statement of the store thread and the segment's fdatasync."""
    store._db = _TimedConnection(store._conn, spent)  # type: ignore[assignment]
    namespace = vars(frames_module)  # the store's module, whose datasync the commit calls
    real_sync = namespace["datasync"]

    def timed_sync(fd: int) -> None:
        start = time.perf_counter()
        try:
            real_sync(fd)
        finally:
            spent["segment fdatasync"] = spent.get("segment fdatasync", 0.0) + (
                time.perf_counter() - start
            )

    namespace["datasync"] = timed_sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--frames-per-session", type=int, default=5)
    parser.add_argument("--frame-bytes", type=int, default=640)
    parser.add_argument("--durability", choices=("fsync", "process"), default="process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle-sessions", type=int, default=0)
    parser.add_argument("--statements", action="store_true")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    report = asyncio.run(_run(args))
    print(
        f"core={report['core']} sessions={args.sessions} frames/commit="
        f"{args.sessions * args.frames_per_session} durability={args.durability}: "
        f"{report['commits_per_s']:,.1f} commits/s, {report['frames_per_s']:,.0f} frames/s, "
        f"{report['wall_ms_per_commit']:.2f} ms/commit, "
        f"{report['cpu_us_per_frame']:.2f} CPU us/frame"
    )
    steps = sorted(report["us_per_commit_by_step"].items(), key=lambda kv: -kv[1])
    for step, us in steps:
        print(f"  {us:8.1f} us/commit  {step}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
