"""Litestar guards that enforce a rate limit per client IP."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from voxgate.apikeys import CALLER_SCOPE_KEY, ApiKey
from voxgate.clientip import client_ip
from voxgate.errors import ApiError
from voxgate.limits.base import Decision
from voxgate.rates import PER_KEY, RATE_NAMES

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

# Where a guard leaves its decision for the response headers (see voxgate.observe).
SCOPE_KEY = "voxgate.rate_limit"

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


def limit_key(connection: ASGIConnection[Any, Any, Any, Any], name: str) -> str:
    """Whom limit ``name`` counts for this request: its API key's name, else its client IP.

    The limits of :data:`voxgate.rates.PER_KEY` count per API key when the
    request was authenticated with one (a backend acting for many users
    shares one address); every other limit counts per client IP.
    """
    if name in PER_KEY:
        key = connection.scope.get(CALLER_SCOPE_KEY)
        if isinstance(key, ApiKey):
            return f"key:{key.name}"
    runtime: Runtime = connection.app.state.runtime
    return f"ip:{client_ip(connection.scope, runtime.trusted_proxies)}"


async def enforce(connection: ASGIConnection[Any, Any, Any, Any], name: str) -> Decision | None:
    """Check limit ``name`` for the caller (:func:`limit_key`); raises ApiError 429 when over.

    The decision is also left in the scope so the response carries the
    ``RateLimit-*`` headers. Usable from any handler, HTTP or WebSocket.
    """
    runtime: Runtime = connection.app.state.runtime
    decision = await runtime.limits.check(name, limit_key(connection, name))
    if decision is None:
        return None
    connection.scope[SCOPE_KEY] = decision  # type: ignore[literal-required]
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests: at most {decision.rate.requests} per "
            f"{decision.rate.period_s:g} s; retry in {math.ceil(decision.retry_after_s)} s",
            headers=decision.headers(),
        )
    return decision


def rate_limited(name: str) -> Guard:
    """A Litestar guard enforcing limit ``name`` per API key or client IP (:func:`limit_key`).

    ``rate_limited(TRANSCRIPTS)`` is the guard for the transcript relay
    endpoint: attach it with ``guards=[...]`` there.
    """
    if name not in RATE_NAMES:
        raise ValueError(f"unknown rate limit {name!r}")

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        await enforce(connection, name)

    guard.__name__ = f"rate_limited_{name}"
    return guard
