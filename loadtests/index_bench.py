"""What one frame-index row costs SQLite, by how many sessions a commit's rows spread over.

    python loadtests/index_bench.py --rows-per-commit 100 --commits 300

Inserts ``--commits`` batches of frame rows (the embedded store's ``frames``
table shape: a WITHOUT ROWID table keyed by session id and seq) into a fresh
database in a temporary directory, WAL mode, and prints microseconds per row
for each spread. A row of another session lands on another B-tree page, so the
per-row cost grows with the number of sessions a commit touches.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

SCHEMA = """CREATE TABLE frames (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, flags INTEGER NOT NULL,
    pts_us INTEGER NOT NULL, length INTEGER NOT NULL, crc32c INTEGER NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID"""
INSERT = "INSERT INTO frames VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def us_per_row(path: Path, sessions: int, rows_per_commit: int, commits: int) -> float:
    """Insert ``commits`` commits of rows cycling over ``sessions`` sessions; us per row."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(SCHEMA)
        ids = [f"ses_{i:022d}" for i in range(sessions)]
        next_seq = [0] * sessions
        started = time.perf_counter()
        for commit in range(commits):
            rows = []
            for i in range(rows_per_commit):
                s = (commit * rows_per_commit + i) % sessions
                rows.append((ids[s], next_seq[s], 0, 0, 640, 0, 1, i * 640))
                next_seq[s] += 1
            db.execute("BEGIN")
            db.executemany(INSERT, rows)
            db.execute("COMMIT")
        return (time.perf_counter() - started) / (commits * rows_per_commit) * 1e6
    finally:
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-per-commit", type=int, default=100)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--sessions", default="1,50,500", help="spreads to compare")
    args = parser.parse_args()
    if not 1 <= args.rows_per_commit <= 10_000 or not 1 <= args.commits <= 100_000:
        raise SystemExit("--rows-per-commit must be 1..10000 and --commits 1..100000")
    with tempfile.TemporaryDirectory(prefix="voxgate-index-") as tmp:
        for n in (int(x) for x in args.sessions.split(",")):
            cost = us_per_row(Path(tmp) / f"index-{n}.db", n, args.rows_per_commit, args.commits)
            print(f"rows spread over {n:>5} sessions: {cost:6.2f} us per row")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
