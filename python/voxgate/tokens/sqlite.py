"""Token store in a SQLite file of the data dir, shared by every worker process of one host.

``voxgate serve --workers N`` runs N processes; a token minted by one must be
consumable, once, by any other. Redis does this across hosts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from voxgate.tokens.base import StreamToken, TokenStoreError, expiry, new_token, token_hash


class SqliteTokenStore:
    """Hashed, single-use, expiring tokens in ``<data dir>/tokens.db``."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens ("
            " hash TEXT PRIMARY KEY, session_id TEXT NOT NULL, expires REAL NOT NULL)"
        )

    def _mint(self, session_id: str, ttl_s: int) -> StreamToken:
        now = time.time()
        token = new_token()
        self._db.execute("DELETE FROM tokens WHERE expires <= ?", (now,))
        self._db.execute(
            "INSERT INTO tokens (hash, session_id, expires) VALUES (?, ?, ?)",
            (token_hash(token), session_id, now + ttl_s),
        )
        return StreamToken(token, session_id, expiry(ttl_s, now), ttl_s)

    def _consume(self, token: str) -> str | None:
        row = self._db.execute(
            "DELETE FROM tokens WHERE hash = ? RETURNING session_id, expires", (token_hash(token),)
        ).fetchone()
        if row is None or row[1] <= time.time():
            return None
        return str(row[0])

    async def mint(self, session_id: str, ttl_s: int) -> StreamToken:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._mint, session_id, ttl_s)
            except sqlite3.Error as exc:
                raise TokenStoreError(f"token store {self._path}: {exc}") from exc

    async def consume(self, token: str) -> str | None:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._consume, token)
            except sqlite3.Error as exc:
                raise TokenStoreError(f"token store {self._path}: {exc}") from exc

    async def close(self) -> None:
        self._db.close()
