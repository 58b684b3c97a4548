"""A store user that commits forever, printing each answered frame, until it is killed.

Run as ``python crash_child.py DATA_DIR SESSION_ID DURABILITY``. Prints one line
per frame once its commit has returned: ``S <seq>`` for STORED, ``D <seq>`` for
DUPLICATE. The test kills it with SIGKILL at some point and checks that every
printed frame is stored.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Literal, cast

BATCH = 8


def payload(session_id: str, seq: int) -> bytes:
    """The payload of frame ``seq``: distinctive, reproducible, of varying size."""
    return f"[{session_id}:{seq}]".encode() * (1 + seq % 40)


async def main(data_dir: str, session_id: str, durability: str) -> None:
    from voxgate._native import crc32c
    from voxgate.store.base import FrameIn, Outcome
    from voxgate.store.sqlite import SqliteStore

    store = SqliteStore(
        data_dir,
        durability=cast(Literal["fsync", "process"], durability),
        segment_max_bytes=16 * 1024,
    )
    await store.open()
    print("ready", flush=True)
    seq = 0
    while True:
        batch = []
        for s in range(seq, seq + BATCH):
            data = payload(session_id, s)
            batch.append(FrameIn(session_id, s, 0, s * 20_000, crc32c(data), data))
        result = await store.commit(batch)
        lines = []
        for item, outcome in zip(batch, result.outcomes, strict=True):
            if outcome is Outcome.STORED:
                lines.append(f"S {item.seq}")
            elif outcome is Outcome.DUPLICATE:
                lines.append(f"D {item.seq}")
            else:
                lines.append(f"X {item.seq} {outcome.name}")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        seq += BATCH


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
