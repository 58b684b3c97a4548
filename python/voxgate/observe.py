"""The outermost layer of the application: request ids, client IPs, access log, HTTP metrics.

:class:`Observed` wraps the Litestar app as plain ASGI so it also sees what
Litestar answers before routing (404, 405). For every HTTP request and
WebSocket it takes the request id from ``X-Request-ID`` (or makes one),
returns it in ``X-Request-ID``, binds it to every log line written while the
request is handled, and resolves the client IP once. HTTP requests get one
access-log line (path without query string, so no token can leak) and the
per-route metrics. WebSockets are counted per client IP and refused with
4429 beyond ``VOXGATE_MAX_STREAMS_PER_IP`` open at once in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from litestar.routes import HTTPRoute

from voxgate import logs, metrics
from voxgate.api import auth, problems
from voxgate.api.ratelimit import SCOPE_KEY
from voxgate.clientip import client_ip, parse_networks
from voxgate.limits.base import Decision
from voxgate.limits.connections import ConnectionCounter
from voxgate.scope import RAW_CHANNEL, STREAM_CLOSE_SCOPE_KEY

if TYPE_CHECKING:
    from litestar import Litestar

    from voxgate.settings import Settings

# Plain ASGI shapes: this layer reads and writes keys Litestar's TypedDicts do not know.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logs.get("voxgate.access")

REQUEST_ID_HEADER = b"x-request-id"

# A client's id is kept if it is short and plain; anything else gets a fresh one.
_GOOD_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
# Routes polled by machines: their access lines are debug, not info.
_QUIET = frozenset({"/health", "/metrics", "/ready"})
# After an answer given before the body was read, at most this much of it is dropped.
_DRAIN_BYTES = 8 * 1024 * 1024
_DRAIN_S = 5.0


def request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is plain and short, else a new random one."""
    for name, value in scope.get("headers") or ():
        if name.lower() == REQUEST_ID_HEADER and _GOOD_ID.match(value):
            return str(value.decode())
    return uuid.uuid4().hex


class Observed:
    """ASGI wrapper around the voxgate Litestar app (see the module docstring)."""

    def __init__(self, app: Litestar, settings: Settings) -> None:
        self.app = app
        self._app: Callable[[Scope, Receive, Send], Awaitable[None]] = app  # type: ignore[assignment]
        self.trusted = parse_networks(settings.trusted_proxies)
        self.ip_streams = ConnectionCounter(settings.max_streams_per_ip)
        self.body_timeout_s = settings.http_body_timeout_s
        self.send_timeout_s = settings.http_send_timeout_s
        # Litestar's automatic OPTIONS answer lists only the methods of the first
        # handler registered for a path; the right list, by route template:
        self._allow = {
            route.path_format: ", ".join(sorted(route.methods))
            for route in app.routes
            if isinstance(route, HTTPRoute)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        ip = client_ip(scope, self.trusted)
        started = time.perf_counter()
        status = 499  # no answer sent: the client went away first (as nginx counts it)
        body_done = False
        elapsed: float | None = None

        def record() -> float:
            # Counted before the last body byte goes out, so that a client that has read
            # its answer finds it counted.
            nonlocal elapsed
            if elapsed is None:
                elapsed = time.perf_counter() - started
                # Never the client's own words as label values: unknown methods are one
                # value, unrouted paths another.
                method = metrics.method_label(scope["method"])
                route = str(scope.get("path_template") or "unmatched")
                metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
                metrics.HTTP_DURATION.labels(method, route).observe(elapsed)
            return elapsed

        async def receive_body() -> Message:
            nonlocal body_done
            if body_done:  # later receives only wait for the disconnect (streamed answers)
                return await receive()
            try:
                # A body that stalls holds its connection: bounded (VOXGATE_HTTP_BODY_TIMEOUT_S).
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                # Litestar reads this as the client leaving; api/problems.py answers 408.
                scope[problems.BODY_TIMEOUT_SCOPE_KEY] = True
                log.info("http.body_timeout", path=scope["path"], after_s=self.body_timeout_s)
                message = {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or ())
                headers.append((REQUEST_ID_HEADER, rid.encode()))
                if scope["method"] == "OPTIONS":
                    allow = self._allow.get(scope.get("path_template") or "")
                    if allow is not None:
                        headers = [
                            (k, allow.encode() if k.lower() == b"allow" else v) for k, v in headers
                        ]
                decision = scope.get(SCOPE_KEY)
                if isinstance(decision, Decision) and decision.allowed:
                    headers.extend(
                        (k.lower().encode(), v.encode()) for k, v in decision.headers().items()
                    )
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()
            try:
                # Granian's send waits once a few MB are queued for the client: one that
                # reads nothing holds it here (VOXGATE_HTTP_SEND_TIMEOUT_S).
                async with asyncio.timeout(self.send_timeout_s):
                    await send(message)
            except TimeoutError:
                raise _SendStalled from None

        with structlog.contextvars.bound_contextvars(request_id=rid, client_ip=ip):
            try:
                try:
                    await self._app(scope, receive_body, send_with_headers)
                except Exception as exc:
                    if not _stalled(exc):
                        raise
                    # Returning with the answer unfinished makes Granian drop the connection.
                    log.info("http.send_stalled", path=scope["path"], after_s=self.send_timeout_s)
                    return
                finally:
                    # A streamed answer's producer (an events listener) is closed here
                    # whatever ended the answer: Litestar leaves an interrupted one open.
                    close = scope.get(STREAM_CLOSE_SCOPE_KEY)
                    if close is not None:
                        with contextlib.suppress(RuntimeError):
                            await close()
                if (
                    not body_done
                    and _has_body(scope)
                    and not scope.get(problems.BODY_TIMEOUT_SCOPE_KEY)
                ):
                    await _drain(receive)
            finally:
                duration = record()
                line = log.debug if scope["path"] in _QUIET else log.info
                line(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    route=str(scope.get("path_template") or "unmatched"),
                    status=status,
                    duration_ms=round(duration * 1000, 3),
                )
                # Bound by voxgate.auth for this request only.
                structlog.contextvars.unbind_contextvars(auth.KEY_NAME_LOG_FIELD)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        ip = client_ip(scope, self.trusted)
        with structlog.contextvars.bound_contextvars(request_id=rid, client_ip=ip):
            if not self.ip_streams.acquire(ip):
                await _refuse(scope, receive, send, rid, self.ip_streams.cap)
                return
            try:

                async def send_with_id(message: Message) -> None:
                    if message["type"] == "websocket.accept":
                        headers = list(message.get("headers") or ())
                        headers.append((REQUEST_ID_HEADER, rid.encode()))
                        message = {**message, "headers": headers}
                    await send(message)

                scope[RAW_CHANNEL] = (receive, send)
                await self._app(scope, receive, send_with_id)
            finally:
                self.ip_streams.release(ip)


class _SendStalled(Exception):
    """The client read nothing of its answer for VOXGATE_HTTP_SEND_TIMEOUT_S."""


def _stalled(exc: BaseException, depth: int = 0) -> bool:
    """Whether ``exc`` is, or was raised from, :class:`_SendStalled`: Litestar wraps it,
    in an exception group (its streaming task group) inside its own exception."""
    if depth > 8:
        return False
    if isinstance(exc, _SendStalled):
        return True
    if isinstance(exc, BaseExceptionGroup) and any(
        _stalled(inner, depth + 1) for inner in exc.exceptions
    ):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and _stalled(cause, depth + 1)


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers") or ():
        lowered = name.lower()
        if lowered == b"transfer-encoding" or (lowered == b"content-length" and value != b"0"):
            return True
    return False


async def _drain(receive: Receive) -> None:
    """Read and drop what is left of a body answered before it was read (a 413, a 400 for
    broken framing, a 401), bounded, so that closing the connection does not reset it
    under the answer the client has yet to read."""
    left = _DRAIN_BYTES
    with contextlib.suppress(TimeoutError, OSError, RuntimeError):
        async with asyncio.timeout(_DRAIN_S):
            while left > 0:
                message = await receive()
                left -= len(message.get("body") or b"")
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return


async def _refuse(scope: Scope, receive: Receive, send: Send, rid: str, cap: int) -> None:
    """Accept, send ``error`` and close with 4429: too many streams from this IP."""
    metrics.RATE_LIMITED.labels("streams_per_ip").inc()
    metrics.STREAM_CLOSES.labels("4429", "server").inc()
    message = f"too many open streams from this address (at most {cap}), retry later"
    log.warning("stream.refused", code=4429, error="too_many_streams", path=scope["path"])
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    offered = list(scope.get("subprotocols") or ())
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": "voxgate.v1" if "voxgate.v1" in offered else None,
            "headers": [(REQUEST_ID_HEADER, rid.encode())],
        }
    )
    error = {"type": "error", "code": "too_many_streams", "message": message}
    await send({"type": "websocket.send", "text": orjson.dumps(error).decode(), "bytes": None})
    await send({"type": "websocket.close", "code": 4429, "reason": message[:123]})
