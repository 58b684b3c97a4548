"""Sessions: create, read, list with paging, delete (PROTOCOL section 2.3)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import msgspec
import orjson
from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from voxgate.api.auth import caller, require_api_key, sees
from voxgate.api.problems import problem_responses
from voxgate.api.ratelimit import rate_limited
from voxgate.errors import ApiError
from voxgate.rates import SESSIONS
from voxgate.store.base import Session, SessionState

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

T = TypeVar("T")

Codec = Literal["pcm_s16le", "opus", "webm", "mulaw", "alaw", "flac", "mp3", "aac", "wav", "other"]


class SessionCreate(msgspec.Struct, forbid_unknown_fields=True):
    codec: Codec | None = None
    sample_rate: Annotated[int, msgspec.Meta(ge=1, le=768_000)] | None = None
    channels: Annotated[int, msgspec.Meta(ge=1, le=255)] | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class SessionPage(msgspec.Struct):
    sessions: list[Session]
    next: str | None


# JSON bodies nest at most this deep: metadata needs a few levels, and the decoders
# (msgspec's in particular) recurse per level, so a body of thousands of brackets
# would otherwise end in RecursionError, a 500.
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"request body nests deeper than {MAX_JSON_DEPTH} levels"


def json_depth_over(value: object, limit: int) -> bool:
    """Whether decoded JSON ``value`` nests deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


async def refuse_deep_json(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook of the app: 400 for a JSON body nested too deeply.

    Runs before Litestar decodes the body for a handler. Bodies that are not
    JSON are left to the handler (which answers them 400); the frames upload
    streams its body and is skipped.
    """
    if request.method not in ("POST", "PUT", "PATCH") or request.route_handler.name == "upload":
        return
    body = await request.body()
    # Cheap first: a body without many brackets cannot nest deeply.
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):  # orjson's own bound (1024 levels)
            raise ApiError(400, "too_deep", _TOO_DEEP) from None
        return
    if json_depth_over(value, MAX_JSON_DEPTH):
        raise ApiError(400, "too_deep", _TOO_DEEP)


async def strict_body(request: Request[Any, Any, Any], kind: type[T]) -> T | None:
    """The JSON body decoded with JSON's own types: ``"2"`` is not a number here.

    Litestar converts bodies leniently (as it must for query strings); the
    management API refuses wrong types with 400 instead of guessing.
    """
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not JSON: {exc}") from None
    except RecursionError:  # refuse_deep_json comes first; this is the backstop
        raise ApiError(400, "too_deep", _TOO_DEEP) from None
    if isinstance(value, dict):
        # JSON Schema counts 16000.0 as an integer; so do we, for the top-level fields.
        value = {
            k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in value.items()
        }
    try:
        return msgspec.convert(value, type=kind | None, strict=True)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_body", f"invalid request body: {exc}") from None


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def live_session(runtime: Runtime, session_id: str) -> Session:
    """The session, or 404 when unknown and 410 when deleted."""
    session = await runtime.store.get_session(session_id)
    if session is None:
        raise ApiError(404, "not_found", f"unknown session {session_id}")
    if session.state is SessionState.DELETED:
        raise ApiError(410, "gone", f"session {session_id} was deleted")
    return session


async def owned_session(request: Request[Any, Any, Any], session_id: str) -> Session:
    """The session if the request's API key may see it (its own, or any for admin).

    404 when unknown or another tenant's (the same answer: a tenant cannot
    learn which ids exist), 410 when deleted.
    """
    session = await runtime_of(request).store.get_session(session_id)
    if session is None or not sees(caller(request), session.tenant):
        raise ApiError(404, "not_found", f"unknown session {session_id}")
    if session.state is SessionState.DELETED:
        raise ApiError(410, "gone", f"session {session_id} was deleted")
    return session


def tenant_filter(request: Request[Any, Any, Any]) -> str | None:
    """The tenant whose sessions a listing shows: the caller's, or None (all) for admin."""
    key = caller(request)
    if key is None:  # the guard ran: cannot happen, but never list all by accident
        raise ApiError(401, "unauthorized", "missing API key")
    return None if key.admin else key.name


class SessionController(Controller):
    path = "/v1/sessions"
    guards = [require_api_key]
    tags = ["sessions"]

    @post(
        "/",
        status_code=201,
        guards=[rate_limited(SESSIONS)],
        responses=problem_responses(400, 401, 413, 429, 503),
    )
    async def create(
        self, request: Request[Any, Any, Any], data: JSONBody[SessionCreate | None] = None
    ) -> Session:
        """Create an open session."""
        body = await strict_body(request, SessionCreate) or SessionCreate()
        key = caller(request)
        return await runtime_of(request).store.create_session(
            codec=body.codec,
            sample_rate=body.sample_rate,
            channels=body.channels,
            metadata=body.metadata,
            tenant=None if key is None else key.name,
        )

    @get("/", responses=problem_responses(400, 401, 503))
    async def list_sessions(
        self,
        request: Request[Any, Any, Any],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        after: FromQuery[str | None] = None,
    ) -> SessionPage:
        """Sessions by id (creation order); pass ``next`` back as ``after`` for the next page.

        A tenant key lists its own sessions; an admin key lists all.
        """
        sessions = await runtime_of(request).store.list_sessions(
            limit=limit + 1, after=after, tenant=tenant_filter(request)
        )
        more = len(sessions) > limit
        sessions = sessions[:limit]
        return SessionPage(sessions, sessions[-1].id if more and sessions else None)

    @get("/{session_id:str}", responses=problem_responses(401, 404, 410, 503))
    async def read(self, request: Request[Any, Any, Any], session_id: FromPath[str]) -> Session:
        return await owned_session(request, session_id)

    @delete("/{session_id:str}", status_code=204, responses=problem_responses(401, 404, 410, 503))
    async def remove(self, request: Request[Any, Any, Any], session_id: FromPath[str]) -> None:
        """Delete a session: its frames and payload bytes are removed for good."""
        runtime = runtime_of(request)
        await owned_session(request, session_id)
        if not await runtime.store.delete_session(session_id):
            raise ApiError(410, "gone", f"session {session_id} was deleted")
        runtime.hub.session_deleted(session_id)
        # A warm session's payloads live in its archive: remove it too (the retention
        # runner removes it should this fail).
        record = await runtime.store.archive_record(session_id)
        if record is not None:
            await runtime.retention.discard_archive(session_id, record)
