"""One WebSocket stream into one session, and the registry of a process's streams.

A :class:`StreamConnection` is built from what it works with, nothing more:
the socket's ASGI ``receive`` and ``send``, the group-commit :class:`Writer`,
the credit ledger, the :class:`StreamRegistry` and its :class:`StreamLimits`.
The route handler (``voxgate.api.stream``) does the handshake and builds it.

Per message, Python does a constant amount of work whatever the frame count:
the reader hands the message to the Rust ``StreamCore`` (decode, CRC, checks
against the session, ledger admission, the batch as positions in the message)
and the batch to the writer. Commit completions go back into the core, which
gathers acks and nacks; the handler task, which owns every send and the close
(Granian ignores a close sent from any other task), sends them as ready-made
JSON text, coalesced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
from litestar.types import Receive, Send

from voxgate import logs, metrics, wire
from voxgate._native import Batch, FrameError, Ledger, StreamCore
from voxgate.ingest.writer import Writer
from voxgate.store.base import Outcome, Progress, Store, StoreError

log = logging.getLogger("voxgate.stream")
events = logs.get("voxgate.stream")

# Above this many unsent nack seqs the reader waits for the handler to flush,
# so a client ignoring nacks cannot grow the outbox without bound.
_MAX_PENDING_REJECTIONS = 65_536
# Pongs owed at once; pings beyond them are not answered (the client is not reading).
MAX_PENDING_PONGS = 64
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


class Wakeup:
    """An event with one waiter, the handler task: set and wait once per ack, so it is kept
    to a flag and a bare future (asyncio.Event also keeps a waiter list and checks its loop)."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self) -> None:
        if self._flag:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


def superseded() -> Close:
    return Close(4409, "superseded", "a newer connection took over this session's stream")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """The bounds one stream enforces (from Settings)."""

    max_message_bytes: int
    max_frame_bytes: int
    max_seq_ahead: int
    max_control_bytes: int
    idle_timeout_s: float
    # A send the client does not take within this ends the stream (it is not reading).
    send_timeout_s: float


def text_event(text: str) -> dict[str, Any]:
    return {"type": "websocket.send", "text": text, "bytes": None}


async def send_close(send: Send, close: Close, *, with_error: bool = False) -> None:
    """``error`` (for 4xxx codes, or always ``with_error``), then the close frame; the
    reason cut to fit a frame."""
    if with_error or close.code >= 4000:
        error = {"type": "error", "code": close.error, "message": close.message}
        await send(text_event(orjson.dumps(error).decode()))  # type: ignore[arg-type]
    reason = close.message.encode()[: wire.MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
    await send({"type": "websocket.close", "code": close.code, "reason": reason})


class StreamRegistry:
    """This process's open streams, at most one per session, and the signals between them."""

    def __init__(self) -> None:
        self._by_session: dict[str, StreamConnection] = {}
        # Every running connection, superseded ones still closing included: the stall
        # sweep must reach a connection that lost its session but waits on its client.
        self._live: set[StreamConnection] = set()
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
        self._live.add(conn)
        if self._closing_until is not None:
            # Its handshake began before shutdown did: close it like the others.
            conn.fail(Close(1001, "going_away", "server shutting down"))
        old = self._by_session.get(conn.session_id)
        if old is not None and old.generation < conn.generation:
            old.fail(superseded())
        if old is None or old.generation < conn.generation:
            self._by_session[conn.session_id] = conn
            if self.announce is not None:
                self.announce(conn.session_id, conn.generation)
        else:
            conn.fail(superseded())

    def unregister(self, conn: StreamConnection) -> None:
        self._live.discard(conn)
        if self._by_session.get(conn.session_id) is conn:
            del self._by_session[conn.session_id]
            if not self._by_session:
                self._emptied.set()

    def window_of(self, session_id: str) -> int | None:
        """The credit window of the session's stream in this process, if one is open."""
        conn = self._by_session.get(session_id)
        return None if conn is None else conn.window()

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

    def start(self, store: Store, poll_s: float) -> None:
        """Watch the store for takeovers by streams of other processes, every ``poll_s``."""
        self._poller = asyncio.create_task(self._poll_generations(store, poll_s))

    def supersede(self, session_id: str, generation: int) -> None:
        """A connection somewhere claimed ``generation``: close an older one held here."""
        conn = self._by_session.get(session_id)
        if conn is not None and conn.generation < generation:
            conn.fail(superseded())

    async def _poll_generations(self, store: Store, poll_s: float) -> None:
        while True:
            await asyncio.sleep(poll_s)
            # One sweep for all streams instead of a timeout around every send.
            now = time.monotonic()
            for conn in list(self._live):
                conn.check_stalled(now)
            if not self._by_session:
                continue
            try:
                current = await store.stream_generations(list(self._by_session))
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
        for conn in list(self._by_session.values()):
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
        *,
        session_id: str,
        generation: int,
        receive: Receive,
        send: Send,
        writer: Writer,
        ledger: Ledger,
        registry: StreamRegistry,
        limits: StreamLimits,
        next_seq: int,
        end_seq: int | None,
    ) -> None:
        self.session_id = session_id
        self.generation = generation
        self._receive = receive
        self._send_event = send
        self._writer = writer
        self._ledger = ledger
        self._registry = registry
        self._limits = limits
        self._handle = ledger.open()
        self._ledger_open = True  # commits may finish after the stream closed its account
        self._core = StreamCore(
            ledger,
            self._handle,
            session_id,
            max_frame_bytes=limits.max_frame_bytes,
            max_seq_ahead=limits.max_seq_ahead,
            next_seq=next_seq,
            end_seq=end_seq,
        )
        self._pongs: list[Any] = []
        self._complete: dict[str, Any] | None = None
        self._complete_sent = False
        self._close: Close | None = None
        self._window_offer = False
        self._disconnected = False
        self._wake = Wakeup()
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
        self._sending_since: float | None = None  # a send the client has not taken yet
        self._task: asyncio.Task[Any] | None = None  # the handler task
        self._stalled = False

    # -- signals from other tasks -------------------------------------------------

    def fail(self, close: Close) -> None:
        """Ask the handler task to close with ``close`` (first failure wins)."""
        if self._close is None:
            self._close = close
        self._wake.set()

    def window(self) -> int:
        return self._ledger.window(self._handle)

    def check_stalled(self, now: float) -> None:
        """End the stream if one send has waited ``send_timeout_s`` for the client to read:
        a client that stops reading must not hold the stream (and what it buffers) forever."""
        since = self._sending_since
        task = self._task
        if (
            since is not None
            and task is not None
            and not self._stalled
            and now - since >= self._limits.send_timeout_s
        ):
            self._stalled = True
            task.cancel()

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

    def take_progress(self, progress: Progress) -> None:
        """The session's counters after a commit: the limits follow, ``complete`` once it is."""
        self._core.progress(progress.next_seq, progress.end_seq)
        if progress.complete and progress.end_seq is not None:
            self.set_complete(
                progress.end_seq, progress.frames, progress.bytes, progress.stream_crc32c or 0
            )

    # -- the handler task ---------------------------------------------------------

    async def run(self, missing: list[list[int]]) -> None:
        """Send hello, then serve the stream until it closes. Never raises for client faults."""
        limits = self._limits
        hello = {
            "type": "hello",
            "protocol": wire.PROTOCOL_VERSION,
            "session_id": self.session_id,
            "next_seq": self._core.next_seq,
            "missing": missing,
            "window_bytes": self.window(),
            "max_frame_bytes": limits.max_frame_bytes,
            "max_message_bytes": limits.max_message_bytes,
        }
        reader: asyncio.Task[None] | None = None
        self._task = asyncio.current_task()
        try:
            await self._send(orjson.dumps(hello).decode())
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
            await stop_task(reader)
            if self._close is not None and not self._disconnected:
                if self._commits:  # ack what becomes durable before closing
                    self._commits_done.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_CLOSE_FLUSH_S):
                            await self._commits_done.wait()
                # Also what a commit answered while the reader was being stopped.
                await self._flush()
                self._sending_since = time.monotonic()
                await send_close(self._send_event, self._close)
        except OSError:  # the peer vanished mid-send
            pass
        except asyncio.CancelledError:
            if not self._stalled:
                raise
            # Cancelled by check_stalled: the client stopped reading. Not a shutdown.
            if self._task is not None:
                self._task.uncancel()
            log.info("stream of %s stalled: the client reads nothing", self.session_id)
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            await stop_task(reader)
            self._log_close()
            self._registry.unregister(self)
            self._ledger_open = False
            if self._ledger.close(self._handle):
                self._registry.pressure_relieved()

    def _watch_idle(self) -> None:
        """Close with 4408 after ``idle_timeout_s`` without a message (one timer, re-armed)."""
        self._idle_timer = None
        if self._close is not None or self._disconnected:
            return
        idle = self._limits.idle_timeout_s
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

    async def _send(self, text: str) -> None:
        self._sending_since = time.monotonic()  # watched by check_stalled
        await self._send_event(text_event(text))  # type: ignore[arg-type]
        self._sending_since = None

    async def _flush(self) -> None:
        core = self._core
        if core.gone:
            self.fail(Close(4410, "gone", "session archived or deleted: it takes no frames"))
        if core.pending_rejections:
            for reason, count, text in core.take_nacks():
                metrics.record_nacks("websocket", reason, count)
                await self._send(text)
        if core.has_acks or self._window_offer:
            self._window_offer = False
            # A closing stream grants no credit: the client stops sending.
            window = 0 if self._close is not None else self.window()
            acked, duplicate, text = core.take_ack(window)
            await self._send(text)
            metrics.record_ack_counts("websocket", acked, duplicate, window)
            if self._ack_since is not None:
                metrics.ACK_LATENCY.observe(time.monotonic() - self._ack_since)
                self._ack_since = None
        while self._pongs:
            await self._send(orjson.dumps({"type": "pong", "t": self._pongs.pop(0)}).decode())
        if self._complete is not None and not self._complete_sent:
            self._complete_sent = True
            await self._send(orjson.dumps(self._complete).decode())
        self._drained.set()

    # -- the reader task ----------------------------------------------------------

    async def _read(self) -> None:
        receive = self._receive
        core = self._core
        # Reads on while a quiescing close waits for the client to go quiet.
        while self._close is None or self._close.code in _QUIESCE_CODES:
            message = await receive()
            if message["type"] != "websocket.receive":
                self._peer_code = cast("int | None", message.get("code"))
                self._disconnected = True
                self._wake.set()
                return
            self._last_rx = time.monotonic()
            data = message.get("bytes")
            if data is not None:
                self._on_binary(data)
            else:
                self._on_text(message.get("text") or "")
            if core.pending_rejections > _MAX_PENDING_REJECTIONS:
                self._drained.clear()
                self._wake.set()
                await self._drained.wait()

    def _on_text(self, text: str) -> None:
        limit = self._limits.max_control_bytes
        # The limit is in bytes: count them only when the characters could exceed it.
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            self.fail(
                Close(
                    1009,
                    "message_too_big",
                    f"control message above {self._limits.max_control_bytes} bytes",
                )
            )
            return
        try:
            control = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.fail(Close(4400, "bad_control", "control message is not valid JSON"))
            return
        if not isinstance(control, dict) or control.get("type") != "ping":
            self.fail(Close(4400, "bad_control", "unknown control message: expected ping"))
            return
        if len(self._pongs) < MAX_PENDING_PONGS:
            self._pongs.append(control.get("t"))
            self._wake.set()

    def _on_binary(self, data: bytes) -> None:
        if len(data) > self._limits.max_message_bytes:
            self.fail(
                Close(
                    1009,
                    "message_too_big",
                    f"message above {self._limits.max_message_bytes} bytes",
                )
            )
            return
        try:
            batch = self._core.accept(data, self._close is not None)
        except FrameError as exc:
            self.fail(Close(4400, exc.kind, str(exc)))
            return
        if batch is not None:
            if self._ack_since is None:
                self._ack_since = self._last_rx
            self._commits += 1
            try:
                self._writer.submit(batch, batch.nbytes, self._on_commit)
            except StoreError as exc:  # WriterFull or stopped: answered like a failed commit
                self._on_commit(batch, None, None, exc)
        if self._core.pending_rejections:
            self._wake.set()

    def _on_commit(
        self,
        batch: Batch,
        outcomes: list[Outcome] | None,
        progress: Progress | None,
        exc: BaseException | None,
    ) -> None:
        self._commits -= 1
        if not self._commits:
            self._commits_done.set()
        nbytes = batch.nbytes
        if self._ledger_open and self._ledger.release(self._handle, nbytes):
            self._registry.pressure_relieved()
        if isinstance(exc, StoreError):
            log.error("commit failed for session %s: %s", self.session_id, exc)
            self.fail(Close(1013, "store_unavailable", "storage unavailable, reconnect later"))
            return
        if exc is not None:
            log.error("commit failed for session %s", self.session_id, exc_info=exc)
            self.fail(Close(1011, "internal", "unexpected server error"))
            return
        assert outcomes is not None
        self._core.record(batch, outcomes)
        self.frames += len(batch)
        self.bytes += nbytes
        metrics.INGESTED_BYTES["websocket"].inc(nbytes)
        if progress is not None:
            self.take_progress(progress)
        self._wake.set()


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for it, whatever it raised."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
