"""The commit rules written out plainly, one session at a time: the model the core is held to.

Both stores commit through the core's ``CommitPlan`` (``rust/commit.rs``), the
one home of the rules. This model states them as directly as Python can: a
store reads each touched session's counters, asks :meth:`SessionTally.judge`
for every frame, stores the STORED ones, extends the gap-free prefix and its
running CRC-32C, and writes the counters back.
``test_commit_plan.py`` holds ``CommitPlan`` to this model on random batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from voxgate.core import native
from voxgate.store.base import Outcome, Progress, SessionState

FLAG_END, crc32c_combine = native.FLAG_END, native.crc32c_combine


class SessionTally:
    """Counters of one session inside one commit, and the frames it stores."""

    __slots__ = (
        "batch",
        "bytes",
        "changed",
        "end_seq",
        "frames",
        "next_seq",
        "prefix_crc",
        "prefix_seq",
        "stream_crc32c",
    )

    next_seq: int
    frames: int
    bytes: int
    end_seq: int | None
    stream_crc32c: int | None
    prefix_seq: int
    prefix_crc: int

    def __init__(self, row: Iterable[Any]) -> None:
        """``row``: next_seq, frames, bytes, end_seq, stream_crc32c, prefix_seq, prefix_crc32c."""
        (
            self.next_seq,
            self.frames,
            self.bytes,
            self.end_seq,
            self.stream_crc32c,
            self.prefix_seq,
            self.prefix_crc,
        ) = row
        self.batch: dict[int, tuple[int, int]] = {}  # seq -> (crc32c, length) stored now
        self.changed = False

    def judge(
        self, seq: int, flags: int, crc: int, length: int, stored: tuple[int, int, int] | None
    ) -> Outcome:
        """The outcome of one frame; a STORED frame is counted at once.

        ``stored`` is ``(crc32c, length, flags)`` of the frame already stored at
        ``seq`` (by an earlier commit or earlier in this batch), else None.
        """
        if stored is not None:
            # Same payload CRC but another length or END flag is another frame.
            return Outcome.DUPLICATE if stored == (crc, length, flags) else Outcome.CONFLICT
        end = bool(flags & FLAG_END)
        if (self.end_seq is not None and seq > self.end_seq) or (end and seq < self.next_seq - 1):
            return Outcome.SEQUENCE
        self.store(seq, length, crc, end)
        return Outcome.STORED

    def store(self, seq: int, length: int, crc: int, end: bool) -> None:
        self.batch[seq] = (crc, length)
        self.changed = True
        self.frames += 1
        self.bytes += length
        if seq >= self.next_seq:
            self.next_seq = seq + 1
        if end:
            self.end_seq = seq

    def advance_in_batch(self) -> bool:
        """Extend the prefix over frames stored by this commit.

        True when frames stored by earlier commits may extend it further: the
        caller then feeds them, in seq order from ``prefix_seq``, to :meth:`extend`.
        """
        seq, crc = self.prefix_seq, self.prefix_crc
        if seq not in self.batch:
            return False  # prefix_seq was not stored before this commit, nor is it now
        while seq in self.batch:
            frame_crc, length = self.batch[seq]
            if length:
                crc = crc32c_combine(crc, frame_crc, length)
            seq += 1
        self.prefix_seq, self.prefix_crc = seq, crc
        return seq < self.next_seq

    def extend(self, seq: int, crc: int, length: int) -> bool:
        """Take the stored frame at ``seq`` into the prefix; False (unchanged) at a gap."""
        if seq != self.prefix_seq:
            return False
        if length:
            self.prefix_crc = crc32c_combine(self.prefix_crc, crc, length)
        self.prefix_seq = seq + 1
        return True

    def finish(self) -> None:
        """After the prefix is extended: a complete session gets its stream CRC."""
        if self.complete:
            self.stream_crc32c = self.prefix_crc

    @property
    def complete(self) -> bool:
        return self.end_seq is not None and self.prefix_seq == self.end_seq + 1

    @property
    def state(self) -> SessionState:
        if self.end_seq is None:
            return SessionState.OPEN
        return SessionState.COMPLETE if self.complete else SessionState.ENDED

    def progress(self) -> Progress:
        return Progress(
            next_seq=self.next_seq,
            frames=self.frames,
            bytes=self.bytes,
            end_seq=self.end_seq,
            complete=self.complete,
            stream_crc32c=self.stream_crc32c,
        )
