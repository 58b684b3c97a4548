"""The embedded store: an SQLite index plus append-only segment files of blocks.

Layout of a data dir::

    voxgate.db (+ -wal, -shm)   sessions, extents, segment registry (WAL mode)
    segments/<ms>-<pid>-<random>.seg
                                 blocks, back to back

A block (``rust/block.rs``) is a run of frames of one session with consecutive
seqs, stored by one commit: a header naming the session and the run, then each
frame's record (its 24-byte wire header and payload) as it arrived. Segments
therefore describe themselves: ``voxgate db check`` verifies the index against
them and ``--repair`` rebuilds it from them. The index holds one ``extents``
row per block (first and last seq, segment, offset, length, payload bytes,
combined CRC-32C), not one row per frame; a commit changes each session's
counters once, in one statement.

Several processes may share one data dir. SQLite serializes their write
transactions; each process appends only to segment files it created itself and
holds an exclusive ``flock`` on the one it is writing, so another process can
tell a live writer's segment from a dead one's. Offsets are never reused: a new
process always starts a new segment, and a failed commit truncates its own
bytes away before anything else is written there.

Commit order, per batch: extent rows are inserted inside ``BEGIN IMMEDIATE``,
blocks are appended with one vectored write, the segment is ``fdatasync``-ed
(durability ``fsync`` only), then the transaction commits (``synchronous=FULL``
for ``fsync``, ``NORMAL`` for ``process``). An extent is therefore never
durable before its block; bytes written past the last committed block by a
crashed process are never indexed and are cut off when the segment is reaped.

Deleting a session records the byte ranges to erase in the same transaction
that drops its extents, then overwrites them with zeros and fsyncs; ranges
still pending after a crash are erased when the next store opens. Segments
without live extents are unlinked once nobody writes to them.

All blocking work runs on one dedicated thread per store, never on the event
loop. The parts: ``plumbing`` (threads, connections), ``schema`` (migrations,
including the move from one row per frame to blocks), ``segments``, ``frames``
(commits and reads), ``sessions``, ``retention``, ``transcripts``, ``events``
(webhook outbox), ``check`` (``voxgate db check``), ``store`` (the class).
"""

from voxgate.store.sqlite.common import (
    DATA_LOCK,
    DB_NAME,
    RETENTION_LOCK,
    SEGMENT_SUFFIX,
    SEGMENTS_DIR,
)
from voxgate.store.sqlite.schema import MIGRATIONS
from voxgate.store.sqlite.store import SqliteStore

__all__ = [
    "DATA_LOCK",
    "DB_NAME",
    "MIGRATIONS",
    "RETENTION_LOCK",
    "SEGMENTS_DIR",
    "SEGMENT_SUFFIX",
    "SqliteStore",
]
