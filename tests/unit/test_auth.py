"""API keys are compared in constant time, against every configured key."""

from __future__ import annotations

import hmac

import pytest

from voxgate import auth


def test_every_key_is_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ("first-key", "second-key", "third-key")
    assert auth.key_matches("second-key", keys)
    # No early exit on the match: the time taken does not tell which key matched.
    assert [b for _, b in calls] == [k.encode() for k in keys]
    calls.clear()
    assert not auth.key_matches("second-kez", keys)
    assert len(calls) == len(keys)


@pytest.mark.parametrize("candidate", ["", "second", "second-key-and-more", "sécond-key"])
def test_near_misses_do_not_match(candidate: str) -> None:
    assert not auth.key_matches(candidate, ("first-key", "second-key"))
