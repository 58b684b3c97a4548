"""The WebSocket stream (PROTOCOL sections 2.1, 3, 4 and 7).

One ``StreamConnection`` per open socket. Its handler task owns every send
and the close (Granian ignores a close sent from any other task); a reader
task receives, decodes with one native call per message, checks credit and
hands frames to the group-commit writer with a callback (no task or future per
message). Commit completions gather acks in a :class:`Tally` and wake the
handler task, which coalesces them into one ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import orjson
from litestar import WebSocket, websocket
from litestar.params import FromPath
from litestar.types import WebSocketSendEvent

from voxgate import logs, metrics
from voxgate.auth import bearer
from voxgate.core import native as _native
from voxgate.ingest.tally import WINDOW, Tally, precheck
from voxgate.rates import SESSION_CONNECTS
from voxgate.store.base import (
    CommitResult,
    FrameIn,
    Progress,
    SessionState,
    StoreError,
    Tier,
)
from voxgate.tokens.base import TokenStoreError

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

log = logging.getLogger("voxgate.stream")
events = logs.get("voxgate.stream")

SUBPROTOCOL = "voxgate.v1"
TOKEN_SUBPROTOCOL_PREFIX = "voxgate.token."

# Above this many unsent nack seqs the reader waits for the handler to flush,
# so a client ignoring nacks cannot grow the outbox without bound.
_MAX_PENDING_REJECTIONS = 65_536
# How long a closing stream waits for its in-flight commits so their acks go out.
_CLOSE_FLUSH_S = 2.0
# Closes that find the client mid-stream through no fault of its own. Before them the
# stream quiesces: window 0, acks for what becomes durable, then the close once the
# client has gone quiet. Granian drops the TCP connection right after the close frame;
# client data still unread then turns that into a reset, which can destroy the close
# frame on its way (the client sees 1006 instead of 1001 or 4409).
_QUIESCE_CODES = frozenset({1001, 1013, 4409})
# Quiet this long (nothing received, no commit pending) before closing: above a round trip.
_CLOSE_QUIET_S = 0.1


class Close(Exception):
    """Ends a connection with a close code; 4xxx codes send ``error`` first."""

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.message = message


class StreamRegistry:
    """This process's open streams, at most one per session, and the signals between them."""

    def __init__(self) -> None:
        self._by_session: dict[str, StreamConnection] = {}
        self._poller: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()
        # Tells other instances at once that this one claimed a stream (Redis pub/sub);
        # None without Redis: the store poll alone carries takeovers across processes.
        self.announce: Callable[[str, int], None] | None = None
        # Set by the first close_all: when the shutdown grace ends, on the loop's clock.
        self._closing_until: float | None = None

    def __len__(self) -> int:
        return len(self._by_session)

    def register(self, conn: StreamConnection) -> None:
        """Make ``conn`` its session's stream here, superseding an older local one."""
        if self._closing_until is not None:
            # Its handshake began before shutdown did: close it like the others.
            conn.fail(Close(1001, "going_away", "server shutting down"))
        old = self._by_session.get(conn.session_id)
        if old is not None and old.generation < conn.generation:
            old.fail(
                Close(4409, "superseded", "a newer connection took over this session's stream")
            )
        if old is None or old.generation < conn.generation:
            self._by_session[conn.session_id] = conn
            if self.announce is not None:
                self.announce(conn.session_id, conn.generation)
        else:
            conn.fail(
                Close(4409, "superseded", "a newer connection took over this session's stream")
            )

    def unregister(self, conn: StreamConnection) -> None:
        if self._by_session.get(conn.session_id) is conn:
            del self._by_session[conn.session_id]
            if not self._by_session:
                self._emptied.set()

    def window_of(self, session_id: str) -> int | None:
        """The credit window of the session's stream in this process, if one is open."""
        conn = self._by_session.get(session_id)
        return None if conn is None else conn._ledger.window(conn._handle)

    def progressed(self, session_id: str, progress: Progress) -> None:
        """Frames of the session were stored by another transport here (HTTP upload): an
        open stream of it learns where it stands, and gets ``complete`` if it now is."""
        conn = self._by_session.get(session_id)
        if conn is not None:
            conn.take_progress(progress)

    def pressure_relieved(self) -> None:
        """Tell every stream held at a small window that credit is back."""
        for conn in self._by_session.values():
            conn.offer_window()

    def start(self, runtime: Runtime) -> None:
        self._poller = asyncio.create_task(self._poll_generations(runtime))

    def supersede(self, session_id: str, generation: int) -> None:
        """A connection somewhere claimed ``generation``: close an older one held here."""
        conn = self._by_session.get(session_id)
        if conn is not None and conn.generation < generation:
            conn.fail(
                Close(4409, "superseded", "a newer connection took over this session's stream")
            )

    async def _poll_generations(self, runtime: Runtime) -> None:
        # Streams of other processes or instances claim sessions through the store.
        while True:
            await asyncio.sleep(runtime.settings.supersede_poll_s)
            if not self._by_session:
                continue
            try:
                current = await runtime.store.stream_generations(list(self._by_session))
            except StoreError as exc:
                log.warning("cannot check stream generations: %s", exc)
                continue
            for session_id, generation in current.items():
                self.supersede(session_id, generation)

    async def close_all(self, grace_s: float) -> None:
        """Close every stream with 1001 (going away) and wait for them.

        The wait ends ``grace_s`` after the first call at the latest: a second
        call (the lifespan shutdown after the signal's drain) only uses what is
        left of the grace.
        """
        loop = asyncio.get_running_loop()
        if self._closing_until is None:
            self._closing_until = loop.time() + grace_s
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        conns = list(self._by_session.values())
        for conn in conns:
            conn.fail(Close(1001, "going_away", "server shutting down"))
        if self._by_session:
            self._emptied.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(self._closing_until):
                    await self._emptied.wait()


class StreamConnection:
    """One client's stream into one session."""

    def __init__(
        self,
        socket: WebSocket[Any, Any, Any],
        runtime: Runtime,
        session_id: str,
        generation: int,
        *,
        next_seq: int,
        end_seq: int | None,
    ) -> None:
        self.socket = socket
        self.runtime = runtime
        self.session_id = session_id
        self.generation = generation
        settings = runtime.settings
        self._max_message = settings.max_message_bytes
        self._max_frame = settings.max_frame_bytes
        self._seq_ahead = settings.max_seq_ahead
        self._ledger = runtime.ledger
        self._handle = runtime.ledger.open()
        self._ledger_open = True  # commits may finish after the stream closed its account
        self._next_seq = next_seq
        self._end_seq = end_seq
        self._tally = Tally()
        self._pongs: list[Any] = []
        self._complete: dict[str, Any] | None = None
        self._complete_sent = False
        self._close: Close | None = None
        self._window_offer = False
        self._disconnected = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._last_rx = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._commits = 0  # submitted to the writer, not yet answered
        self._commits_done = asyncio.Event()
        self.frames = 0
        self.bytes = 0
        self._opened = time.monotonic()
        self._ack_since: float | None = None  # receipt of the oldest frame awaiting an ack
        self._peer_code: int | None = None

    # -- signals from other tasks -------------------------------------------------

    def fail(self, close: Close) -> None:
        """Ask the handler task to close with ``close`` (first failure wins)."""
        if self._close is None:
            self._close = close
        self._wake.set()

    def offer_window(self) -> None:
        if self._ledger.inflight(self._handle) == 0:
            self._window_offer = True
            self._wake.set()

    def set_complete(self, last_seq: int, frames: int, nbytes: int, stream_crc: int) -> None:
        self._complete = {
            "type": "complete",
            "last_seq": last_seq,
            "frames": frames,
            "bytes": nbytes,
            "stream_crc32c": stream_crc,
        }
        self._wake.set()

    # -- the handler task ---------------------------------------------------------

    async def run(self, missing: list[list[int]]) -> None:
        """Send hello, then serve the stream until it closes. Never raises for client faults."""
        hello = {
            "type": "hello",
            "protocol": 1,
            "session_id": self.session_id,
            "next_seq": self._next_seq,
            "missing": missing,
            "window_bytes": self._ledger.window(self._handle),
            "max_frame_bytes": self._max_frame,
            "max_message_bytes": self._max_message,
        }
        reader: asyncio.Task[None] | None = None
        try:
            await self._send(hello)
            reader = asyncio.create_task(self._read())
            self._watch_idle()
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._flush()
                if self._close is not None or self._disconnected:
                    break
            if self._close is not None and self._close.code in _QUIESCE_CODES:
                await self._quiesce()
            # Granian drops a close while a receive is pending: stop the reader first.
            await _stop(reader)
            if self._close is not None and not self._disconnected:
                if self._commits:  # ack what becomes durable before closing
                    self._commits_done.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_CLOSE_FLUSH_S):
                            await self._commits_done.wait()
                    await self._flush()
                await self._send_close(self._close)
        except OSError:  # the peer vanished mid-send
            pass
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            await _stop(reader)
            self._log_close()
            self.runtime.streams.unregister(self)
            self._ledger_open = False
            if self._ledger.close(self._handle):
                self.runtime.streams.pressure_relieved()

    def _watch_idle(self) -> None:
        """Close with 4408 after ``idle_timeout_s`` without a message (one timer, re-armed)."""
        self._idle_timer = None
        if self._close is not None or self._disconnected:
            return
        idle = self.runtime.settings.idle_timeout_s
        remaining = self._last_rx + idle - time.monotonic()
        if remaining <= 0 and not self._commits:
            self.fail(Close(4408, "idle", f"no message for {idle:g} s"))
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(max(remaining, 0.05), self._watch_idle)

    def _log_close(self) -> None:
        metrics.ACTIVE_STREAMS.dec()
        if self._close is not None and not self._disconnected:
            code, by, error = self._close.code, "server", self._close.error
        else:
            code, by, error = self._peer_code or 1006, "client", None
        metrics.STREAM_CLOSES.labels(str(code), by).inc()
        events.info(
            "stream.close",
            session_id=self.session_id,
            code=code,
            by=by,
            error=error,
            frames=self.frames,
            bytes=self.bytes,
            duration_s=round(time.monotonic() - self._opened, 3),
        )

    async def _quiesce(self) -> None:
        """Before a close: announce window 0, ack what becomes durable, and wait (at most
        ``_CLOSE_FLUSH_S``) until nothing is pending and the client has gone quiet."""
        self._window_offer = True  # an ack with window 0 even if nothing is left to ack
        deadline = time.monotonic() + _CLOSE_FLUSH_S
        while not self._disconnected:
            await self._flush()
            now = time.monotonic()
            quiet_for = now - self._last_rx
            if (not self._commits and quiet_for >= _CLOSE_QUIET_S) or now >= deadline:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    min(deadline - now, max(_CLOSE_QUIET_S - quiet_for, 0.01))
                ):
                    await self._wake.wait()
            self._wake.clear()

    async def _send(self, message: dict[str, Any]) -> None:
        await self.socket.send(_text_event(message))

    async def _send_close(self, close: Close) -> None:
        if close.code >= 4000:
            await self._send({"type": "error", "code": close.error, "message": close.message})
        reason = close.message.encode()[:123].decode(errors="ignore")
        await self.socket.close(close.code, reason)

    async def _flush(self) -> None:
        tally = self._tally
        if tally.gone:
            self.fail(Close(4410, "gone", "session archived or deleted: it takes no frames"))
        for reason, ranges in tally.take_rejections():
            metrics.record_nack("websocket", reason, ranges)
            await self._send({"type": "nack", "ranges": ranges, "reason": reason})
        if tally.has_acks() or self._window_offer:
            self._window_offer = False
            acked, duplicate = tally.take_acks()
            # A closing stream grants no credit: the client stops sending.
            window = 0 if self._close is not None else self._ledger.window(self._handle)
            await self._send(
                {"type": "ack", "acked": acked, "duplicate": duplicate, "window_bytes": window}
            )
            metrics.record_acks("websocket", acked, duplicate)
            metrics.ACK_WINDOW.observe(window)
            if self._ack_since is not None:
                metrics.ACK_LATENCY.observe(time.monotonic() - self._ack_since)
                self._ack_since = None
        while self._pongs:
            await self._send({"type": "pong", "t": self._pongs.pop(0)})
        if self._complete is not None and not self._complete_sent:
            self._complete_sent = True
            await self._send(self._complete)
        self._drained.set()

    # -- the reader task ----------------------------------------------------------

    async def _read(self) -> None:
        receive = self.socket.receive
        # Reads on while a quiescing close waits for the client to go quiet.
        while self._close is None or self._close.code in _QUIESCE_CODES:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self._peer_code = message.get("code")
                self._disconnected = True
                self._wake.set()
                return
            self._last_rx = time.monotonic()
            data = cast("bytes | None", message.get("bytes"))
            if data is not None:
                self._on_binary(data)
            else:
                self._on_text(cast("str | None", message.get("text")) or "")
            if self._tally.rejected and self._tally.pending_rejections() > _MAX_PENDING_REJECTIONS:
                self._drained.clear()
                self._wake.set()
                await self._drained.wait()

    def _on_text(self, text: str) -> None:
        try:
            control = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.fail(Close(4400, "bad_control", "control message is not valid JSON"))
            return
        if not isinstance(control, dict) or control.get("type") != "ping":
            self.fail(Close(4400, "bad_control", "unknown control message: expected ping"))
            return
        self._pongs.append(control.get("t"))
        self._wake.set()

    def _on_binary(self, data: bytes) -> None:
        if len(data) > self._max_message:
            self.fail(Close(1009, "message_too_big", f"message above {self._max_message} bytes"))
            return
        try:
            decoded = _native.decode(data, self._max_frame)
        except _native.FrameError as exc:
            self.fail(Close(4400, exc.kind, str(exc)))
            return
        tally = self._tally
        ledger, handle = self._ledger, self._handle
        session_id = self.session_id
        view = memoryview(data)
        batch: list[FrameIn] = []
        batch_bytes = 0
        seq_limit = self._next_seq + self._seq_ahead
        for seq, flags, pts_us, offset, length, crc, verdict in decoded:
            reason = precheck(seq, verdict, self._end_seq, seq_limit)
            if reason is not None:
                tally.reject(seq, reason)
            elif self._close is not None or not ledger.admit(handle, length):
                tally.reject(seq, WINDOW)
            else:
                batch.append(
                    FrameIn(session_id, seq, flags, pts_us, crc, view[offset : offset + length])
                )
                batch_bytes += length
        if batch:
            rx = self._last_rx

            def done(result: CommitResult | None, exc: BaseException | None) -> None:
                self._on_commit(result, exc, batch, batch_bytes, rx)

            try:
                self.runtime.writer.submit(batch, batch_bytes, done, session_id)
            except StoreError as exc:  # WriterFull or stopped: answered like a failed commit
                self._commits += 1
                done(None, exc)
            else:
                self._commits += 1
        if tally.rejected:
            self._wake.set()

    def _on_commit(
        self,
        result: CommitResult | None,
        exc: BaseException | None,
        batch: list[FrameIn],
        nbytes: int,
        rx: float,
    ) -> None:
        self._commits -= 1
        if not self._commits:
            self._commits_done.set()
        if self._ledger_open and self._ledger.release(self._handle, nbytes):
            self.runtime.streams.pressure_relieved()
        if isinstance(exc, StoreError):
            log.error("commit failed for session %s: %s", self.session_id, exc)
            self.fail(Close(1013, "store_unavailable", "storage unavailable, reconnect later"))
            return
        if exc is not None:
            log.error("commit failed for session %s", self.session_id, exc_info=exc)
            self.fail(Close(1011, "internal", "unexpected server error"))
            return
        assert result is not None
        self._tally.record(batch, result.outcomes)
        self.frames += len(batch)
        self.bytes += nbytes
        metrics.INGESTED_BYTES["websocket"].inc(nbytes)
        if self._ack_since is None or rx < self._ack_since:
            self._ack_since = rx
        progress = result.progress.get(self.session_id)
        if progress is not None:
            self.take_progress(progress)
        self._wake.set()

    def take_progress(self, progress: Progress) -> None:
        """The session's counters after a commit: the limits follow, ``complete`` once it is."""
        self._next_seq = max(self._next_seq, progress.next_seq)
        if progress.end_seq is not None:  # an END stays: an older report must not undo it
            self._end_seq = progress.end_seq
        if progress.complete and progress.end_seq is not None:
            self.set_complete(
                progress.end_seq, progress.frames, progress.bytes, progress.stream_crc32c or 0
            )


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _text_event(message: dict[str, Any]) -> WebSocketSendEvent:
    return {"type": "websocket.send", "text": orjson.dumps(message).decode(), "bytes": None}


# -- the handshake ----------------------------------------------------------------


def _credentials(socket: WebSocket[Any, Any, Any]) -> tuple[str | None, bool]:
    """The stream token from header, subprotocol or query, and whether voxgate.v1 was offered."""
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


async def _reject(socket: WebSocket[Any, Any, Any], close: Close) -> None:
    metrics.STREAM_CLOSES.labels(str(close.code), "server").inc()
    events.info("stream.refused", code=close.code, error=close.error)
    with contextlib.suppress(OSError, Exception):
        await socket.send(
            _text_event({"type": "error", "code": close.error, "message": close.message})
        )
        await socket.close(close.code, close.message.encode()[:123].decode(errors="ignore"))


def _origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    return origin is None or "*" in allowed or origin in allowed


@websocket("/v1/sessions/{session_id:str}/stream", name="stream")
async def stream(socket: WebSocket[Any, Any, Any], session_id: FromPath[str]) -> None:
    """Stream audio frames into a session: the primary ingest transport."""
    runtime: Runtime = socket.app.state.runtime
    token, offered_v1 = _credentials(socket)
    await socket.accept(subprotocols=SUBPROTOCOL if offered_v1 else None)
    try:
        if runtime.draining:
            raise Close(1013, "draining", "server is shutting down, reconnect")
        if not _origin_allowed(socket.headers.get("origin"), runtime.settings.cors_origins):
            raise Close(4403, "origin", "Origin not allowed")
        if token is None:
            raise Close(4401, "unauthorized", "missing stream token")
        if len(runtime.streams) >= runtime.settings.max_streams:
            raise Close(4429, "too_many_streams", "too many open streams, retry later")
        try:
            token_session = await runtime.tokens.consume(token)
        except TokenStoreError as exc:
            log.error("token store unavailable: %s", exc)
            raise Close(1013, "token_store_unavailable", "token store unavailable") from exc
        if token_session is None:
            raise Close(4401, "unauthorized", "invalid, expired or already used stream token")
        session = await runtime.store.get_session(session_id)
        if session is None:
            raise Close(4404, "not_found", "unknown session")
        if session.state is SessionState.DELETED:
            raise Close(4410, "gone", "session deleted: it no longer accepts frames")
        if session.tier is not Tier.HOT:
            raise Close(4410, "gone", f"session archived ({session.tier}): it takes no frames")
        if token_session != session_id:
            raise Close(4403, "forbidden", "stream token is for another session")
        connects = await runtime.limits.check(SESSION_CONNECTS, session_id)
        if connects is not None and not connects.allowed:
            raise Close(
                4429,
                "rate_limited",
                f"too many connections to this session, retry in "
                f"{math.ceil(connects.retry_after_s)} s",
            )
        generation = await runtime.store.claim_stream(session_id)
        # Re-read after claiming so no commit of an older stream slips between.
        session = await runtime.store.get_session(session_id) or session
        missing = await runtime.store.missing(session_id)
    except Close as close:
        await _reject(socket, close)
        return
    except StoreError as exc:
        log.error("store unavailable at stream open: %s", exc)
        await _reject(socket, Close(1013, "store_unavailable", "storage unavailable"))
        return
    conn = StreamConnection(
        socket,
        runtime,
        session_id,
        generation,
        next_seq=session.next_seq,
        end_seq=session.end_seq,
    )
    if session.state is SessionState.COMPLETE and session.end_seq is not None:
        conn.set_complete(
            session.end_seq, session.frames, session.bytes, session.stream_crc32c or 0
        )
    runtime.streams.register(conn)
    metrics.ACTIVE_STREAMS.inc()
    events.info(
        "stream.open",
        session_id=session_id,
        generation=generation,
        next_seq=session.next_seq,
        missing=len(missing),
        state=str(session.state),
    )
    await conn.run(missing)
