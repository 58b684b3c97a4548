"""Counts what happens to stream tokens, around whichever token store is configured."""

from __future__ import annotations

from typing import Any

from voxgate import metrics
from voxgate.tokens.base import StreamToken, TokenStore


class MeteredTokenStore:
    """A :class:`TokenStore` that counts mints, consumptions and rejections."""

    def __init__(self, inner: TokenStore) -> None:
        self.inner = inner

    async def mint(self, session_id: str, ttl_s: int) -> StreamToken:
        minted = await self.inner.mint(session_id, ttl_s)
        metrics.TOKENS_MINTED.inc()
        return minted

    async def consume(self, token: str) -> str | None:
        session_id = await self.inner.consume(token)
        (metrics.TOKENS_CONSUMED if session_id is not None else metrics.TOKENS_REJECTED).inc()
        return session_id

    async def close(self) -> None:
        await self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else the configured store offers (health checks, say) passes through.
        return getattr(self.inner, name)
