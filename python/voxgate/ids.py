"""Session ids: ``ses_`` plus a 26-character ULID, so ids sort by creation time."""

from __future__ import annotations

import secrets
import threading
import time

# Crockford base32: no I, L, O, U.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1
_PREFIX = "ses_"

_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _encode(value: int) -> str:
    """128 bits as 26 Crockford base32 characters, most significant first."""
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_session_id() -> str:
    """A new id: 48-bit millisecond timestamp plus 80 random bits, Crockford base32.

    Ids made later sort after earlier ones; within one millisecond of one
    process the random part counts up, so even those keep creation order.
    """
    global _last_ms, _last_random
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _last_random = now_ms, secrets.randbits(_RANDOM_BITS)
        elif _last_random < _RANDOM_MAX:
            # Same millisecond (or the clock stepped back): count up to keep order.
            _last_random += 1
        else:
            _last_ms, _last_random = _last_ms + 1, secrets.randbits(_RANDOM_BITS - 1)
        value = (_last_ms & ((1 << 48) - 1)) << _RANDOM_BITS | _last_random
    return _PREFIX + _encode(value)
