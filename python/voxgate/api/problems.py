"""The one place where exceptions become RFC 9457 problem details (see voxgate.errors)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from voxgate.errors import TYPE_PREFIX, ApiError, title_of
from voxgate.retention.archive import ArchiveError
from voxgate.store.base import StoreError
from voxgate.tokens.base import TokenStoreError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("voxgate.api")


class Problem(msgspec.Struct):
    """RFC 9457 problem details, as every error answers (extra members may follow)."""

    type: str
    title: str
    status: int
    detail: str


# What each error status means on voxgate's API, for the OpenAPI schema.
_MEANING = {
    400: "Malformed request: bad JSON, wrong types, missing or unknown fields, broken framing",
    401: "Missing or invalid credential (API key, or stream token where one is named)",
    403: "Origin not allowed, a token for another session, or an admin-only route",
    404: "Unknown session, or another tenant's",
    408: "The request body stalled (VOXGATE_HTTP_BODY_TIMEOUT_S)",
    409: "The session has gaps (pass allow_gaps=true)",
    410: "The session was deleted (audio and archive: its audio expired, tier cold)",
    413: "Request body above the configured limit",
    415: "Wrong Content-Type",
    416: "Range outside the stored bytes",
    422: "Well-formed but out of range (token ttl_s above the maximum, format not possible)",
    429: "Rate limit: see Retry-After and the RateLimit-* headers",
    503: "Storage or token store unavailable: retry after Retry-After",
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for a route handler: each status answers problem details."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_MEANING[status],
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    """A problem-details response; ``type`` is a stable URN naming the error."""
    body: dict[str, Any] = {
        "type": f"{TYPE_PREFIX}{code}",
        "title": title_of(status),
        "status": status,
        "detail": detail,
    }
    body.update(extra or {})
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    return problem(exc.status, exc.code, exc.detail, headers=exc.headers, extra=exc.extra)


# What Litestar raises (as a 500) when the client disconnects while its body is read.
_CLIENT_GONE = "client disconnected prematurely"
# Set in the ASGI scope by voxgate.observe when a request body stalled past
# VOXGATE_HTTP_BODY_TIMEOUT_S (it then tells Litestar the client left).
BODY_TIMEOUT_SCOPE_KEY = "voxgate.body_timeout"


def body_cut_short(scope: Any) -> ApiError:
    """The error for a request body that did not arrive: 408 if it stalled, else 400."""
    if scope.get(BODY_TIMEOUT_SCOPE_KEY):
        return ApiError(
            408,
            "body_timeout",
            "the request body stalled: nothing arrived for too long",
            headers={"Connection": "close"},
        )
    return ApiError(400, "incomplete_body", "the client went away before its body ended")


def _http_exception(
    request: Request[Any, Any, Any], exc: HTTPException
) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status == 500 and exc.detail == _CLIENT_GONE:
        # The client's doing, not the server's: a client that left reads no answer, but
        # the access log and metrics count it as the client error it is.
        return _api_error(request, body_cut_short(request.scope))
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException) and exc.extra:
        extra["errors"] = exc.extra
    code = title_of(status).lower().replace(" ", "_")
    return problem(status, code, str(exc.detail), headers=exc.headers, extra=extra)


def _store_error(_: Request[Any, Any, Any], exc: StoreError) -> Response[dict[str, Any]]:
    log.error("store unavailable: %s", exc)
    return problem(
        503,
        "store_unavailable",
        "storage is unavailable, retry shortly",
        headers={"Retry-After": "1"},
    )


def _token_store_error(_: Request[Any, Any, Any], exc: TokenStoreError) -> Response[dict[str, Any]]:
    log.error("token store unavailable: %s", exc)
    return problem(
        503,
        "token_store_unavailable",
        "the token store is unavailable, retry shortly",
        headers={"Retry-After": "2"},
    )


def _archive_error(_: Request[Any, Any, Any], exc: ArchiveError) -> Response[dict[str, Any]]:
    log.error("archive unreadable: %s", exc)
    return problem(500, "archive_unreadable", "the session's archive cannot be read")


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unexpected error", exc_info=exc)
    return problem(500, "internal", "unexpected server error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ApiError: _api_error,
    HTTPException: _http_exception,
    StoreError: _store_error,
    TokenStoreError: _token_store_error,
    ArchiveError: _archive_error,
    Exception: _unexpected,
}
