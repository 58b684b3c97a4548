"""API keys for management calls: who is calling, and what they may see.

Each configured key has a name and a scope (voxgate.apikeys). A request's key
is found once, by :func:`require_api_key`, and left in the ASGI scope for the
handlers (:func:`caller`) and the per-key rate limits. Failed authentications
count against the client IP (``VOXGATE_RATE_LIMIT_AUTH_FAILURES``): past the
limit every API-key or token attempt from that IP is answered 429 before its
credential is even looked at.
"""

from __future__ import annotations

import hmac
import math
from typing import TYPE_CHECKING, Any

import structlog
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler

from voxgate.apikeys import CALLER_SCOPE_KEY, ApiKey
from voxgate.clientip import client_ip
from voxgate.errors import ApiError
from voxgate.rates import AUTH_FAILURES

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

_CHALLENGE = 'Bearer realm="voxgate"'
# The log field that names the request's API key (never its secret).
KEY_NAME_LOG_FIELD = "key_name"


def bearer(value: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header value."""
    if not value:
        return None
    scheme, _, credential = value.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def find_key(candidate: str, keys: tuple[ApiKey, ...]) -> ApiKey | None:
    """The key whose secret is ``candidate``; compares against every key in constant time."""
    found: ApiKey | None = None
    raw = candidate.encode(errors="surrogateescape")
    for key in keys:
        if hmac.compare_digest(raw, key.secret.encode()):
            found = key
    return found


def caller(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiKey | None:
    """The API key this request was authenticated with, if any."""
    key = connection.scope.get(CALLER_SCOPE_KEY)
    return key if isinstance(key, ApiKey) else None


def authenticated(connection: ASGIConnection[Any, Any, Any, Any], key: ApiKey) -> None:
    """Record ``key`` as this request's caller: for handlers, limits, logs and metrics."""
    from voxgate import metrics  # not at import: `voxgate serve` imports this module first

    connection.scope[CALLER_SCOPE_KEY] = key  # type: ignore[literal-required]
    structlog.contextvars.bind_contextvars(**{KEY_NAME_LOG_FIELD: key.name})
    metrics.API_KEY_REQUESTS.labels(key.name).inc()


async def refuse_if_blocked(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """429 when this client IP is over its failed-authentication limit (nothing counted)."""
    runtime: Runtime = connection.app.state.runtime
    ip = client_ip(connection.scope, runtime.trusted_proxies)
    decision = await runtime.limits.check(AUTH_FAILURES, f"ip:{ip}", count=False)
    if decision is not None and not decision.allowed:
        _too_many(decision.rate.requests, decision.rate.period_s, decision.retry_after_s)


async def auth_failed(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Count a refused credential against the client IP; raises 429 once over the limit."""
    from voxgate import metrics

    runtime: Runtime = connection.app.state.runtime
    metrics.AUTH_FAILURES.inc()
    ip = client_ip(connection.scope, runtime.trusted_proxies)
    decision = await runtime.limits.check(AUTH_FAILURES, f"ip:{ip}")
    if decision is not None and not decision.allowed:
        _too_many(decision.rate.requests, decision.rate.period_s, decision.retry_after_s)


def _too_many(requests: int, period_s: float, retry_after_s: float) -> None:
    retry = max(1, math.ceil(retry_after_s))
    raise ApiError(
        429,
        "too_many_auth_failures",
        f"too many failed authentications from this address (at most {requests} per"
        f" {period_s:g} s); retry in {retry} s",
        headers={"Retry-After": str(retry)},
    )


async def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Litestar guard: the request must carry a configured API key (401, or 429 when blocked)."""
    keys: tuple[ApiKey, ...] = connection.app.state.runtime.api_keys
    candidate = bearer(connection.headers.get("authorization"))
    if candidate is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    await refuse_if_blocked(connection)
    key = find_key(candidate, keys)
    if key is None:
        await auth_failed(connection)
        raise ApiError(
            401,
            "unauthorized",
            "invalid API key",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    authenticated(connection, key)


async def require_admin(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Litestar guard: an API key of the ``admin`` scope (403 for a tenant key)."""
    await require_api_key(connection, handler)
    key = caller(connection)
    if key is None or not key.admin:
        raise ApiError(403, "forbidden", "this needs an API key of the admin scope")


# Polled by machines, never by a page: answered whatever Origin says.
_ANY_ORIGIN_PATHS = frozenset({"/health", "/ready", "/metrics"})
# The browser SDK's files: pages anywhere import them (what they may then call is
# checked on every other route).
_ANY_ORIGIN_PREFIX = "/client"


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request with this ``Origin`` header (None: not a browser) may be served."""
    return origin is None or "*" in allowed or origin in allowed


async def check_origin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard for every HTTP route: a browser's ``Origin`` must be in
    ``VOXGATE_CORS_ORIGINS`` (403 otherwise), so a page elsewhere cannot make a
    visitor's browser call voxgate, Server-Sent Events and uploads included.
    WebSocket routes check it themselves (close 4403 after accepting).
    """
    path = connection.scope["path"]
    if (
        connection.scope["type"] != ScopeType.HTTP
        or path in _ANY_ORIGIN_PATHS
        or path == _ANY_ORIGIN_PREFIX
        or path.startswith(_ANY_ORIGIN_PREFIX + "/")
    ):
        return
    allowed: tuple[str, ...] = connection.app.state.runtime.settings.cors_origins
    if not origin_allowed(connection.headers.get("origin"), allowed):
        raise ApiError(403, "origin", "Origin not allowed (VOXGATE_CORS_ORIGINS)")


def sees(key: ApiKey | None, tenant: str | None) -> bool:
    """Whether ``key`` may see a session of ``tenant``: its own, or any for admin."""
    return key is not None and (key.admin or key.name == tenant)
