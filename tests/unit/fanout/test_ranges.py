"""Range arithmetic the feeds rely on, checked against plain sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voxgate.ranges import complement, subtract, to_ranges, union

seq_sets = st.sets(st.integers(min_value=0, max_value=80), max_size=60)


def covered(ranges: list[list[int]]) -> set[int]:
    return {seq for first, last in ranges for seq in range(first, last + 1)}


@given(seq_sets, seq_sets)
def test_union(a: set[int], b: set[int]) -> None:
    assert union(to_ranges(a), to_ranges(b)) == to_ranges(a | b)


@given(seq_sets, seq_sets)
def test_subtract(a: set[int], b: set[int]) -> None:
    assert subtract(to_ranges(a), to_ranges(b)) == to_ranges(a - b)


@given(seq_sets, st.integers(min_value=0, max_value=90))
def test_complement(a: set[int], end: int) -> None:
    result = complement(to_ranges(a), end)
    assert result == to_ranges(set(range(end)) - a)
    assert covered(result) | (a & set(range(end))) == set(range(end))


def test_edges() -> None:
    assert union([], []) == []
    assert union([[0, 2]], [[3, 5]]) == [[0, 5]]
    assert subtract([[0, 9]], [[0, 9]]) == []
    assert subtract([[0, 9]], [[3, 4], [6, 6]]) == [[0, 2], [5, 5], [7, 9]]
    assert complement([], 0) == []
    assert complement([[0, 4]], 3) == []
    assert complement([[2, 3]], 6) == [[0, 1], [4, 5]]
