"""Liveness (``/health``) and readiness (``/ready``).

``/health`` says the process serves HTTP; orchestrators restart it when it
does not. ``/ready`` says whether this instance can do its work right now:
it checks each component it depends on (the store with one cheap read, Redis
with ``PING``) and answers 503 naming the failing ones, or while the instance
drains for shutdown, so a load balancer sends new clients elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get

from voxgate.api.sessions import runtime_of

# Each check gets this long before its component counts as down.
CHECK_TIMEOUT_S = 2.0
# The store check reads this (never created) session: one indexed lookup.
PROBE_SESSION_ID = "ses_readiness_probe"


@get("/health", tags=["health"])
async def health() -> dict[str, Any]:
    """The process is up and serving."""
    return {"status": "ok", "timestamp": datetime.now(UTC).isoformat()}


async def _check(probe: Awaitable[object]) -> dict[str, Any]:
    """Run ``probe`` within the timeout: ``status`` up or down, ``latency_ms``, ``error``.

    Any failure counts as down (the point is to answer, never to raise).
    """
    start = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await probe
    except TimeoutError:
        outcome: dict[str, Any] = {"status": "down", "error": f"no answer in {CHECK_TIMEOUT_S:g} s"}
    except Exception as exc:
        outcome = {"status": "down", "error": str(exc) or type(exc).__name__}
    else:
        outcome = {"status": "up"}
    outcome["latency_ms"] = round((time.perf_counter() - start) * 1000, 3)
    return outcome


@get("/ready", tags=["health"])
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Readiness: each component's status and latency; 503 naming what is down or draining."""
    runtime = runtime_of(request)
    checks: dict[str, Awaitable[dict[str, Any]]] = {
        "store": _check(runtime.store.get_session(PROBE_SESSION_ID)),
    }
    if runtime.redis is not None:
        checks["redis"] = _check(runtime.redis.ping())
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    components: dict[str, dict[str, Any]] = {"store": results["store"]}
    if "redis" in results:
        redis = results["redis"]
        redis["connected"] = redis["status"] == "up"
        # The takeover channel reconnects by itself; the store poll covers it meanwhile.
        redis["pubsub"] = runtime.claims is not None and runtime.claims.subscribed
        components["redis"] = redis
    else:
        components["redis"] = {"status": "not_configured", "connected": False}
    failing = [name for name, result in components.items() if result["status"] == "down"]
    if runtime.draining:
        status = "draining"
    elif failing:
        status = "unavailable"
    else:
        status = "ok"
    body = {
        "status": status,
        "timestamp": datetime.now(UTC).isoformat(),
        "components": components,
        "failing": failing,
    }
    return Response(body, status_code=200 if status == "ok" else 503)
