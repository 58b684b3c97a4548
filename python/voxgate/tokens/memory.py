"""In-process token store: the default for a single process."""

from __future__ import annotations

import time

from voxgate.tokens.base import StreamToken, expiry, new_token, token_hash

# Purge expired entries once the table holds this many, so it cannot grow without bound.
_PURGE_AT = 10_000


class MemoryTokenStore:
    """Hashed, single-use, expiring tokens in a dict. Not shared between processes."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}

    async def mint(self, session_id: str, ttl_s: int) -> StreamToken:
        now = time.time()
        if len(self._tokens) >= _PURGE_AT:
            self._tokens = {h: v for h, v in self._tokens.items() if v[1] > now}
        token = new_token()
        self._tokens[token_hash(token)] = (session_id, now + ttl_s)
        return StreamToken(token, session_id, expiry(ttl_s, now), ttl_s)

    async def consume(self, token: str) -> str | None:
        entry = self._tokens.pop(token_hash(token), None)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    async def close(self) -> None:
        self._tokens.clear()
