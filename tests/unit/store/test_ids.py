"""Session ids: ULID-shaped, unique, in creation order."""

from __future__ import annotations

import re
import time

from voxgate.ids import new_session_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def timestamp_ms(session_id: str) -> int:
    value = 0
    for char in session_id[4:14]:  # 10 characters = 50 bits: 2 zero bits, then the time
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_shape() -> None:
    session_id = new_session_id()
    assert re.fullmatch(r"ses_[0-7][0-9A-HJKMNP-TV-Z]{25}", session_id)


def test_ids_are_unique_and_sorted_by_creation() -> None:
    ids = [new_session_id() for _ in range(20_000)]  # many share a millisecond
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_id_carries_the_creation_time() -> None:
    before = time.time_ns() // 1_000_000
    session_id = new_session_id()
    after = time.time_ns() // 1_000_000
    assert before <= timestamp_ms(session_id) <= after
