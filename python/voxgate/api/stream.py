"""``GET /v1/sessions/{id}/stream``: the WebSocket handshake of the primary ingest transport.

The handler checks the token, the session and the limits, claims the
session's stream, and hands the socket's ASGI ``receive`` and ``send`` to a
:class:`~voxgate.ingest.stream.StreamConnection`, which serves the stream.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

from litestar import WebSocket, websocket
from litestar.params import FromPath
from litestar.types import Receive, Send

from voxgate import logs, metrics, wire
from voxgate.api.auth import auth_failed, bearer, origin_allowed, refuse_if_blocked
from voxgate.errors import ApiError
from voxgate.ingest.stream import Close, StreamConnection, StreamLimits, send_close
from voxgate.rates import SESSION_CONNECTS
from voxgate.scope import RAW_CHANNEL
from voxgate.settings import Settings
from voxgate.store.base import Session, SessionState, StoreError, Tier
from voxgate.tokens.base import TokenStoreError

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

log = logging.getLogger("voxgate.stream")
events = logs.get("voxgate.stream")

SUBPROTOCOL = wire.SUBPROTOCOL
TOKEN_SUBPROTOCOL_PREFIX = wire.TOKEN_SUBPROTOCOL_PREFIX
# Control (text) messages are small JSON objects; anything larger is refused with 1009.
MAX_CONTROL_BYTES = 4096


def stream_limits(settings: Settings) -> StreamLimits:
    return StreamLimits(
        max_message_bytes=settings.max_message_bytes,
        max_frame_bytes=settings.max_frame_bytes,
        max_seq_ahead=settings.max_seq_ahead,
        max_control_bytes=MAX_CONTROL_BYTES,
        idle_timeout_s=settings.idle_timeout_s,
        send_timeout_s=settings.listen_stall_timeout_s,
    )


def credentials(socket: WebSocket[Any, Any, Any]) -> tuple[str | None, bool]:
    """The token from header, subprotocol or query, and whether voxgate.v1 was offered."""
    offered: list[str] = list(socket.scope.get("subprotocols") or [])
    token = bearer(socket.headers.get("authorization"))
    for proto in offered:
        if token is None and proto.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            token = proto[len(TOKEN_SUBPROTOCOL_PREFIX) :] or None
    if token is None:
        query = parse_qs(socket.scope.get("query_string", b"").decode(errors="replace"))
        values = query.get("token")
        token = values[0] if values else None
    return token, SUBPROTOCOL in offered


async def reject(socket: WebSocket[Any, Any, Any], close: Close) -> None:
    """Refuse an accepted socket: ``error``, then the close code."""
    metrics.STREAM_CLOSES.labels(str(close.code), "server").inc()
    events.info("stream.refused", code=close.code, error=close.error)
    with contextlib.suppress(OSError, Exception):
        await send_close(socket.send, close, with_error=True)


def raw_channel(socket: WebSocket[Any, Any, Any]) -> tuple[Receive, Send]:
    """The server's own ASGI receive and send when the outermost layer kept them (it does
    in production): one call each per message instead of three nested wrappers."""
    raw = cast("tuple[Receive, Send] | None", socket.scope.get(RAW_CHANNEL))
    return raw or (socket.receive, socket.send)


async def claim(runtime: Runtime, session: Session) -> tuple[Session, int, list[list[int]]]:
    """Check that ``session`` takes a stream now and claim it (superseding any older one):
    the session as it is after the claim, the claim's generation and its gaps. Raises
    :class:`Close` (gone, rate limited) and StoreError."""
    if session.state is SessionState.DELETED:
        raise Close(4410, "gone", "session deleted: it no longer accepts frames")
    if session.tier is not Tier.HOT:
        raise Close(4410, "gone", f"session archived ({session.tier}): it takes no frames")
    connects = await runtime.limits.check(SESSION_CONNECTS, session.id)
    if connects is not None and not connects.allowed:
        raise Close(
            4429,
            "rate_limited",
            f"too many connections to this session, retry in {math.ceil(connects.retry_after_s)} s",
        )
    generation = await runtime.store.claim_stream(session.id)
    # Re-read after claiming so no commit of an older stream slips between.
    session = await runtime.store.get_session(session.id) or session
    return session, generation, await runtime.store.missing(session.id)


def start_connection(
    runtime: Runtime,
    session: Session,
    generation: int,
    receive: Receive,
    send: Send,
    limits: StreamLimits,
) -> StreamConnection:
    """The claimed session's StreamConnection, registered; its ``run`` serves the stream."""
    conn = StreamConnection(
        session_id=session.id,
        generation=generation,
        receive=receive,
        send=send,
        writer=runtime.writer,
        ledger=runtime.ledger,
        registry=runtime.streams,
        limits=limits,
        next_seq=session.next_seq,
        end_seq=session.end_seq,
    )
    if session.state is SessionState.COMPLETE and session.end_seq is not None:
        conn.set_complete(
            session.end_seq, session.frames, session.bytes, session.stream_crc32c or 0
        )
    runtime.streams.register(conn)
    metrics.ACTIVE_STREAMS.inc()
    return conn


@websocket("/v1/sessions/{session_id:str}/stream", name="stream")
async def stream(socket: WebSocket[Any, Any, Any], session_id: FromPath[str]) -> None:
    """Stream audio frames into a session: the primary ingest transport."""
    runtime: Runtime = socket.app.state.runtime
    settings = runtime.settings
    token, offered_v1 = credentials(socket)
    await socket.accept(subprotocols=SUBPROTOCOL if offered_v1 else None)
    try:
        if runtime.draining:
            raise Close(1013, "draining", "server is shutting down, reconnect")
        if not origin_allowed(socket.headers.get("origin"), settings.cors_origins):
            raise Close(4403, "origin", "Origin not allowed")
        if token is None:
            raise Close(4401, "unauthorized", "missing stream token")
        if len(runtime.streams) >= settings.max_streams:
            raise Close(4429, "too_many_streams", "too many open streams, retry later")
        # An address over its failed-authentication limit is refused before its token
        # is looked at (or used up), like every credential-taking route.
        await refuse_if_blocked(socket)
        try:
            token_session = await runtime.tokens.consume(token)
        except TokenStoreError as exc:
            log.error("token store unavailable: %s", exc)
            raise Close(1013, "token_store_unavailable", "token store unavailable") from exc
        if token_session is None:
            await auth_failed(socket)
            raise Close(4401, "unauthorized", "invalid, expired or already used stream token")
        session = await runtime.store.get_session(session_id)
        if session is None:
            raise Close(4404, "not_found", "unknown session")
        if token_session != session_id:
            raise Close(4403, "forbidden", "stream token is for another session")
        session, generation, missing = await claim(runtime, session)
    except Close as close:
        await reject(socket, close)
        return
    except ApiError as exc:  # too many failed authentications from this address
        await reject(socket, Close(4429, exc.code, exc.detail))
        return
    except StoreError as exc:
        log.error("store unavailable at stream open: %s", exc)
        await reject(socket, Close(1013, "store_unavailable", "storage unavailable"))
        return
    receive, send = raw_channel(socket)
    conn = start_connection(runtime, session, generation, receive, send, stream_limits(settings))
    events.info(
        "stream.open",
        session_id=session_id,
        generation=generation,
        next_seq=session.next_seq,
        missing=len(missing),
        state=str(session.state),
    )
    await conn.run(missing)
