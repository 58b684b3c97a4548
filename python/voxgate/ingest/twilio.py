"""Twilio Media Streams presented to a :class:`~voxgate.ingest.stream.StreamConnection`.

Twilio speaks its own protocol on the WebSocket: JSON text messages ``connected``,
``start``, ``media``, ``mark``, ``dtmf`` and ``stop`` (docs/clients.md). Rather than
a second ingest path, :class:`TwilioChannel` translates the socket's ASGI
``receive`` and ``send`` so that the one :class:`StreamConnection` serves the call:

- each ``media`` message becomes one binary message holding one voxgate frame:
  seq ``chunk - 1``, the base64-decoded mu-law bytes as payload, pts
  ``timestamp`` ms; ``stop`` becomes an empty END frame after the last chunk;
- ``connected``, ``mark`` and ``dtmf`` are logged and counted, not passed on
  (a ``mark`` from Twilio confirms playback of a mark the server sent; voxgate
  plays nothing, so it sends none and has nothing to echo);
- voxgate's ``hello``, ``ack``, ``nack``, ``complete`` and ``error`` are not for
  Twilio: they are logged and counted; a close goes through.

Faults in what Twilio sends (malformed JSON, bad base64, a track other than
inbound, an oversize payload, a second ``start``) close the stream with a 4400
or 1009 code; frames stored before stay stored. The module also validates the
``X-Twilio-Signature`` of the upgrade request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

import orjson
from litestar.types import Message, Receive, ReceiveMessage, Send
from prometheus_client import Counter

from voxgate import logs
from voxgate._native import encode_frame
from voxgate.ingest.stream import Close, StreamLimits

if TYPE_CHECKING:
    from voxgate.ingest.stream import StreamConnection

log = logging.getLogger("voxgate.twilio")
events = logs.get("voxgate.twilio")

TWILIO_MESSAGES = Counter(
    "voxgate_twilio_messages", "Messages received from Twilio Media Streams, by event", ["event"]
)
TWILIO_REPLIES_HELD = Counter(
    "voxgate_twilio_replies_held",
    "voxgate control messages not sent to Twilio (it does not read them), by type",
    ["type"],
)
_KNOWN_EVENTS = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})
_HELD_TYPES = frozenset({"hello", "ack", "nack", "complete", "error", "pong"})

#: The one media format Twilio streams: 8 kHz mono mu-law.
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
#: Bounds of what a ``start`` may carry (Twilio limits custom parameters far below them).
MAX_CUSTOM_PARAMETERS = 64
MAX_PARAMETER_CHARS = 1024
# Messages taken before start (Twilio sends one: connected).
_MAX_BEFORE_START = 8
# JSON around a media payload's base64 (event, sequenceNumber, streamSid, media fields).
_MEDIA_OVERHEAD_BYTES = 1024


def bad_message(message: str, error: str = "bad_message") -> Close:
    return Close(4400, error, message)


@dataclass(frozen=True, slots=True)
class TwilioStart:
    """What a ``start`` message says about the stream."""

    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: list[str]
    custom_parameters: dict[str, str] = field(default_factory=dict)


def max_text_bytes(limits: StreamLimits) -> int:
    """The largest Twilio text message taken: a media message with a maximal payload."""
    return 4 * -(-limits.max_frame_bytes // 3) + _MEDIA_OVERHEAD_BYTES


def parse_message(message: Mapping[str, Any], limits: StreamLimits) -> dict[str, Any]:
    """The JSON object of a received WebSocket message; raises :class:`Close` for anything else."""
    text = message.get("text")
    if not isinstance(text, str):
        raise bad_message("Twilio Media Streams messages are JSON text, got a binary message")
    if len(text) > max_text_bytes(limits):
        raise Close(1009, "message_too_big", f"message above {max_text_bytes(limits)} bytes")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise bad_message("message is not valid JSON") from None
    if not isinstance(value, dict) or not isinstance(value.get("event"), str):
        raise bad_message("message is not a JSON object with a string event")
    return value


def _string(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_PARAMETER_CHARS:
        raise bad_message(f"{what} must be a non-empty string")
    return value


def parse_start(message: Mapping[str, Any]) -> TwilioStart:
    """The ``start`` message's stream metadata; raises :class:`Close` when it is malformed
    or the media format is not 8 kHz mono mu-law."""
    start = message.get("start")
    if not isinstance(start, dict):
        raise bad_message("start message without a start object")
    media_format = start.get("mediaFormat")
    if media_format != MEDIA_FORMAT:
        raise bad_message(
            f"start.mediaFormat must be {orjson.dumps(MEDIA_FORMAT).decode()}, got "
            f"{orjson.dumps(media_format).decode()[:200]}",
            "media_format",
        )
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise bad_message("start.tracks must be a list of strings")
    params = start.get("customParameters") or {}
    if not isinstance(params, dict) or len(params) > MAX_CUSTOM_PARAMETERS:
        raise bad_message(
            f"start.customParameters must be an object of at most {MAX_CUSTOM_PARAMETERS} strings"
        )
    custom: dict[str, str] = {}
    for name, value in params.items():
        if not isinstance(value, str) or len(name) + len(value) > MAX_PARAMETER_CHARS:
            raise bad_message(f"start.customParameters.{name[:64]} must be a short string")
        custom[name] = value
    stream_sid = message.get("streamSid", start.get("streamSid"))
    return TwilioStart(
        stream_sid=_string(stream_sid, "start.streamSid"),
        call_sid=_string(start.get("callSid"), "start.callSid"),
        account_sid=str(start.get("accountSid") or "")[:MAX_PARAMETER_CHARS],
        tracks=tracks[:8],
        custom_parameters=custom,
    )


async def read_start(receive: Receive, limits: StreamLimits) -> TwilioStart | None:
    """Read up to and including the ``start`` message; None when the client went away.

    ``connected`` is skipped (a few times at most); anything else before ``start``
    closes with 4400 (``media_before_start`` for media), silence for
    ``idle_timeout_s`` with 4408.
    """
    for _ in range(_MAX_BEFORE_START):
        try:
            async with asyncio.timeout(limits.idle_timeout_s):
                message = await receive()
        except TimeoutError:
            raise Close(4408, "idle", "no start message from Twilio") from None
        if message["type"] != "websocket.receive":
            return None
        value = parse_message(message, limits)
        event = value["event"]
        TWILIO_MESSAGES.labels(event if event in _KNOWN_EVENTS else "other").inc()
        if event == "connected":
            continue
        if event == "start":
            return parse_start(value)
        if event == "media":
            raise bad_message("media before start", "media_before_start")
        raise bad_message(f"{event[:32]} before start", "before_start")
    raise bad_message(f"no start within {_MAX_BEFORE_START} messages", "before_start")


def decode_media(media: object, max_frame_bytes: int) -> tuple[int, int, bytes]:
    """``(seq, pts_us, payload)`` of a ``media`` object; raises :class:`Close` when malformed."""
    if not isinstance(media, dict):
        raise bad_message("media message without a media object")
    track = media.get("track", "inbound")
    if track != "inbound":
        raise bad_message(
            f"media.track {str(track)[:32]!r}: only the inbound track is stored", "bad_track"
        )
    try:
        chunk = int(media["chunk"])
        timestamp = int(media.get("timestamp", 0))
    except (KeyError, TypeError, ValueError):
        raise bad_message("media.chunk and media.timestamp must be integers") from None
    if not 1 <= chunk <= 0xFFFF_FFFF or not 0 <= timestamp <= 0xFFFF_FFFF_FFFF:
        raise bad_message("media.chunk must count from 1 and media.timestamp be at least 0")
    payload_b64 = media.get("payload")
    if not isinstance(payload_b64, str):
        raise bad_message("media.payload must be a base64 string", "bad_payload")
    if len(payload_b64) > 4 * -(-max_frame_bytes // 3):
        raise Close(1009, "message_too_big", f"media payload above {max_frame_bytes} bytes")
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        raise bad_message("media.payload is not valid base64", "bad_payload") from None
    if not payload:
        raise bad_message("media.payload is empty", "bad_payload")
    if len(payload) > max_frame_bytes:
        raise Close(1009, "message_too_big", f"media payload above {max_frame_bytes} bytes")
    return chunk - 1, timestamp * 1000, payload


class TwilioChannel:
    """The ASGI ``receive`` and ``send`` of a Twilio socket, as a voxgate stream sees them.

    Build it after :func:`read_start`, pass :meth:`receive` and :meth:`send` to the
    :class:`StreamConnection`, then :meth:`attach` that connection (so that a fault
    or the stream's completion can end it).
    """

    def __init__(
        self,
        receive: Receive,
        send: Send,
        start: TwilioStart,
        limits: StreamLimits,
        session_id: str,
    ) -> None:
        self._receive = receive
        self._send = send
        self._limits = limits
        self.start = start
        self.session_id = session_id
        self._conn: StreamConnection | None = None
        self.next_seq = 0  # one past the highest chunk seen
        self.stopped = False
        self.dtmf: list[str] = []

    def attach(self, conn: StreamConnection) -> None:
        self._conn = conn

    async def _fail(self, close: Close) -> ReceiveMessage:
        """Hand ``close`` to the connection and wait to be cancelled (its reader stops)."""
        events.error(
            "twilio.refused",
            session_id=self.session_id,
            call_sid=self.start.call_sid,
            code=close.code,
            error=close.error,
            message=close.message,
        )
        assert self._conn is not None, "attach() the connection before it reads"
        self._conn.fail(close)
        await asyncio.Event().wait()  # cancelled by the connection's close
        raise AssertionError("unreachable")

    async def receive(self) -> ReceiveMessage:
        """The next message for the connection: a frame, or the socket's disconnect."""
        while True:
            message = await self._receive()
            if message["type"] != "websocket.receive":
                return message
            try:
                frame = self._translate(parse_message(message, self._limits))
            except Close as close:
                return await self._fail(close)
            if frame is not None:
                return {"type": "websocket.receive", "bytes": frame, "text": None}

    def _translate(self, value: dict[str, Any]) -> bytes | None:
        """The frame a Twilio message becomes, or None for one that carries no audio."""
        event = value["event"]
        TWILIO_MESSAGES.labels(event if event in _KNOWN_EVENTS else "other").inc()
        if event == "media":
            if self.stopped:
                raise bad_message("media after stop")
            seq, pts_us, payload = decode_media(value.get("media"), self._limits.max_frame_bytes)
            self.next_seq = max(self.next_seq, seq + 1)
            return encode_frame(seq, payload, pts_us=pts_us)
        if event == "stop":
            if self.stopped:
                return None
            self.stopped = True
            events.info(
                "twilio.stop",
                session_id=self.session_id,
                call_sid=self.start.call_sid,
                end_seq=self.next_seq,
            )
            return encode_frame(self.next_seq, b"", end=True)
        if event == "dtmf":
            dtmf = value.get("dtmf")
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
            if len(self.dtmf) < 1024 and isinstance(digit, str):
                self.dtmf.append(digit[:4])
            events.info(
                "twilio.dtmf",
                session_id=self.session_id,
                call_sid=self.start.call_sid,
                digit=str(digit)[:4],
            )
            return None
        if event == "mark":
            # Confirms playback of a mark the server sent; voxgate sends none.
            mark = value.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            events.debug("twilio.mark", session_id=self.session_id, name=str(name)[:64])
            return None
        if event == "start":
            raise bad_message("a second start on one stream")
        # connected again, or an event Twilio added later: nothing to store.
        return None

    async def send(self, message: Message) -> None:
        """Pass a close on; keep voxgate's control messages from Twilio (log them)."""
        if message["type"] != "websocket.send":
            await self._send(message)
            return
        text = message.get("text")
        try:
            control = orjson.loads(text) if text is not None else {}
        except orjson.JSONDecodeError:
            control = {}
        kind = str(cast(dict[str, Any], control).get("type", "other"))
        TWILIO_REPLIES_HELD.labels(kind if kind in _HELD_TYPES else "other").inc()
        if kind == "nack":
            # Twilio does not resend: these frames are lost unless sent another way.
            events.warning(
                "twilio.nack",
                session_id=self.session_id,
                call_sid=self.start.call_sid,
                reason=control.get("reason"),
                ranges=control.get("ranges"),
            )
        elif kind == "error":
            events.error(
                "twilio.error",
                session_id=self.session_id,
                call_sid=self.start.call_sid,
                code=control.get("code"),
                message=control.get("message"),
            )
        elif kind == "complete":
            events.info(
                "twilio.complete",
                session_id=self.session_id,
                call_sid=self.start.call_sid,
                frames=control.get("frames"),
                bytes=control.get("bytes"),
            )
            if self.stopped and self._conn is not None:
                self._conn.fail(Close(1000, "complete", "call ended, session complete"))


# --- X-Twilio-Signature ---------------------------------------------------------------


def compute_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Twilio's request signature: base64 HMAC-SHA1 of the URL followed by each POST
    parameter's name and value, sorted by name, keyed with the account's auth token."""
    data = url + "".join(name + value for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> list[str]:
    """``url`` as given, without its port and with its scheme's default port, for ws(s)
    and http(s) alike: the URL a proxy or Twilio's own libraries sign differs in these."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    out: list[str] = []
    for scheme in {
        parts.scheme,
        {"ws": "http", "wss": "https", "http": "ws", "https": "wss"}.get(
            parts.scheme, parts.scheme
        ),
    }:
        default_port = 443 if scheme in ("https", "wss") else 80
        for netloc in (parts.netloc, host, f"{host}:{parts.port or default_port}"):
            out.append(urlunsplit((scheme, netloc, parts.path, parts.query, "")))
    return list(dict.fromkeys(out))


def signature_valid(
    auth_token: str, url: str, signature: str | None, params: Mapping[str, str] | None = None
) -> bool:
    """Whether ``signature`` is Twilio's for ``url`` (and ``params``), compared in constant time."""
    if not auth_token or not signature:
        return False
    return any(
        hmac.compare_digest(compute_signature(auth_token, variant, params), signature)
        for variant in _url_variants(url)
    )
