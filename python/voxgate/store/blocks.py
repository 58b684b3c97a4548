"""Blocks built in Python: for moving frames stored one by one into blocks.

Commits lay frames out as blocks in the core (``CommitPlan.judge``); this
module builds the same bytes from frames read back one at a time, for the
moves of older stores (the embedded store's schema 5, PostgreSQL's frame rows)
and for copying a store into another. ``rust/block.rs`` describes the format.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from voxgate.core import native

# Frames and record bytes per block built here.
BLOCK_FRAMES = 4096
BLOCK_BYTES = 4 * 1024 * 1024

# (seq, flags, pts_us, crc32c, payload)
Frame = tuple[int, int, int, int, bytes]


class Built:
    """One block and what its extent row says of it."""

    __slots__ = ("crc32c", "data", "first_seq", "last_seq", "payload_bytes")

    def __init__(self, data: bytes, first_seq: int, last_seq: int, nbytes: int, crc: int) -> None:
        self.data = data
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.payload_bytes = nbytes
        self.crc32c = crc


def build(session_id: str, frames: list[Frame]) -> Built:
    """The block of ``frames`` (consecutive seqs, in order) of ``session_id``."""
    records = []
    nbytes = crc = 0
    for seq, flags, pts_us, frame_crc, payload in frames:
        records.append(native.encode_header(seq, len(payload), frame_crc, pts_us, flags))
        records.append(payload)
        if payload:
            crc = native.crc32c_combine(crc, frame_crc, len(payload))
            nbytes += len(payload)
    body = b"".join(records)
    header = native.block_header(session_id, frames[0][0], len(frames), len(body))
    return Built(header + body, frames[0][0], frames[-1][0], nbytes, crc)


def runs(frames: Iterable[Frame]) -> Iterator[list[Frame]]:
    """``frames`` (in seq order) cut into runs of consecutive seqs, each at most
    ``BLOCK_FRAMES`` frames and about ``BLOCK_BYTES``: one block each."""
    run: list[Frame] = []
    size = 0
    for frame in frames:
        record = native.HEADER_SIZE + len(frame[4])
        if run and (
            frame[0] != run[-1][0] + 1 or len(run) >= BLOCK_FRAMES or size + record > BLOCK_BYTES
        ):
            yield run
            run, size = [], 0
        run.append(frame)
        size += record
    if run:
        yield run
