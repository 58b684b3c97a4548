"""Data steps of PostgreSQL migrations: Python run right after a migration's SQL,
in the same transaction (a failure leaves nothing behind).

Step 6 turns the rows of ``frames`` (one per frame, schema 1 to 5) into rows of
``blocks``, a session at a time and a few thousand frames per query, then drops
``frames``. Payload bytes are carried as they are, with their stored CRC-32C in
each record's header: a payload that was corrupt stays detectably corrupt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from voxgate.store import blocks

if TYPE_CHECKING:
    from voxgate.store.migrations import Connection

# Frames and payload bytes fetched per query (at least one frame), blocks' bytes per COPY.
_FETCH_FRAMES = 4096
_FETCH_BYTES = 8 * 1024 * 1024
_COPY_BYTES = 16 * 1024 * 1024
# Frames of session $1 after seq $2: up to $3, cut after $4 payload bytes (at least one).
_FETCH = (
    "WITH idx AS (SELECT seq, length FROM frames WHERE session_id = $1 AND seq > $2"
    "  ORDER BY seq LIMIT $3),"
    " sized AS (SELECT seq, sum(length) OVER (ORDER BY seq) AS upto,"
    "  row_number() OVER (ORDER BY seq) AS n FROM idx)"
    " SELECT f.seq, f.flags, f.pts_us, f.crc32c, f.payload FROM sized s"
    " JOIN frames f ON f.session_id = $1 AND f.seq = s.seq"
    " WHERE s.n = 1 OR s.upto <= $4 ORDER BY s.seq"
)
_U64 = 1 << 64
BLOCK_COLUMNS = ("session_id", "first_seq", "last_seq", "payload_bytes", "crc32c", "data")


async def frames_to_blocks(conn: Connection) -> None:
    sessions = [row[0] for row in await conn.fetch("SELECT DISTINCT session_id FROM frames")]
    pending: list[tuple[str, int, int, int, int, bytes]] = []
    size = 0
    for session_id in sessions:
        after = -1
        while True:
            rows = await conn.fetch(_FETCH, session_id, after, _FETCH_FRAMES, _FETCH_BYTES)
            if not rows:
                break
            after = rows[-1][0]
            frames = [
                (seq, flags, pts + _U64 if pts < 0 else pts, crc, payload)
                for seq, flags, pts, crc, payload in rows
            ]
            for run in blocks.runs(frames):
                block = blocks.build(session_id, run)
                pending.append(
                    (
                        session_id,
                        block.first_seq,
                        block.last_seq,
                        block.payload_bytes,
                        block.crc32c,
                        block.data,
                    )
                )
                size += len(block.data)
                if size >= _COPY_BYTES:
                    await conn.copy_records_to_table(
                        "blocks", records=pending, columns=BLOCK_COLUMNS
                    )
                    pending, size = [], 0
    if pending:
        await conn.copy_records_to_table("blocks", records=pending, columns=BLOCK_COLUMNS)
    await conn.execute("DROP TABLE frames")


# Migration version -> its data step.
STEPS: dict[int, Callable[[Connection], Awaitable[None]]] = {6: frames_to_blocks}
