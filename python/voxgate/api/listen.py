"""Listeners: server-sent events, the WebSocket listen endpoint, listen tokens.

Both transports share authentication (an API key in ``Authorization``, or a
single-use listen token), resume parameters and the event stream of
:class:`~voxgate.fanout.listener.Listener`; docs/api.md "Listeners" is the contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, cast
from urllib.parse import parse_qs

import orjson
from litestar import Request, WebSocket, get, post, websocket
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.types import WebSocketSendEvent

from voxgate.api.auth import (
    auth_failed,
    authenticated,
    bearer,
    find_key,
    origin_allowed,
    refuse_if_blocked,
    require_api_key,
    sees,
)
from voxgate.api.problems import problem_responses
from voxgate.api.ratelimit import enforce, rate_limited
from voxgate.api.sessions import runtime_of
from voxgate.api.stream import SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX, reject
from voxgate.api.tokens import TokenRequest, TokenResponse, issue_token
from voxgate.apikeys import ApiKey
from voxgate.errors import ApiError
from voxgate.fanout.bus import BusError
from voxgate.fanout.events import AUDIO, KEEPALIVE, End
from voxgate.fanout.listener import Listener
from voxgate.ingest.stream import Close, stop_task
from voxgate.rates import LISTEN_CONNECTS, TOKENS
from voxgate.scope import STREAM_CLOSE_SCOPE_KEY
from voxgate.store.base import SessionState, StoreError
from voxgate.tokens.base import TokenStoreError

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

log = logging.getLogger("voxgate.listen")

# What a listen token is bound to: never equal to a session id, so a stream token
# (bound to the bare id) cannot listen and a listen token cannot stream.
LISTEN_SUBJECT_PREFIX = "listen:"

# HTTP statuses of listener refusals and the WebSocket close codes that say the same.
_CLOSE_CODES = {400: 4400, 401: 4401, 403: 4403, 404: 4404, 410: 4410, 429: 4429, 503: 1013}


class ListenParams:
    """What a listener asked for: audio or not, and where to resume."""

    def __init__(self, audio: bool, from_seq: int, last_event_id: int) -> None:
        self.audio = audio
        self.from_seq = from_seq
        self.last_event_id = last_event_id


# The largest resume point (seq or event id) accepted: 2**53 - 1, so that the bound
# the OpenAPI schema states is exact as a JSON number (above it, doubles round).
MAX_RESUME = (1 << 53) - 1


def _integer(query: Mapping[str, list[str]], name: str, header: str | None = None) -> int:
    values = query.get(name)
    raw = values[-1] if values else header
    if raw is None or raw == "":
        return 0
    # ASCII digits only (str.isdigit() also takes "²", which int() refuses), and
    # the length checked before converting: Python refuses over 4300 digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 16 or int(raw) > MAX_RESUME:
        raise ApiError(
            400, "bad_parameter", f"{name} must be an integer between 0 and {MAX_RESUME}"
        )
    return int(raw)


def listen_params(
    query: Mapping[str, list[str]], last_event_id_header: str | None, *, audio_allowed: bool
) -> ListenParams:
    """Parse ``audio``, ``from_seq`` and ``last_event_id`` (or ``Last-Event-ID``); 400 if bad."""
    audio_values = query.get("audio")
    audio_raw = (audio_values[-1] if audio_values else "false").lower()
    if audio_raw not in ("true", "false", "1", "0"):
        raise ApiError(400, "bad_parameter", "audio must be true or false")
    audio = audio_raw in ("true", "1")
    if audio and not audio_allowed:
        raise ApiError(
            400, "bad_parameter", "audio frames are sent over the WebSocket listen endpoint only"
        )
    return ListenParams(
        audio,
        _integer(query, "from_seq"),
        _integer(query, "last_event_id", last_event_id_header),
    )


async def authorize(
    connection: Request[Any, Any, Any] | WebSocket[Any, Any, Any],
    runtime: Runtime,
    session_id: str,
    token: str | None,
) -> ApiKey | None:
    """Accept an API key (from ``Authorization`` only) or a listen token for this session.

    ``token`` is the listen token from the query or the subprotocol, when
    ``Authorization`` carries none. Counts the connect against
    ``VOXGATE_RATE_LIMIT_LISTEN_CONNECTS`` (per API key, else per client IP)
    before a token is used up. Returns the API key, None for a token.
    Raises :class:`ApiError` 401, 403, 429 or 503.
    """
    credential = bearer(connection.headers.get("authorization"))
    token = credential or token
    if token is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing credentials: send an API key (Authorization: Bearer) or a listen token",
        )
    await refuse_if_blocked(connection)
    key = None if credential is None else find_key(credential, runtime.api_keys)
    if key is not None:
        authenticated(connection, key)
        await enforce(connection, LISTEN_CONNECTS)
        return key
    await enforce(connection, LISTEN_CONNECTS)
    try:
        subject = await runtime.tokens.consume(token)
    except TokenStoreError as exc:
        log.error("token store unavailable: %s", exc)
        raise ApiError(503, "token_store_unavailable", "token store unavailable") from exc
    if subject is None:
        await auth_failed(connection)
        raise ApiError(401, "unauthorized", "invalid API key, or invalid, expired or used token")
    if subject == session_id:
        raise ApiError(403, "forbidden", "a stream token cannot listen: mint a listen token")
    if subject != LISTEN_SUBJECT_PREFIX + session_id:
        raise ApiError(403, "forbidden", "the listen token is for another session")
    return None


async def admit(runtime: Runtime, session_id: str, key: ApiKey | None) -> None:
    """The session must exist, be the API key's to see (404 if not), not be deleted,
    and this process must have room. ``key`` None: a listen token, bound to the session."""
    if runtime.draining:
        raise ApiError(503, "draining", "server is shutting down, reconnect")
    session = await runtime.store.get_session(session_id)
    if session is None or (key is not None and not sees(key, session.tenant)):
        raise ApiError(404, "not_found", f"unknown session {session_id}")
    if session.state is SessionState.DELETED:
        raise ApiError(410, "gone", f"session {session_id} was deleted")
    if len(runtime.hub.listeners) >= runtime.settings.max_listeners:
        raise ApiError(429, "too_many_listeners", "too many listeners, retry later")


def _new_listener(runtime: Runtime, session_id: str, params: ListenParams) -> Listener:
    return runtime.hub.new_listener(
        session_id,
        audio=params.audio,
        from_seq=params.from_seq,
        last_event_id=params.last_event_id,
    )


def _error_fields(end: End) -> dict[str, Any]:
    fields: dict[str, Any] = {"code": end.error, "message": end.message}
    if end.resume is not None:
        fields["resume"] = end.resume
    return fields


# -- listen tokens --------------------------------------------------------------------


@post(
    "/v1/sessions/{session_id:str}/listen-tokens",
    guards=[require_api_key, rate_limited(TOKENS)],
    status_code=201,
    tags=["listeners"],
    responses=problem_responses(400, 401, 404, 410, 413, 422, 429, 503),
)
async def mint_listen_token(
    request: Request[Any, Any, Any],
    session_id: FromPath[str],
    data: JSONBody[TokenRequest | None] = None,
) -> TokenResponse:
    """A single-use listen token bound to the session (not usable to stream)."""
    return await issue_token(request, session_id, data, subject=LISTEN_SUBJECT_PREFIX + session_id)


# -- server-sent events ---------------------------------------------------------------


def _sse(kind: str, data: bytes, event_id: int | None = None) -> bytes:
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


@get(
    "/v1/sessions/{session_id:str}/events",
    tags=["listeners"],
    media_type="text/event-stream",
    responses=problem_responses(400, 401, 403, 404, 410, 429, 503),
)
async def events(
    request: Request[Any, Any, Any],
    session_id: FromPath[str],
    # Plain ints with a default (not "int | None"): Litestar then states the bounds in
    # the integer schema itself, where clients and schemathesis read them.
    last_event_id: Annotated[
        int, QueryParameter(ge=0, le=MAX_RESUME, description="resume after this transcript id")
    ] = 0,
    last_event_id_header: Annotated[
        int,
        HeaderParameter(
            name="last-event-id",
            ge=0,
            le=MAX_RESUME,
            description="what browsers send on reconnect",
        ),
    ] = 0,
    token: Annotated[str | None, QueryParameter(description="a listen token")] = None,
) -> Stream:
    """The session's events as Server-Sent Events (no audio)."""
    # The parameters above are declared for the schema (and checked by Litestar);
    # listen_params reads them as the WebSocket endpoint does.
    runtime = runtime_of(request)
    query = parse_qs(request.scope.get("query_string", b"").decode(errors="replace"))
    params = listen_params(query, request.headers.get("last-event-id"), audio_allowed=False)
    token = query["token"][-1] if query.get("token") else None
    key = await authorize(request, runtime, session_id, token)
    await admit(runtime, session_id, key)
    body = _sse_body(runtime, session_id, params)
    # Closed by voxgate.observe once the answer ends, however it ends (a client that
    # reads nothing is dropped mid-answer), so the listener always leaves the hub.
    request.scope[STREAM_CLOSE_SCOPE_KEY] = body.aclose  # type: ignore[literal-required]
    return Stream(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse_body(
    runtime: Runtime, session_id: str, params: ListenParams
) -> AsyncGenerator[bytes, None]:
    hub = runtime.hub
    listener = _new_listener(runtime, session_id, params)
    try:
        try:
            await hub.join(listener)
        except (BusError, StoreError) as exc:
            log.error("listener of %s cannot start: %s", session_id, exc)
            end = End(1013, "unavailable", "events are unavailable right now, retry")
            yield _sse("error", orjson.dumps(_error_fields(end)))
            return
        yield b"retry: 2000\n\n"
        async with contextlib.aclosing(listener.run()) as outs:
            async for out in outs:
                if isinstance(out, End):
                    yield _sse("error", orjson.dumps(_error_fields(out)))
                    return
                if out.kind == KEEPALIVE:
                    yield b": keepalive\n\n"
                else:
                    yield _sse(out.kind, out.data, out.event_id)
    finally:
        hub.leave(listener)


# -- WebSocket ------------------------------------------------------------------------


def _ws_event(out_data: bytes, binary: bool) -> WebSocketSendEvent:
    if binary:
        return {"type": "websocket.send", "bytes": out_data, "text": None}
    return {"type": "websocket.send", "bytes": None, "text": out_data.decode()}


@websocket("/v1/sessions/{session_id:str}/listen", name="listen")
async def listen(socket: WebSocket[Any, Any, Any], session_id: FromPath[str]) -> None:
    """The session's events as WebSocket text messages, and its audio (``audio=true``)."""
    runtime: Runtime = socket.app.state.runtime
    offered: list[str] = list(socket.scope.get("subprotocols") or [])
    token: str | None = None
    for proto in offered:
        if proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            token = proto[len(TOKEN_SUBPROTOCOL_PREFIX) :] or None
    query = parse_qs(socket.scope.get("query_string", b"").decode(errors="replace"))
    if token is None and query.get("token"):
        token = query["token"][-1]
    await socket.accept(subprotocols=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    try:
        if not origin_allowed(socket.headers.get("origin"), runtime.settings.cors_origins):
            raise ApiError(403, "origin", "Origin not allowed")
        params = listen_params(query, socket.headers.get("last-event-id"), audio_allowed=True)
        key = await authorize(socket, runtime, session_id, token)
        await admit(runtime, session_id, key)
    except ApiError as exc:
        await reject(socket, Close(_CLOSE_CODES.get(exc.status, 4400), exc.code, exc.detail))
        return
    except StoreError as exc:
        log.error("store unavailable at listen: %s", exc)
        await reject(socket, Close(1013, "store_unavailable", "storage unavailable"))
        return
    hub = runtime.hub
    listener = _new_listener(runtime, session_id, params)
    try:
        await hub.join(listener)
    except (BusError, StoreError) as exc:
        log.error("listener of %s cannot start: %s", session_id, exc)
        await reject(socket, Close(1013, "unavailable", "events are unavailable right now"))
        return
    try:
        await _serve(socket, listener, runtime.settings.listen_stall_timeout_s)
    finally:
        hub.leave(listener)


async def _serve(socket: WebSocket[Any, Any, Any], listener: Listener, stall_s: float) -> None:
    """Send what the listener yields; the reader task only answers pings and sees the peer go."""
    gone = asyncio.Event()
    reader = asyncio.create_task(_read_controls(socket, listener, gone))
    end: End | None = None
    # Where everything sent so far ends: the resume point should a send stall.
    sent = (listener.cursor, listener.last_id)
    try:
        async with contextlib.aclosing(listener.run()) as outs:
            async for out in outs:
                if gone.is_set():
                    return
                if isinstance(out, End):
                    end = out
                    break
                if out.kind == KEEPALIVE:
                    continue
                async with asyncio.timeout(stall_s):
                    await socket.send(_ws_event(out.data, out.kind == AUDIO))
                sent = (listener.cursor, listener.last_id)
        # Granian drops a close while a receive is pending: stop the reader first.
        await stop_task(reader)
        if end is not None and not gone.is_set():
            with contextlib.suppress(TimeoutError):  # queued behind unread data: let go
                await _close(socket, end, stall_s)
    except TimeoutError:
        log.info("listener of %s stalled for %gs: dropping it", listener.session_id, stall_s)
        await stop_task(reader)
        # The peer reads nothing: error and close wait behind what it has not read (it
        # gets them if it reads on). Asking for the close is also what makes Granian
        # let go of the connection once this handler returns.
        from_seq, last_id = sent
        stalled = End(
            4429,
            "stalled",
            f"listener took no data for {stall_s:g} s; resume with"
            f" from_seq={from_seq}&last_event_id={last_id}",
            {"from_seq": from_seq, "last_event_id": last_id},
        )
        with contextlib.suppress(TimeoutError):
            await _close(socket, stalled, 1.0)
    except OSError:  # the peer vanished mid-send
        pass
    finally:
        await stop_task(reader)


async def _close(socket: WebSocket[Any, Any, Any], end: End, within_s: float) -> None:
    """Send ``error`` (for 4xxx) and close; each step gets ``within_s`` (TimeoutError)."""
    if end.code >= 4000:
        error = orjson.dumps({"type": "error", **_error_fields(end)})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await socket.send(_ws_event(error, False))
    async with asyncio.timeout(within_s):
        await socket.close(end.code, end.message.encode()[:123].decode(errors="ignore"))


async def _read_controls(
    socket: WebSocket[Any, Any, Any], listener: Listener, gone: asyncio.Event
) -> None:
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            gone.set()
            listener.finish(End(1000, "closed", "the listener left"))
            return
        text = cast("str | None", message.get("text"))
        control: object = None
        if text is not None:
            with contextlib.suppress(orjson.JSONDecodeError):
                control = orjson.loads(text)
        if not isinstance(control, dict) or control.get("type") != "ping":
            listener.finish(End(4400, "bad_control", "listeners send only ping messages"))
            return
        listener.pong(control.get("t"))
