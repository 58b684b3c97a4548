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


def union(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    """Sorted, non-overlapping ranges covering what ``a`` or ``b`` (each sorted) covers."""
    out: list[list[int]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and a[i][0] <= b[j][0]):
            first, last = a[i]
            i += 1
        else:
            first, last = b[j]
            j += 1
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return out


def subtract(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    """The parts of ``a`` that ``b`` does not cover (both sorted and non-overlapping)."""
    out: list[list[int]] = []
    j = 0
    for first, last in a:
        while j < len(b) and b[j][1] < first:
            j += 1
        k = j
        while first <= last:
            if k >= len(b) or b[k][0] > last:
                out.append([first, last])
                break
            if b[k][0] > first:
                out.append([first, b[k][0] - 1])
            first = max(first, b[k][1] + 1)
            k += 1
    return out


def complement(ranges: list[list[int]], end: int) -> list[list[int]]:
    """Ranges of ``[0, end)`` that sorted, non-overlapping ``ranges`` do not cover."""
    out: list[list[int]] = []
    start = 0
    for first, last in ranges:
        if first >= end:
            break
        if first > start:
            out.append([start, first - 1])
        start = max(start, last + 1)
    if start < end:
        out.append([start, end - 1])
    return out
