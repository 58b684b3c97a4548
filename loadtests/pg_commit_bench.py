"""Store commit benchmark: PostgresStore.commit (and SqliteStore.commit) by batch size.

    python loadtests/pg_commit_bench.py [--dsn postgresql://...] [--batches 1,100,1000,4000]
        [--frame-bytes 640] [--sessions 16] [--seconds 3] [--json out.json]

Without ``--dsn`` it starts a throwaway PostgreSQL cluster on 127.0.0.1 (the
one the tests use: fsync on, synchronous_commit on) and removes it afterwards.
For each batch size it commits fresh frames, spread over ``--sessions``
sessions, back to back for ``--seconds`` and prints frames/s, MB/s and
commits/s, beside the embedded store's numbers on a temporary data dir
(durability fsync).

Each commit writes one block per session (``blocks`` rows, COPY).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from voxgate._native import crc32c
from voxgate.store.base import FrameIn, Store
from voxgate.store.postgres import PostgresStore
from voxgate.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


class Load:
    """Fresh frames for one store: consecutive seqs over a fixed set of sessions."""

    def __init__(self, sessions: list[str], frame_bytes: int) -> None:
        self.sessions = sessions
        self.next = dict.fromkeys(sessions, 0)
        self.payload = random.randbytes(frame_bytes)
        self.crc = crc32c(self.payload)
        self.turn = 0

    def batch(self, size: int) -> list[FrameIn]:
        frames = []
        for _ in range(size):
            sid = self.sessions[self.turn % len(self.sessions)]
            self.turn += 1
            seq = self.next[sid]
            self.next[sid] = seq + 1
            frames.append(FrameIn(sid, seq, 0, seq * 20_000, self.crc, self.payload))
        return frames


async def measure(
    commit: Callable[[int], Awaitable[object]], size: int, seconds: float
) -> dict[str, float]:
    await commit(size)  # warm up
    commits = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or commits < 3:
        await commit(size)
        commits += 1
    return {"frames_per_s": commits * size / elapsed, "commits_per_s": commits / elapsed}


async def bench_store(store: Store, args: argparse.Namespace) -> list[dict[str, Any]]:
    sessions = [
        (await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})).id
        for _ in range(args.sessions)
    ]
    load = Load(sessions, args.frame_bytes)

    async def commit(size: int) -> object:
        return await store.commit(load.batch(size))

    rows = []
    for size in args.batches:
        result = await measure(commit, size, args.seconds)
        result["mb_per_s"] = result["frames_per_s"] * args.frame_bytes / 1e6
        rows.append({"batch": size, **result})
    return rows


async def main_async(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    report: dict[str, Any] = {
        "frame_bytes": args.frame_bytes,
        "sessions": args.sessions,
        "seconds": args.seconds,
        "host": platform.node(),
    }
    store = PostgresStore(dsn, pool_min=1, pool_max=2)
    await store.open()
    try:
        version = await asyncpg.connect(dsn)
        try:
            report["postgres"] = await version.fetchval("SHOW server_version")
            report["synchronous_commit"] = await version.fetchval("SHOW synchronous_commit")
            report["fsync"] = await version.fetchval("SHOW fsync")
        finally:
            await version.close()
        report["postgres_store"] = await bench_store(store, args)
    finally:
        await store.close()
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-") as tmp:
        sqlite = SqliteStore(tmp, durability="fsync")
        await sqlite.open()
        try:
            report["sqlite_store"] = await bench_store(sqlite, args)
        finally:
            await sqlite.close()
    return report


def print_report(report: dict[str, Any]) -> None:
    print(
        f"PostgreSQL {report['postgres']} (fsync {report['fsync']}, synchronous_commit"
        f" {report['synchronous_commit']}), {report['frame_bytes']}-byte frames over"
        f" {report['sessions']} sessions, {report['seconds']} s per size"
    )
    print(f"{'batch':>6} {'pg frames/s':>12} {'pg MB/s':>8} {'pg commits/s':>13}"
          f" {'sqlite frames/s':>16} {'pg/sqlite':>10}")  # fmt: skip
    for pg, lite in zip(report["postgres_store"], report["sqlite_store"], strict=True):
        print(
            f"{pg['batch']:>6} {pg['frames_per_s']:>12.0f} {pg['mb_per_s']:>8.1f}"
            f" {pg['commits_per_s']:>13.1f} {lite['frames_per_s']:>16.0f}"
            f" {pg['frames_per_s'] / lite['frames_per_s']:>10.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=None, help="PostgreSQL URL (default: a temporary cluster)")
    parser.add_argument("--batches", default="1,100,1000,4000", help="batch sizes, comma-separated")
    parser.add_argument("--frame-bytes", type=int, default=640)
    parser.add_argument("--sessions", type=int, default=16, help="sessions a batch spreads over")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per batch size")
    parser.add_argument("--json", default=None, help="write the report to this file")
    args = parser.parse_args()
    args.batches = [int(x) for x in args.batches.split(",")]

    if args.dsn is not None:
        report = asyncio.run(main_async(args, args.dsn))
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from services import PostgresServer

        root = Path(tempfile.mkdtemp(prefix="voxgate-bench-pg-"))
        root.chmod(0o755)
        server = PostgresServer(root)
        server.init()
        server.start()
        try:
            report = asyncio.run(main_async(args, server.create_database("bench")))
        finally:
            server.stop("immediate")
            shutil.rmtree(root, ignore_errors=True)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
