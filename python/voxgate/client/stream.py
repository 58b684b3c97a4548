"""The WebSocket streaming client (docs/protocol.md: the stream, its messages, credit, close codes).

One :class:`StreamClient` streams one session. It numbers frames 0, 1, 2...,
keeps every frame until the server acks it, never has more unacked payload
bytes on the wire than the server's credit window, reconnects with backoff
when the connection drops and resends exactly what the server's ``hello``
reports as missing, and proves end-to-end integrity by comparing the
server's ``stream_crc32c`` with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import importlib.metadata
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol

from voxgate import _native
from voxgate.client.api import TokenFactory as TokenFactory
from voxgate.client.errors import (
    ApiError,
    IntegrityError,
    ReconnectExhausted,
    StreamClosed,
    StreamError,
    StreamRejected,
    Superseded,
)
from voxgate.ranges import contains
from voxgate.wire import (
    FLAG_END,
    HEADER_SIZE,
    SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    CloseCode,
    MessageType,
    NackReason,
)

log = logging.getLogger("voxgate.client")


# Close codes (docs/protocol.md) after which the client reconnects with backoff; 1006
# (connection lost), 1012 and 1014 are RFC 6455 codes a proxy or the network may produce.
RECONNECT_CODES = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        1006,
        CloseCode.INTERNAL_ERROR,
        1012,
        CloseCode.TRY_AGAIN_LATER,
        1014,
        CloseCode.IDLE,
    }
)
# Close codes after which a new token may fix things: retried within the budget.
RETRY_WITH_NEW_TOKEN_CODES = frozenset({CloseCode.UNAUTHORIZED, CloseCode.TOO_MANY})
SUPERSEDED_CODE = CloseCode.SUPERSEDED
# HTTP statuses of a refused upgrade that are worth retrying.
RETRY_HTTP_STATUSES = frozenset({401, 408, 429, 500, 502, 503, 504})

_WS_PROXY_KWARGS: dict[str, Any] = (
    # websockets >= 15 follows proxy environment variables; voxgate streams go direct.
    {"proxy": None} if int(importlib.metadata.version("websockets").split(".")[0]) >= 15 else {}
)


class TokenMode(enum.StrEnum):
    """How the stream token travels with the WebSocket upgrade (docs/protocol.md)."""

    HEADER = "header"  # Authorization: Bearer <token>
    SUBPROTOCOL = "subprotocol"  # Sec-WebSocket-Protocol: voxgate.v1, voxgate.token.<token>
    QUERY = "query"  # ?token=<token>


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect policy: exponential delays with jitter, bounded by attempts and/or time.

    The n-th consecutive failure waits ``min(max_s, initial_s * multiplier**(n-1))``,
    reduced by up to ``jitter`` (a fraction) at random. The count and the clock
    restart once a connection makes progress (acks something, or stays up for
    ``stable_after_s``). ``max_attempts`` None and ``deadline_s`` None retry forever.
    """

    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int | None = 10
    deadline_s: float | None = None
    stable_after_s: float = 10.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failed attempts (``failures >= 1``)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, failures - 1))
        return base * (1.0 - self.jitter * random.random())


@dataclass(slots=True)
class StreamStats:
    """Counters of one :class:`StreamClient`; ``ack_latency_s`` holds send-to-ack samples."""

    frames_sent: int = 0  # distinct frames transmitted at least once
    bytes_sent: int = 0  # payload bytes of those frames
    frames_resent: int = 0  # transmissions after the first, any reason
    messages_sent: int = 0  # binary WebSocket messages
    frames_acked: int = 0  # acked as newly durable
    duplicates: int = 0  # acked as already stored
    acked_on_resume: int = 0  # learned durable from a reconnect's hello
    nacks: dict[str, int] = field(default_factory=dict)  # frames nacked, by reason
    connects: int = 0  # connections that reached hello
    reconnects: int = 0  # connects after the first
    connect_failures: int = 0  # attempts that failed or dropped
    ack_latency_s: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Completion:
    """The server's ``complete`` for a stream, checked against what the client sent."""

    last_seq: int
    frames: int
    bytes: int
    stream_crc32c: int
    verified: bool


@dataclass(slots=True)
class _Frame:
    wire: bytes  # header + payload, ready to send
    length: int  # payload bytes, what the window counts
    sends: int = 0
    sent_at: float = 0.0
    inflight: bool = False  # sent on the current connection, not yet acked or nacked


class _Retry(Exception):
    """One connection failed in a way a later connection may fix."""

    def __init__(self, cause: BaseException, progressed: bool = False) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        self.progressed = progressed


def stream_url(base_url: str, session_id: str, token: str | None = None) -> str:
    """The WebSocket URL of a session's stream from an ``http(s)://`` or ``ws(s)://`` base."""
    parts = urlsplit(base_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = f"{parts.path}/v1/sessions/{quote(session_id, safe='')}/stream"
    query = f"token={quote(token, safe='')}" if token is not None else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def _iter_seqs(ranges: list[list[int]], known: dict[int, _Frame]) -> list[int]:
    """Seqs of ``known`` frames inside ``ranges``, without walking huge ranges seq by seq."""
    out: list[int] = []
    for first, last in ranges:
        if last - first + 1 <= len(known):
            out.extend(seq for seq in range(first, last + 1) if seq in known)
        else:
            out.extend(seq for seq in known if first <= seq <= last)
    return out


class StreamClient:
    """Streams one session's frames over WebSocket, exactly once, across reconnects.

    ``base_url`` is the server root (``http://127.0.0.1:8000``); ``token_factory``
    returns a new single-use stream token per connection (``Api.token_factory``
    or ``lambda: api.mint_token(session_id)`` fit). ``frames_per_message``
    packs up to that many frames into one binary message (within the server's
    ``max_message_bytes``); with ``batch_delay_s`` > 0 a short batch waits that
    long for more frames before going out. ``close_timeout_s`` bounds the
    wait for the server's side of the closing handshake.

    Use :meth:`send` for each payload, :meth:`end` after the last, then
    :meth:`wait_complete`; :meth:`close` (or ``async with``) releases the
    connection. A permanent failure is raised from whichever of these runs next:
    :class:`StreamRejected`, :class:`StreamClosed`, :class:`Superseded`,
    :class:`ReconnectExhausted` or :class:`IntegrityError`.
    """

    def __init__(
        self,
        base_url: str,
        session_id: str,
        token_factory: TokenFactory,
        *,
        token_mode: TokenMode | str = TokenMode.HEADER,
        backoff: Backoff | None = None,
        frames_per_message: int = 1,
        batch_delay_s: float = 0.0,
        open_timeout_s: float = 10.0,
        close_timeout_s: float = 2.0,
        keepalive_s: float | None = 15.0,
        window_retry_s: float = 0.1,
        max_latency_samples: int = 1_000_000,
        origin: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        if frames_per_message < 1:
            raise ValueError("frames_per_message must be at least 1")
        self.base_url = base_url
        self.session_id = session_id
        self.token_mode = TokenMode(token_mode)
        self.backoff = backoff or Backoff()
        self.frames_per_message = frames_per_message
        self.batch_delay_s = batch_delay_s
        self.open_timeout_s = open_timeout_s
        self.close_timeout_s = close_timeout_s
        self.keepalive_s = keepalive_s
        self.window_retry_s = window_retry_s
        self.max_latency_samples = max_latency_samples
        self.origin = origin
        self.extra_headers = dict(extra_headers or {})
        self.stats = StreamStats()
        self._token_factory = token_factory

        # What the client sent: the next seq, and the stream CRC over every payload.
        self._next_seq = 0
        self._crc = 0
        self._total_bytes = 0
        self._end_seq: int | None = None
        self._t0: float | None = None

        # Unacked frames by seq, the seqs waiting to go out (a heap plus its
        # membership set), and frames held back by a window nack.
        self._frames: dict[int, _Frame] = {}
        self._heap: list[int] = []
        self._queued: set[int] = set()
        self._held: set[int] = set()
        self._held_timer: asyncio.TimerHandle | None = None

        # The current connection's credit and limits (from hello and acks).
        self._connected = False
        self._window = 0
        self._inflight = 0
        self._max_frame_bytes: int | None = None
        self._max_message_bytes = 1024 * 1024

        self._completion: dict[str, Any] | None = None
        # First seq given to send() after the server reported complete.
        self._completed_early: int | None = None
        self._failure: StreamError | None = None
        self._closed = False
        self._runner: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- public API ---------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def next_seq(self) -> int:
        """The seq the next :meth:`send` gets."""
        return self._next_seq

    @property
    def unacked(self) -> int:
        """Frames sent or queued that the server has not acked yet."""
        return len(self._frames)

    @property
    def stream_crc32c(self) -> int:
        """CRC-32C of every payload given to :meth:`send` so far, in seq order."""
        return self._crc

    def start(self) -> None:
        """Start connecting in the background (``send`` does it on first use); idempotent."""
        if self._closed:
            raise StreamError("stream client is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def send(self, payload: bytes, pts_us: int | None = None, *, end: bool = False) -> int:
        """Queue one frame with the next seq and return that seq.

        Waits while the frames not yet on the wire fill a message's worth
        (``frames_per_message``): the wire never carries more unacked payload
        bytes than the server's window, so a fast producer is slowed to the
        server's pace. ``pts_us`` defaults to microseconds since the first
        ``send``. ``end`` marks this frame as the stream's last.

        Raises ``ValueError`` for an empty payload without ``end`` or one above
        the server's ``max_frame_bytes``, ``RuntimeError`` after ``end``, and
        the stream's failure (:class:`StreamError`) once it has one.
        """
        if self._end_seq is not None:
            raise RuntimeError("send() after the stream's END frame")
        if not payload and not end:
            raise ValueError("an empty payload is allowed only on the END frame")
        if self._max_frame_bytes is not None and len(payload) > self._max_frame_bytes:
            raise ValueError(
                f"payload of {len(payload)} bytes is above the server's "
                f"max_frame_bytes {self._max_frame_bytes}"
            )
        self.start()
        await self._wait(lambda: len(self._queued) < self.frames_per_message)
        if self._end_seq is not None:  # end() ran while this send waited
            raise RuntimeError("send() after the stream's END frame")
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        if pts_us is None:
            pts_us = int((now - self._t0) * 1_000_000)
        seq = self._next_seq
        wire = _native.encode_frame(seq, payload, pts_us, end)
        frame_crc = int.from_bytes(wire[20:24], "big")
        self._crc = _native.crc32c_combine(self._crc, frame_crc, len(payload))
        self._total_bytes += len(payload)
        self._next_seq = seq + 1
        if end:
            self._end_seq = seq
        if self._completion is None:
            self._frames[seq] = _Frame(wire, len(payload))
            self._enqueue(seq)
            self._notify()
        elif self._completed_early is None:
            # The server already holds the whole session: nothing more goes
            # out, what is "sent" now is only compared in wait_complete.
            self._completed_early = seq
        return seq

    async def end(self) -> int:
        """Mark the end of the stream and return the END frame's seq.

        Flags the last frame when it has not been transmitted yet, otherwise
        sends an empty END frame. Idempotent. Raises the stream's failure.
        """
        if self._end_seq is not None:
            self._raise_failure()
            return self._end_seq
        self._raise_failure()
        self.start()
        last = self._next_seq - 1
        if self._completion is not None and last >= 0:
            # Complete already: the server's END stands, no frame of ours is added.
            self._end_seq = last
            return last
        frame = self._frames.get(last)
        if frame is not None and frame.sends == 0 and last in self._queued:
            # Re-flag the untransmitted last frame: same seq, payload and CRC.
            seq, _flags, pts_us, _length, crc = _header_fields(frame.wire)
            header = _native.encode_header(seq, frame.length, crc, pts_us, FLAG_END)
            frame.wire = header + frame.wire[HEADER_SIZE:]
            self._end_seq = last
            self._notify()
            return last
        return await self.send(b"", end=True)

    async def flush(self) -> None:
        """Wait until the server has acked every frame sent so far; raises the stream's failure."""
        self.start()
        await self._wait(lambda: not self._frames or self._completion is not None)

    async def wait_complete(self, timeout_s: float | None = None) -> Completion:
        """Wait for the server's ``complete`` and check it end to end.

        Compares ``stream_crc32c``, ``frames``, ``bytes`` and ``last_seq`` with
        what this client sent. When the server reported the session complete
        before this client's END (a re-run over a finished session), later
        frames are not transmitted and only ``bytes`` and ``stream_crc32c``
        are compared. Raises :class:`IntegrityError` on any mismatch,
        the stream's failure if it failed first, ``TimeoutError`` after
        ``timeout_s`` seconds, ``RuntimeError`` if :meth:`end` was never called
        and the session is not complete already.
        """
        if self._end_seq is None and self._completion is None:
            raise RuntimeError("call end() before wait_complete()")
        self.start()

        async def completion() -> dict[str, Any]:
            # A failure after `complete` (say a late nack) does not undo it.
            while self._completion is None:
                self._raise_failure()
                if self._closed:
                    raise StreamError("stream client is closed")
                await self._changed.wait()
            return self._completion

        actual = await asyncio.wait_for(completion(), timeout_s)
        expected = {
            "last_seq": self._next_seq - 1,
            "frames": self._next_seq,
            "bytes": self._total_bytes,
            "stream_crc32c": self._crc,
        }
        compared = list(expected)
        if self._completed_early is not None or self._end_seq is None:
            # The server completed before this client's END: the END frame may
            # be an empty one the client never made, so compare content only.
            compared = ["bytes", "stream_crc32c"]
        if any(actual.get(key) != expected[key] for key in compared):
            raise IntegrityError(expected, actual)
        return Completion(
            last_seq=int(actual["last_seq"]),
            frames=int(actual["frames"]),
            bytes=int(actual["bytes"]),
            stream_crc32c=int(actual["stream_crc32c"]),
            verified=True,
        )

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Unacked frames are dropped."""
        self._closed = True
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        runner, self._runner = self._runner, None
        if runner is not None and not runner.done() and self._finished():
            # The stream is over and the runner is closing the connection: let it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(runner), self.close_timeout_s + 1.0)
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._notify()

    # -- shared state -------------------------------------------------------

    def _notify(self) -> None:
        # Broadcast: wake every waiter, each re-checks its own condition.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while True:
            self._raise_failure()
            if ready():
                return
            if self._closed:
                raise StreamError("stream client is closed")
            await self._changed.wait()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _fail(self, error: StreamError) -> None:
        if self._failure is None:
            self._failure = error
        self._notify()

    def _enqueue(self, seq: int) -> None:
        if seq not in self._queued:
            self._queued.add(seq)
            heapq.heappush(self._heap, seq)

    def _finished(self) -> bool:
        return self._failure is not None or self._completion is not None

    # -- connection loop ----------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        outage_start: float | None = None
        try:
            while not self._finished():
                try:
                    await self._connection()
                    failures, outage_start = 0, None
                    continue
                except _Retry as retry:
                    if retry.progressed:
                        failures, outage_start = 0, None
                    error = retry.cause
                self.stats.connect_failures += 1
                failures += 1
                now = time.monotonic()
                outage_start = outage_start if outage_start is not None else now
                delay = self.backoff.delay(failures)
                policy = self.backoff
                if (policy.max_attempts is not None and failures >= policy.max_attempts) or (
                    policy.deadline_s is not None and now + delay - outage_start > policy.deadline_s
                ):
                    raise ReconnectExhausted(failures, error)
                log.info("stream %s: reconnecting in %.2fs after %r", self.session_id, delay, error)
                await asyncio.sleep(delay)
        except StreamError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug here must surface to the caller, not vanish
            log.exception("stream %s: client loop failed", self.session_id)
            self._fail(StreamError(f"stream client failed: {exc!r}"))
        finally:
            self._connected = False
            self._notify()

    async def _token(self) -> str:
        try:
            return await self._token_factory()
        except ApiError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise _Retry(exc) from exc
            raise StreamError(f"could not mint a stream token: {exc}") from exc
        except httpx.TransportError as exc:
            raise _Retry(exc) from exc

    async def _open(self, token: str) -> ClientConnection:
        headers = dict(self.extra_headers)
        subprotocols: list[Subprotocol] | None = None
        url = stream_url(self.base_url, self.session_id)
        if self.token_mode is TokenMode.HEADER:
            headers["Authorization"] = f"Bearer {token}"
        elif self.token_mode is TokenMode.SUBPROTOCOL:
            subprotocols = [
                Subprotocol(SUBPROTOCOL),
                Subprotocol(f"{TOKEN_SUBPROTOCOL_PREFIX}{token}"),
            ]
        else:
            url = stream_url(self.base_url, self.session_id, token)
        try:
            return await connect(
                url,
                additional_headers=headers,
                subprotocols=subprotocols,
                origin=None if self.origin is None else Origin(self.origin),
                compression=None,  # audio does not deflate; spare the CPU
                open_timeout=self.open_timeout_s,
                close_timeout=self.close_timeout_s,
                max_size=self._max_message_bytes,
                **_WS_PROXY_KWARGS,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in RETRY_HTTP_STATUSES:
                raise _Retry(exc) from exc
            detail = f"upgrade refused with HTTP {status}"
            raise StreamClosed(status, "http_status", detail) from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Retry(exc) from exc

    async def _connection(self) -> None:
        """One connection, from token to close; returns once the stream is finished."""
        token = await self._token()
        ws = await self._open(token)
        progressed = False
        opened_at = time.monotonic()
        last_error: dict[str, Any] = {}
        tasks: list[asyncio.Task[None]] = []
        try:
            hello = await self._read_hello(ws, last_error)
            self._apply_hello(hello)
            self.stats.connects += 1
            if self.stats.connects > 1:
                self.stats.reconnects += 1
            loop = asyncio.get_running_loop()
            tasks.append(loop.create_task(self._write_loop(ws)))
            if self.keepalive_s:
                tasks.append(loop.create_task(self._keepalive(ws, self.keepalive_s)))
            while not self._finished():
                message = await ws.recv()
                if isinstance(message, str):
                    progressed |= self._handle(orjson.loads(message), last_error)
            await ws.close()
        except TimeoutError as exc:  # no hello in time
            raise _Retry(exc) from exc
        except ConnectionClosed as exc:
            if self._finished():
                return
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            stable = time.monotonic() - opened_at >= self.backoff.stable_after_s
            self._classify_close(code, last_error, exc, progressed or stable)
        finally:
            self._connected = False
            self._inflight = 0
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task
            if ws.state is not State.CLOSED:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)
            self._notify()

    async def _read_hello(self, ws: ClientConnection, last_error: dict[str, Any]) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(ws.recv(), self.open_timeout_s)
            if isinstance(message, bytes):
                continue
            parsed: dict[str, Any] = orjson.loads(message)
            if parsed.get("type") == MessageType.HELLO:
                return parsed
            if parsed.get("type") == MessageType.ERROR:
                last_error.update(parsed)

    def _classify_close(
        self, code: int, last_error: dict[str, Any], exc: BaseException, progressed: bool
    ) -> None:
        error_code = str(last_error.get("code", ""))
        message = str(last_error.get("message", "")) or (
            exc.rcvd.reason if isinstance(exc, ConnectionClosed) and exc.rcvd else ""
        )
        if code == SUPERSEDED_CODE:
            raise Superseded(code, error_code or "superseded", message)
        if code in RECONNECT_CODES or code in RETRY_WITH_NEW_TOKEN_CODES:
            raise _Retry(StreamClosed(code, error_code, message), progressed)
        if 1000 <= code < 4000 and code not in (1002, 1003, 1007, 1008, 1009, 1010):
            raise _Retry(StreamClosed(code, error_code, message), progressed)
        raise StreamClosed(code, error_code, message)

    def _apply_hello(self, hello: dict[str, Any]) -> None:
        next_seq = int(hello["next_seq"])
        missing: list[list[int]] = [list(r) for r in hello.get("missing", [])]
        self._window = int(hello["window_bytes"])
        self._max_frame_bytes = int(hello["max_frame_bytes"])
        self._max_message_bytes = int(hello["max_message_bytes"])
        self._inflight = 0
        self._heap.clear()
        self._queued.clear()
        self._held.clear()
        # A seq the server misses that this client no longer holds was acked
        # once and then lost: resending is impossible, so say so loudly.
        for first, last in missing:
            last = min(last, self._next_seq - 1)
            if last < first:
                continue
            if last - first + 1 > len(self._frames) or any(
                seq not in self._frames for seq in range(first, last + 1)
            ):
                raise StreamError(
                    f"server reports seqs in [{first}, {last}] missing that it acked earlier"
                )
        for seq in list(self._frames):
            frame = self._frames[seq]
            frame.inflight = False
            if seq >= next_seq or contains(missing, seq):
                self._enqueue(seq)
            else:
                del self._frames[seq]
                self.stats.acked_on_resume += 1
        self._connected = True
        self._notify()

    # -- incoming control messages ------------------------------------------

    def _handle(self, message: dict[str, Any], last_error: dict[str, Any]) -> bool:
        """Apply one control message; True when it showed progress (frames acked)."""
        kind = message.get("type")
        if kind == MessageType.ACK:
            done = self._settle(message.get("acked", []), duplicate=False)
            done += self._settle(message.get("duplicate", []), duplicate=True)
            if "window_bytes" in message:
                self._window = int(message["window_bytes"])
            self._release_held()
            self._notify()
            return done > 0
        if kind == MessageType.NACK:
            self._nack(message.get("ranges", []), str(message.get("reason", "")))
            return False
        if kind == MessageType.COMPLETE:
            self._completion = message
            for seq in list(self._frames):
                self._frames.pop(seq)
            self._queued.clear()
            self._heap.clear()
            self._held.clear()
            self._notify()
            return True
        if kind == MessageType.ERROR:
            last_error.update(message)
        return False

    def _settle(self, ranges: list[list[int]], *, duplicate: bool) -> int:
        now = time.monotonic()
        samples = self.stats.ack_latency_s
        settled = 0
        for seq in _iter_seqs(ranges, self._frames):
            frame = self._frames.pop(seq)
            self._queued.discard(seq)
            self._held.discard(seq)
            if frame.inflight:
                self._inflight -= frame.length
                if len(samples) < self.max_latency_samples:
                    samples.append(now - frame.sent_at)
            settled += 1
        if duplicate:
            self.stats.duplicates += settled
        else:
            self.stats.frames_acked += settled
        return settled

    def _nack(self, ranges: list[list[int]], reason: str) -> None:
        seqs = _iter_seqs(ranges, self._frames)
        self.stats.nacks[reason] = self.stats.nacks.get(reason, 0) + len(seqs)
        for seq in seqs:
            frame = self._frames[seq]
            if frame.inflight:
                frame.inflight = False
                self._inflight -= frame.length
        if reason == NackReason.CHECKSUM:
            for seq in seqs:
                self._enqueue(seq)
        elif reason == NackReason.WINDOW:
            # Resend once credit comes back: on the next ack, or after a pause.
            self._held.update(seqs)
            if self._held_timer is None:
                self._held_timer = asyncio.get_running_loop().call_later(
                    self.window_retry_s, self._release_held
                )
        else:
            for seq in seqs:
                del self._frames[seq]
                self._queued.discard(seq)
            self._fail(StreamRejected([list(r) for r in ranges], reason))
        self._notify()

    def _release_held(self) -> None:
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        if self._held:
            for seq in self._held:
                if seq in self._frames:
                    self._enqueue(seq)
            self._held.clear()
            self._notify()

    # -- outgoing -------------------------------------------------------------

    def _head(self) -> int | None:
        heap = self._heap
        while heap and heap[0] not in self._queued:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def _can_send(self) -> bool:
        if not self._connected or self._finished():
            return False
        head = self._head()
        if head is None:
            return False
        return self._inflight + self._frames[head].length <= self._window

    def _take_batch(self) -> list[bytes]:
        wires: list[bytes] = []
        size = 0
        now = time.monotonic()
        while len(wires) < self.frames_per_message:
            seq = self._head()
            if seq is None:
                break
            frame = self._frames[seq]
            if self._inflight + frame.length > self._window:
                break
            if size + len(frame.wire) > self._max_message_bytes:
                if not wires:
                    raise StreamRejected([[seq, seq]], "too_large")
                break
            heapq.heappop(self._heap)
            self._queued.discard(seq)
            wires.append(frame.wire)
            size += len(frame.wire)
            frame.inflight = True
            frame.sent_at = now
            self._inflight += frame.length
            if frame.sends:
                self.stats.frames_resent += 1
            else:
                self.stats.frames_sent += 1
                self.stats.bytes_sent += frame.length
            frame.sends += 1
        return wires

    async def _write_loop(self, ws: ClientConnection) -> None:
        try:
            while True:
                await self._wait(lambda: self._can_send() or not self._connected)
                if not self._connected or self._failure is not None:
                    return
                if (
                    self.batch_delay_s > 0
                    and len(self._queued) < self.frames_per_message
                    and self._end_seq is None
                ):
                    await asyncio.sleep(self.batch_delay_s)
                    if not self._can_send():
                        continue
                wires = self._take_batch()
                if not wires:
                    continue
                self.stats.messages_sent += 1
                # Wake producers now: the frames left the queue.
                self._notify()
                await ws.send(wires[0] if len(wires) == 1 else b"".join(wires))
        except ConnectionClosed:
            return  # the reader sees the close and decides what follows
        except Exception as exc:
            self._fail(exc if isinstance(exc, StreamError) else StreamError(f"writer: {exc!r}"))
            await ws.close()

    async def _keepalive(self, ws: ClientConnection, every_s: float) -> None:
        # A JSON ping keeps the server's idle timeout (4408) away while audio pauses.
        while True:
            await asyncio.sleep(every_s)
            ping = {"type": MessageType.PING, "t": int(time.time() * 1000)}
            await ws.send(orjson.dumps(ping).decode())


def _header_fields(wire: bytes) -> tuple[int, int, int, int, int]:
    """(seq, flags, pts_us, length, crc32c) of an encoded frame's header."""
    return (
        int.from_bytes(wire[4:8], "big"),
        wire[3],
        int.from_bytes(wire[8:16], "big"),
        int.from_bytes(wire[16:20], "big"),
        int.from_bytes(wire[20:24], "big"),
    )
