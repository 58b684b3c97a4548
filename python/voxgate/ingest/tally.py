"""What happened to each frame of a stream or upload, gathered into ack and nack ranges.

The WebSocket stream and the HTTP upload answer with the same content
(PROTOCOL sections 2.2 and 3); both collect it here.
"""

from __future__ import annotations

from collections.abc import Sequence

from voxgate.core import native as _native
from voxgate.ranges import to_ranges
from voxgate.store.base import FrameIn, Outcome

# nack reasons of PROTOCOL section 3
CHECKSUM = "checksum"
WINDOW = "window"
CONFLICT = "conflict"
TOO_LARGE = "too_large"
SEQUENCE = "sequence"

_OUTCOME_REASON = {Outcome.CONFLICT: CONFLICT, Outcome.SEQUENCE: SEQUENCE}


def precheck(seq: int, verdict: int, end_seq: int | None, seq_limit: int) -> str | None:
    """The nack reason a decoded frame earns before any storage, or None if it may be stored.

    ``end_seq`` is the stored END frame's seq if known; ``seq_limit`` the highest
    seq the server accepts now (next_seq plus its documented look-ahead).
    """
    if verdict == _native.FRAME_TOO_LARGE:
        return TOO_LARGE
    if verdict == _native.FRAME_BAD_CRC:
        return CHECKSUM
    if (end_seq is not None and seq > end_seq) or seq > seq_limit:
        return SEQUENCE
    return None


def _ranges(seqs: list[int]) -> list[list[int]]:
    """:func:`to_ranges` for acked seqs, which are unique: one run skips the sort."""
    if seqs:
        first, last = min(seqs), max(seqs)
        if last - first + 1 == len(seqs):
            return [[first, last]]
    return to_ranges(seqs)


class Tally:
    """Seqs acked, acked as duplicate, and refused by reason, until taken."""

    __slots__ = ("acked", "duplicate", "gone", "rejected")

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.duplicate: list[int] = []
        self.rejected: dict[str, list[int]] = {}
        self.gone = False

    def reject(self, seq: int, reason: str) -> None:
        self.rejected.setdefault(reason, []).append(seq)

    def record(self, frames: Sequence[FrameIn], outcomes: Sequence[Outcome]) -> None:
        """Sort a commit's outcomes; GONE marks the session as deleted."""
        if len(frames) != len(outcomes):
            raise ValueError("a commit answered a different number of frames")
        if outcomes.count(Outcome.STORED) == len(outcomes):  # the usual case: all new
            self.acked.extend([frame.seq for frame in frames])
            return
        for frame, outcome in zip(frames, outcomes, strict=True):
            if outcome is Outcome.STORED:
                self.acked.append(frame.seq)
            elif outcome is Outcome.DUPLICATE:
                self.duplicate.append(frame.seq)
            elif outcome is Outcome.GONE:
                self.gone = True
            else:
                self.reject(frame.seq, _OUTCOME_REASON[outcome])

    def has_acks(self) -> bool:
        return bool(self.acked or self.duplicate)

    def take_acks(self) -> tuple[list[list[int]], list[list[int]]]:
        """(acked, duplicate) ranges, clearing them."""
        acked, duplicate = _ranges(self.acked), to_ranges(self.duplicate)
        self.acked, self.duplicate = [], []
        return acked, duplicate

    def take_rejections(self) -> list[tuple[str, list[list[int]]]]:
        """(reason, ranges) per reason, clearing them."""
        out = [(reason, to_ranges(seqs)) for reason, seqs in self.rejected.items()]
        self.rejected = {}
        return out

    def pending_rejections(self) -> int:
        return sum(len(seqs) for seqs in self.rejected.values())
