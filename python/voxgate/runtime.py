"""The live parts of one server process, built from settings and shared by every handler."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from voxgate import _native
from voxgate.auth import ensure_api_keys
from voxgate.ingest.stream import StreamRegistry
from voxgate.ingest.writer import Writer
from voxgate.settings import Settings
from voxgate.store.base import Store
from voxgate.store.sqlite import SqliteStore
from voxgate.tokens.base import TokenStore
from voxgate.tokens.memory import MemoryTokenStore
from voxgate.tokens.sqlite import SqliteTokenStore

log = logging.getLogger("voxgate")

# Set by ``voxgate serve`` for its worker processes.
WORKERS_ENV = "VOXGATE_SERVE_WORKERS"


class Runtime:
    """Store, writer, tokens, ledger and open streams of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_keys, generated = ensure_api_keys(settings)
        if generated is not None:
            log.warning("generated API key (kept in %s/api_key): %s", settings.data_dir, generated)
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store: Store = SqliteStore(
            data_dir, durability=settings.durability, segment_max_bytes=settings.segment_max_bytes
        )
        self.tokens: TokenStore
        if int(os.environ.get(WORKERS_ENV, "1")) > 1:
            # Worker processes must share tokens: a file every worker of this host sees.
            self.tokens = SqliteTokenStore(data_dir / "tokens.db")
        else:
            self.tokens = MemoryTokenStore()
        self.writer = Writer(
            self.store, max_frames=settings.commit_max_frames, max_bytes=settings.commit_max_bytes
        )
        self.ledger = _native.Ledger(
            settings.window_bytes,
            settings.global_high_bytes,
            settings.global_low_bytes,
            # Hard cap: credit already granted may overshoot the high watermark by this much.
            2 * settings.global_high_bytes,
        )
        self.streams = StreamRegistry()
        self.draining = False

    async def start(self) -> None:
        await self.store.open()
        await self.writer.start()
        self.streams.start(self)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking streams, close open ones with 1001, flush commits, close the store."""
        self.draining = True
        await self.streams.close_all(grace_s)
        await self.writer.stop()
        await self.tokens.close()
        await self.store.close()
