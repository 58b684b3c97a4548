"""Storage figures per retention tier and the last retention run."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get

from voxgate.api.auth import require_admin
from voxgate.api.problems import problem_responses
from voxgate.api.sessions import runtime_of
from voxgate.retention import storage_gauges
from voxgate.store.base import RetentionRun, TierStats


class RetentionPolicy(msgspec.Struct):
    hot_days: float
    warm_days: float
    idle_hours: float
    runs_at: str  # "HH:MM[:SS]" UTC, or "off"


class StorageReport(msgspec.Struct):
    tiers: dict[str, TierStats]
    last_run: RetentionRun | None
    policy: RetentionPolicy


@get(
    "/v1/storage",
    guards=[require_admin],  # every tenant's figures: admin keys only
    tags=["storage"],
    responses=problem_responses(401, 403, 503),
)
async def storage(request: Request[Any, Any, Any]) -> StorageReport:
    """Sessions and bytes per tier, each tier's oldest session, the last retention run."""
    runtime = runtime_of(request)
    stats, last_run = await storage_gauges.refresh(runtime.store)
    settings = runtime.settings
    return StorageReport(
        tiers={tier.value: figures for tier, figures in stats.items()},
        last_run=last_run,
        policy=RetentionPolicy(
            hot_days=settings.retention_hot_days,
            warm_days=settings.retention_warm_days,
            idle_hours=settings.retention_idle_hours,
            runs_at=settings.retention_at,
        ),
    )
