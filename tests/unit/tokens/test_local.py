"""The token stores of one host (process memory, a SQLite file of the data dir): PROTOCOL
section 5 says the server keeps only a hash of each token."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from voxgate.tokens.base import token_hash
from voxgate.tokens.memory import MemoryTokenStore
from voxgate.tokens.sqlite import SqliteTokenStore


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [path for path in root.iterdir() if needle in path.read_bytes()]


async def test_the_sqlite_store_keeps_only_the_hash_and_consumes_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    tokens = SqliteTokenStore(path)
    try:
        minted = await tokens.mint("ses_hashed", 60)
        rows = sqlite3.connect(path).execute("SELECT hash, session_id FROM tokens").fetchall()
        assert rows == [(token_hash(minted.token), "ses_hashed")]
        assert await tokens.consume(minted.token) == "ses_hashed"
        assert await tokens.consume(minted.token) is None
    finally:
        await tokens.close()
    # Nowhere in the file, its journal or its WAL, even after the row is gone.
    assert files_containing(tmp_path, minted.token.encode()) == []


async def test_the_memory_store_keys_by_hash_and_consumes_once() -> None:
    tokens = MemoryTokenStore()
    minted = await tokens.mint("ses_hashed", 60)
    assert list(tokens._tokens) == [token_hash(minted.token)]
    assert all(minted.token not in session for session, _ in tokens._tokens.values())
    assert await tokens.consume(minted.token) == "ses_hashed"
    assert await tokens.consume(minted.token) is None
