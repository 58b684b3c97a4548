"""Prometheus metrics endpoint."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response, get

from voxgate import metrics
from voxgate.retention import storage_gauges
from voxgate.store.base import StoreError

log = logging.getLogger("voxgate.api")


@get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every voxgate metric in the Prometheus text format (summed over workers)."""
    try:
        # The storage figures are the store's: read them as of this scrape.
        await storage_gauges.refresh(request.app.state.runtime.store)
    except StoreError as exc:
        log.warning("storage figures not refreshed: %s", exc)
    settings = request.app.state.runtime.settings
    return Response(metrics.exposition(settings.metrics_dir), media_type=metrics.CONTENT_TYPE)
