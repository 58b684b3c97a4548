"""``GET /v1/twilio/stream``: Twilio Media Streams into a session (docs/clients.md).

Twilio can send neither an Authorization header nor a query string, so the
handler accepts the upgrade, reads Twilio's ``connected`` and ``start``, and
authenticates from them:

- ``start.customParameters.session_id`` and ``.token``: a stream token the
  backend minted for that session when it answered the call (``<Parameter>``
  elements of ``<Stream>``), consumed as any stream token is;
- otherwise, with ``VOXGATE_TWILIO_AUTH_TOKEN`` set, the upgrade's
  ``X-Twilio-Signature`` for the stream URL (rebuilt from ``VOXGATE_PUBLIC_URL``
  or the Host header): then voxgate creates one mu-law session per call, with
  ``callSid``, ``streamSid`` and the custom parameters as metadata.

Anything else closes with a 44xx code and stores nothing. The call is then
served by the same :class:`StreamConnection` as every stream, through a
:class:`~voxgate.ingest.twilio.TwilioChannel` that translates Twilio's messages.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from litestar import WebSocket, websocket
from litestar.types import Send

from voxgate import logs, metrics, wire
from voxgate.api.auth import origin_allowed
from voxgate.api.stream import claim, raw_channel, start_connection, stream_limits
from voxgate.ingest.stream import Close
from voxgate.ingest.twilio import TwilioChannel, TwilioStart, read_start, signature_valid
from voxgate.settings import Settings
from voxgate.store.base import Session, StoreError
from voxgate.tokens.base import TokenStoreError

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

log = logging.getLogger("voxgate.twilio")
events = logs.get("voxgate.twilio")

SIGNATURE_HEADER = "x-twilio-signature"
#: The codec, rate and channels of every Twilio stream.
TWILIO_CODEC = "mulaw"
TWILIO_SAMPLE_RATE = 8000


def stream_url(socket: WebSocket[Any, Any, Any], settings: Settings) -> str:
    """The URL Twilio connected to, as it signs it: ``VOXGATE_PUBLIC_URL`` (or the
    Host header) with this request's path and query string."""
    path = socket.scope.get("raw_path") or socket.scope["path"].encode()
    target = path.decode("latin-1") if isinstance(path, bytes) else str(path)
    query = socket.scope.get("query_string", b"")
    if query:
        target += "?" + query.decode("latin-1")
    if settings.public_url:
        return settings.public_url.rstrip("/") + target
    scheme = "wss" if socket.scope.get("scheme") in ("wss", "https") else "ws"
    host = socket.headers.get("host", "")
    return f"{scheme}://{host}{target}"


async def _session_for(
    socket: WebSocket[Any, Any, Any], runtime: Runtime, start: TwilioStart
) -> Session:
    """The session this call streams into; raises :class:`Close` when it has none."""
    settings = runtime.settings
    params = start.custom_parameters
    session_id = params.get("session_id")
    token = params.get("token")
    if session_id and token:
        try:
            token_session = await runtime.tokens.consume(token)
        except TokenStoreError as exc:
            log.error("token store unavailable: %s", exc)
            raise Close(1013, "token_store_unavailable", "token store unavailable") from exc
        if token_session is None:
            raise Close(4401, "unauthorized", "invalid, expired or already used stream token")
        if token_session != session_id:
            raise Close(4403, "forbidden", "stream token is for another session")
        session = await runtime.store.get_session(session_id)
        if session is None:
            raise Close(4404, "not_found", "unknown session")
        if session.codec not in (None, TWILIO_CODEC):
            raise Close(4400, "codec", f"session codec is {session.codec}; Twilio streams mulaw")
        return session
    if not settings.twilio_auth_token:
        raise Close(
            4401,
            "unauthorized",
            "no session_id and token custom parameters (and signed streams are not enabled)",
        )
    signature = socket.headers.get(SIGNATURE_HEADER)
    if signature is None:
        raise Close(4401, "unauthorized", "no X-Twilio-Signature and no stream token")
    if not signature_valid(settings.twilio_auth_token, stream_url(socket, settings), signature):
        raise Close(4403, "bad_signature", "X-Twilio-Signature does not match this stream URL")
    session = await runtime.store.create_session(
        codec=TWILIO_CODEC,
        sample_rate=TWILIO_SAMPLE_RATE,
        channels=1,
        metadata={
            "callSid": start.call_sid,
            "streamSid": start.stream_sid,
            # A stray stream token is a credential, not metadata.
            "customParameters": {k: v for k, v in params.items() if k != "token"},
        },
    )
    events.info("twilio.session", session_id=session.id, call_sid=start.call_sid)
    return session


async def refuse(send: Send, close: Close, call_sid: str | None) -> None:
    """Close a call's socket with ``close``: an error log line, no JSON error message
    (Twilio reads none), the code and reason on the close frame."""
    metrics.STREAM_CLOSES.labels(str(close.code), "server").inc()
    events.error(
        "twilio.refused",
        code=close.code,
        error=close.error,
        message=close.message,
        call_sid=call_sid,
    )
    reason = close.message.encode()[: wire.MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
    with contextlib.suppress(OSError, Exception):
        await send({"type": "websocket.close", "code": close.code, "reason": reason})


@websocket("/v1/twilio/stream", name="twilio_stream")
async def twilio_stream(socket: WebSocket[Any, Any, Any]) -> None:
    """Twilio Media Streams (``<Connect><Stream>`` or ``<Start><Stream>``) into a session."""
    runtime: Runtime = socket.app.state.runtime
    settings = runtime.settings
    limits = stream_limits(settings)
    await socket.accept()
    receive, send = raw_channel(socket)
    start: TwilioStart | None = None
    try:
        if runtime.draining:
            raise Close(1013, "draining", "server is shutting down")
        if not origin_allowed(socket.headers.get("origin"), settings.cors_origins):
            raise Close(4403, "origin", "Origin not allowed")
        if len(runtime.streams) >= settings.max_streams:
            raise Close(4429, "too_many_streams", "too many open streams, retry later")
        start = await read_start(receive, limits)
        if start is None:
            return  # Twilio hung up before start
        session = await _session_for(socket, runtime, start)
        session, generation, missing = await claim(runtime, session)
    except Close as close:
        await refuse(send, close, start.call_sid if start is not None else None)
        return
    except StoreError as exc:
        log.error("store unavailable at Twilio stream open: %s", exc)
        unavailable = Close(1013, "store_unavailable", "storage unavailable")
        await refuse(send, unavailable, start.call_sid if start is not None else None)
        return
    channel = TwilioChannel(receive, send, start, limits, session.id)
    conn = start_connection(runtime, session, generation, channel.receive, channel.send, limits)
    channel.attach(conn)
    events.info(
        "twilio.open",
        session_id=session.id,
        call_sid=start.call_sid,
        stream_sid=start.stream_sid,
        generation=generation,
    )
    await conn.run(missing)
