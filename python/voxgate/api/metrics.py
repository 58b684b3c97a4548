"""Prometheus metrics endpoint."""

from __future__ import annotations

from litestar import Response, get

from voxgate import metrics


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def prometheus_metrics() -> Response[bytes]:
    """Every voxgate metric in the Prometheus text format (summed over workers)."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
