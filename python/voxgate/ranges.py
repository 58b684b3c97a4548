"""Inclusive seq ranges, the shape every ack, nack and missing report uses."""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]


def to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Collapse seqs (any order, repeats allowed) into sorted inclusive ``[first, last]`` pairs."""
    out: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if out and out[-1][1] + 1 == seq:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def count(ranges: Iterable[Range] | Iterable[list[int]]) -> int:
    """How many seqs the inclusive ranges cover."""
    return sum(last - first + 1 for first, last in ranges)


def contains(ranges: list[list[int]], seq: int) -> bool:
    """Whether sorted, non-overlapping ``ranges`` cover ``seq`` (binary search)."""
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        first, last = ranges[mid]
        if seq < first:
            hi = mid
        elif seq > last:
            lo = mid + 1
        else:
            return True
    return False


def remove(ranges: list[list[int]], seq: int) -> None:
    """Remove ``seq`` from sorted, non-overlapping ``ranges`` in place (no-op when absent)."""
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        first, last = ranges[mid]
        if seq < first:
            hi = mid
        elif seq > last:
            lo = mid + 1
        else:
            if first == last:
                del ranges[mid]
            elif seq == first:
                ranges[mid][0] = seq + 1
            elif seq == last:
                ranges[mid][1] = seq - 1
            else:
                ranges[mid : mid + 1] = [[first, seq - 1], [seq + 1, last]]
            return
