"""Liveness."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import get


@get("/health", tags=["health"])
async def health() -> dict[str, Any]:
    """The process is up and serving."""
    return {"status": "ok", "timestamp": datetime.now(UTC).isoformat()}
