"""The load generator: voxgate streams on picows, run in a process of its own.

Every stream is a picows listener driven by callbacks, with no task per
stream and no task per message: ``hello`` and every ``ack`` free credit and
send the next message at once (``rate`` None: as fast as the window allows),
or a timer sends it when it is due (``rate``: real-time pacing, frames per
second per stream). Ack latency is measured per frame, from the send of its
message to the ack covering it. Acks of one stream come in commit order, so a
FIFO of sent messages matches them without a per-frame map.

A stream either runs for ``duration_s`` (then drains its in-flight frames) or
sends ``total_frames`` frames. With ``verify`` it then sends END and checks
the ``complete`` message's frame count, byte count and stream CRC-32C.
``inflight_messages`` bounds the unacked messages per stream below the
credit; ``warmup_s`` of load come before the measured window. A paced message
sent more than ``LATE_S`` after it was due counts as late.

Latencies also come out as a histogram (:func:`latency_histogram`) that
merges across generator processes; ``driver="rust"`` runs the same spec in
``loadgen-rs`` (see ``generators.py``), which reports the same histogram.

The parent talks to the generator over a pipe: it sends ``"start"`` once
connections are open (the generator answers ``"ready"`` first) and receives
``{"progress": ...}`` every ``progress_s`` and finally ``{"result": ...}``.
Only 127.0.0.1 is targeted; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import resource
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from voxgate import _native

CONNECT_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 15.0
COMPLETE_TIMEOUT_S = 20.0
CONNECT_CONCURRENCY = 64
LATE_S = 0.005


@dataclass
class LoadSpec:
    """What one generator process does (picklable: it crosses into the process)."""

    target: str
    ws_base: str
    session_ids: list[str]
    tokens: list[str]
    frame_bytes: int
    frames_per_message: int
    duration_s: float | None = None  # timed run; None: send total_frames per stream
    total_frames: int | None = None
    rate: float | None = None  # frames/s per stream (real-time pacing); None: credit-bound
    verify: bool = False  # END each stream and check complete (voxgate only)
    idle: bool = False  # open the streams, send nothing, hold them until told to stop
    # "picows": the callbacks below; "client": voxgate's StreamClient; "rust": loadgen-rs
    driver: str = "picows"
    progress_s: float = 0.5
    inflight_messages: int | None = None  # unacked messages per stream; None: credit only
    warmup_s: float = 0.0  # load before the measured window opens
    # Several instances of one cluster: generator process i sends its share of the
    # streams to ws_bases[i % len(ws_bases)] (ws_base is the first).
    ws_bases: tuple[str, ...] = ()


@dataclass
class LoadResult:
    """What one generator run measured."""

    target: str
    streams: int
    duration_s: float
    frames_sent: int = 0
    frames_acked: int = 0
    bytes_acked: int = 0
    messages_sent: int = 0
    frames_per_s: float = 0.0
    mb_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    nacks: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    streams_verified: int = 0
    per_stream_acked: list[int] = field(default_factory=list)
    generator_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    latency_hist_us: list[list[int]] = field(default_factory=list)  # [[bucket_us, frames]]


class Stream(WSListener):
    """One stream: sends within its credit (or on its schedule), matches acks to sends."""

    def __init__(self, run: Run, index: int) -> None:
        self.run = run
        self.index = index
        spec = run.spec
        self.fb = spec.frame_bytes
        self.per_message = spec.frames_per_message
        self.transport: WSTransport | None = None
        self.window = 0
        self.inflight = 0
        self.next_seq = 0
        self.sending = False
        self.limit = spec.total_frames if spec.total_frames is not None else 1 << 62
        self.pending: collections.deque[list[float]] = collections.deque()  # [frames, t]
        self.due = 0.0  # paced: when the next message is due
        self.timer: asyncio.TimerHandle | None = None
        self.hello: asyncio.Future[None] = run.loop.create_future()
        self.complete: asyncio.Future[dict[str, Any]] = run.loop.create_future()
        self.drained: asyncio.Future[None] | None = None
        self.closed_code: int | None = None
        self.acked = 0
        self.sent = 0

    # -- picows callbacks ---------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.sending = False
        if self.timer is not None:
            self.timer.cancel()
        error = ConnectionError(f"stream {self.index}: disconnected (close {self.closed_code})")
        for future in (self.hello, self.complete, self.drained):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: the waiter may be gone already

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            self.on_message(orjson.loads(frame.get_payload_as_bytes()))
        elif kind == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.closed_code = code.value
            self.run.count_close(self.closed_code)
            transport.send_close(code)
            transport.disconnect()
        elif kind == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())

    # -- protocol ---------------------------------------------------------------------

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ack":
            done = 0
            for first, last in message["acked"]:
                done += last - first + 1
            for first, last in message["duplicate"]:
                done += last - first + 1
            if done:
                self.on_acked(done)
            self.window = message["window_bytes"]
            if self.sending and self.run.spec.rate is None:
                self.pump()
        elif kind == "hello":
            self.window = message["window_bytes"]
            self.next_seq = message["next_seq"]
            if not self.hello.done():
                self.hello.set_result(None)
        elif kind == "nack":
            for first, last in message["ranges"]:
                self.run.count_nack(message["reason"], last - first + 1)
        elif kind == "complete":
            if not self.complete.done():
                self.complete.set_result(message)
        elif kind == "error":
            self.run.errors.append(f"stream {self.index}: server error {message}")

    def on_acked(self, done: int) -> None:
        run = self.run
        now = time.perf_counter()
        counts = run.window_start <= now <= run.window_end
        self.acked += done
        run.acked += done
        if counts:
            run.acked_in_window += done
        self.inflight -= done * self.fb
        pending = self.pending
        while done and pending:
            entry = pending[0]
            take = done if done < entry[0] else int(entry[0])
            if counts and entry[1] >= run.window_start:
                run.lat_values.append(now - entry[1])
                run.lat_weights.append(take)
            entry[0] -= take
            done -= take
            if not entry[0]:
                pending.popleft()
        if not pending and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def send_frames(self, count: int) -> None:
        assert self.transport is not None
        encode = _native.encode_frame
        payload = self.run.payload
        seq = self.next_seq
        message = b"".join([encode(s, payload) for s in range(seq, seq + count)])
        self.next_seq = seq + count
        self.inflight += count * self.fb
        self.pending.append([count, time.perf_counter()])
        self.transport.send(WSMsgType.BINARY, message)
        self.sent += count
        self.run.sent += count
        self.run.messages += 1

    def pump(self) -> None:
        """Credit-bound: send full messages while the window has room."""
        fb, per_message = self.fb, self.per_message
        bound = self.run.spec.inflight_messages or 1 << 62
        while self.sending:
            left = self.limit - self.next_seq
            fit = min(per_message, (self.window - self.inflight) // fb, left)
            if len(self.pending) >= bound:
                fit = 0
            if fit <= 0:
                if left <= 0:
                    self.sending = False
                    self.run.stream_done()
                return
            self.send_frames(fit)

    def tick(self) -> None:
        """Paced: one message per period; late ones go out as soon as credit allows."""
        self.timer = None
        if not self.sending:
            return
        left = self.limit - self.next_seq
        if left <= 0:
            self.sending = False
            self.run.stream_done()
            return
        count = min(self.per_message, left)
        bound = self.run.spec.inflight_messages or 1 << 62
        now = time.perf_counter()
        if self.window - self.inflight >= count * self.fb and len(self.pending) < bound:
            if now - self.due > LATE_S:
                self.run.late += 1
            self.send_frames(count)
            self.due += count / (self.run.spec.rate or 1.0)
            at = self.due
        else:  # no credit: retry soon, keeping the schedule so the stream catches up
            at = now + 0.002
        self.timer = self.run.loop.call_at(self.run.to_loop_time(at), self.tick)

    def start(self, at: float) -> None:
        self.sending = True
        if self.run.spec.rate is None:
            self.pump()
        else:
            self.due = at
            self.timer = self.run.loop.call_at(self.run.to_loop_time(at), self.tick)

    def stop(self) -> None:
        self.sending = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def drain(self, within_s: float) -> None:
        if self.pending:
            self.drained = self.run.loop.create_future()
            await asyncio.wait_for(self.drained, within_s)

    async def finish(self, within_s: float) -> bool:
        """END the stream and check what ``complete`` says against what was sent."""
        assert self.transport is not None
        end_seq = self.next_seq
        self.sent += 1
        self.run.sent += 1
        self.transport.send(WSMsgType.BINARY, _native.encode_frame(end_seq, b"", 0, True))
        done = await asyncio.wait_for(self.complete, within_s)
        expected = 0
        for _ in range(end_seq):
            expected = _native.crc32c_combine(expected, self.run.payload_crc, self.fb)
        ok: bool = (
            done["frames"] == end_seq + 1
            and done["bytes"] == end_seq * self.fb
            and done["stream_crc32c"] == expected
        )
        if not ok:
            self.run.errors.append(f"stream {self.index}: complete {done} does not match")
        return ok


class Run:
    """All streams of one generator process and their shared counters."""

    def __init__(self, spec: LoadSpec, conn: Connection | None) -> None:
        self.spec = spec
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.payload = os.urandom(spec.frame_bytes)
        self.payload_crc = _native.crc32c(self.payload)
        self.streams = [Stream(self, i) for i in range(len(spec.session_ids))]
        self.window_start = float("inf")
        self.window_end = float("inf")
        self.sent = self.acked = self.acked_in_window = self.messages = self.late = 0
        self.lat_values: list[float] = []
        self.lat_weights: list[int] = []
        self.nacks: dict[str, int] = {}
        self.closes: dict[str, int] = {}
        self.errors: list[str] = []
        self._offset = self.loop.time() - time.perf_counter()
        self.all_sent: asyncio.Future[None] = self.loop.create_future()
        self._done_streams = 0

    def stream_done(self) -> None:
        self._done_streams += 1
        if self._done_streams == len(self.streams) and not self.all_sent.done():
            self.all_sent.set_result(None)

    def to_loop_time(self, perf: float) -> float:
        return perf + self._offset

    def count_nack(self, reason: str, n: int) -> None:
        self.nacks[reason] = self.nacks.get(reason, 0) + n

    def count_close(self, code: int | None) -> None:
        key = str(code)
        self.closes[key] = self.closes.get(key, 0) + 1

    async def connect(self) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(stream: Stream) -> None:
            session_id = self.spec.session_ids[stream.index]
            url = f"{self.spec.ws_base}/v1/sessions/{session_id}/stream"
            headers = {"Authorization": f"Bearer {self.spec.tokens[stream.index]}"}
            async with gate:
                await ws_connect(
                    lambda: stream,
                    url,
                    extra_headers=headers,
                    websocket_handshake_timeout=CONNECT_TIMEOUT_S,
                    max_frame_size=1 << 24,
                )
                await asyncio.wait_for(stream.hello, CONNECT_TIMEOUT_S)

        outcomes = await asyncio.gather(*(one(s) for s in self.streams), return_exceptions=True)
        failed = [repr(o) for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise ConnectionError(f"{len(failed)} streams failed to open: {failed[:3]}")

    def progress(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "messages": self.messages,
            "nacks": sum(self.nacks.values()),
            "errors": len(self.errors),
        }

    async def report_progress(self) -> None:
        while self.conn is not None:
            await asyncio.sleep(self.spec.progress_s)
            self.conn.send({"progress": self.progress()})

    async def execute(self) -> LoadResult:
        spec = self.spec
        result = LoadResult(spec.target, len(self.streams), spec.duration_s or 0.0)
        await self.connect()
        if self.conn is not None:
            self.conn.send({"ready": len(self.streams)})
            await self.loop.run_in_executor(None, self.conn.recv)  # "start"
        reporter = asyncio.create_task(self.report_progress())
        try:
            if spec.idle:
                await self.loop.run_in_executor(None, self._wait_stop)
                return result
            await self._load(result)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            for stream in self.streams:
                if stream.transport is not None and not stream.transport.is_disconnected:
                    with contextlib.suppress(Exception):
                        stream.transport.send_close()
                        stream.transport.disconnect()
        return result

    def _wait_stop(self) -> None:
        assert self.conn is not None
        self.conn.recv()

    async def _load(self, result: LoadResult) -> None:
        spec = self.spec
        start = time.perf_counter()
        self.window_start = start + spec.warmup_s
        if spec.duration_s is not None:
            self.window_end = self.window_start + spec.duration_s
        # Paced streams start spread over one period, as independent callers would.
        period = spec.frames_per_message / spec.rate if spec.rate else 0.0
        n = len(self.streams)
        for stream in self.streams:
            stream.start(start + period * stream.index / n)
        if spec.duration_s is not None:
            await asyncio.sleep(max(0.0, self.window_end - time.perf_counter()))
            for stream in self.streams:
                stream.stop()
        else:
            await self.all_sent  # the window stays open: acks count until the last one
        elapsed = spec.duration_s or 0.0  # a session's is measured once it has drained
        outcomes = await asyncio.gather(
            *(s.drain(DRAIN_TIMEOUT_S) for s in self.streams), return_exceptions=True
        )
        self.errors += [f"drain: {o!r}" for o in outcomes if isinstance(o, BaseException)]
        if spec.duration_s is None:
            # Counted to the last ack: a long session is done when everything is acked.
            self.window_end = time.perf_counter()
            elapsed = self.window_end - self.window_start
        if spec.verify:
            checks = await asyncio.gather(
                *(s.finish(COMPLETE_TIMEOUT_S) for s in self.streams), return_exceptions=True
            )
            for check in checks:
                if isinstance(check, BaseException):
                    self.errors.append(f"complete: {check!r}")
                elif check:
                    result.streams_verified += 1
        result.duration_s = round(elapsed, 3)
        result.frames_sent = self.sent
        result.frames_acked = self.acked_in_window
        result.bytes_acked = self.acked_in_window * spec.frame_bytes
        result.messages_sent = self.messages
        result.frames_per_s = round(self.acked_in_window / elapsed, 1)
        result.mb_per_s = round(result.bytes_acked / elapsed / 1e6, 3)
        result.latency_ms = weighted_percentiles(self.lat_values, self.lat_weights)
        result.latency_hist_us = latency_histogram(self.lat_values, self.lat_weights)
        if spec.rate is not None:
            result.latency_ms["late_messages"] = self.late
        result.nacks = dict(self.nacks)
        result.closes = dict(self.closes)
        result.errors = self.errors[:20]
        result.per_stream_acked = [s.acked for s in self.streams]
        unacked = self.sent - self.acked
        if unacked:
            result.errors.append(f"{unacked} frames sent and never acked")


PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999))


def weighted_percentiles(values: list[float], weights: list[int]) -> dict[str, float]:
    """p50/p90/p95/p99/p99.9/max in ms of ``values`` (seconds), each counted ``weights`` times."""
    if not values:
        return {}
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(weights)
    out: dict[str, float] = {}
    marks = PERCENTILES
    seen = 0
    i = 0
    for value, weight in pairs:
        seen += weight
        while i < len(marks) and seen >= marks[i][1] * total:
            out[marks[i][0]] = round(value * 1000, 3)
            i += 1
    out["max"] = round(pairs[-1][0] * 1000, 3)
    out["n"] = total
    return out


def bucket_us(us: int) -> int:
    """The histogram bucket of ``us`` microseconds: exact below 1 ms, 3 significant digits above.

    The same rule as ``loadgen-rs/src/stats.rs``, so histograms of both drivers merge.
    """
    if us < 1000:
        return us
    factor = 1
    while us >= 1000 * factor:
        factor *= 10
    return (us + factor // 2) // factor * factor


def latency_histogram(values: list[float], weights: list[int]) -> list[list[int]]:
    """``[[bucket_us, frames], ...]`` in bucket order, of ``values`` in seconds."""
    counts: dict[int, int] = {}
    for value, weight in zip(values, weights, strict=True):
        key = bucket_us(max(0, round(value * 1e6)))
        counts[key] = counts.get(key, 0) + weight
    return [[key, counts[key]] for key in sorted(counts)]


def histogram_percentiles(pairs: list[list[int]]) -> dict[str, float]:
    """Percentiles in ms of a merged ``latency_hist_us`` (bucket values; no exact max)."""
    total = sum(count for _, count in pairs)
    if not total:
        return {}
    out: dict[str, float] = {}
    seen = 0
    i = 0
    for key, count in sorted(pairs):
        seen += count
        while i < len(PERCENTILES) and seen >= PERCENTILES[i][1] * total:
            out[PERCENTILES[i][0]] = round(key / 1000, 3)
            i += 1
    out["n"] = total
    return out


async def _client_stream(
    spec: LoadSpec, index: int, payload: bytes, start: asyncio.Event, result: LoadResult
) -> list[float]:
    """One timed stream driven by the real :class:`StreamClient`; returns its latency samples."""
    from voxgate.client import Backoff, StreamClient

    tokens = iter([spec.tokens[index]])

    async def token() -> str:
        return next(tokens)  # one pre-minted token: a reconnect fails the stream

    client = StreamClient(
        spec.ws_base.replace("ws://", "http://", 1),
        spec.session_ids[index],
        token,
        frames_per_message=spec.frames_per_message,
        backoff=Backoff(max_attempts=1),
        keepalive_s=None,
    )
    async with client:
        await start.wait()
        stop_at = time.perf_counter() + (spec.duration_s or 0.0)
        while time.perf_counter() < stop_at:
            await client.send(payload, 0)
        stats = client.stats
        result.frames_acked += stats.frames_acked + stats.duplicates
        result.messages_sent += stats.messages_sent
        for reason, count in stats.nacks.items():
            result.nacks[reason] = result.nacks.get(reason, 0) + count
        samples = list(stats.ack_latency_s)
        if spec.verify:
            await client.end()
            await client.wait_complete(COMPLETE_TIMEOUT_S)
            result.streams_verified += 1
        else:
            await asyncio.wait_for(client.flush(), DRAIN_TIMEOUT_S)
    return samples


async def _main_client(spec: LoadSpec, conn: Connection | None) -> LoadResult:
    """The timed run with ``driver="client"``: what voxgate's own client reaches."""
    if spec.duration_s is None or spec.rate is not None or spec.idle:
        raise ValueError("the client driver runs timed, credit-bound loads only")
    payload = os.urandom(spec.frame_bytes)
    result = LoadResult(spec.target, len(spec.session_ids), spec.duration_s)
    start = asyncio.Event()
    runs = [
        asyncio.create_task(_client_stream(spec, i, payload, start, result))
        for i in range(result.streams)
    ]
    await asyncio.sleep(1.0)  # connections open first; the clock starts after
    if conn is not None:
        conn.send({"ready": result.streams})
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    start.set()
    samples: list[float] = []
    for outcome in await asyncio.gather(*runs, return_exceptions=True):
        if isinstance(outcome, BaseException):
            result.errors.append(repr(outcome))
        else:
            samples += outcome
    result.bytes_acked = result.frames_acked * spec.frame_bytes
    result.frames_per_s = round(result.frames_acked / spec.duration_s, 1)
    result.mb_per_s = round(result.bytes_acked / spec.duration_s / 1e6, 3)
    result.latency_ms = weighted_percentiles(samples, [1] * len(samples))
    result.latency_hist_us = latency_histogram(samples, [1] * len(samples))
    return result


async def _main(spec: LoadSpec, conn: Connection | None) -> LoadResult:
    if spec.driver == "client":
        return await _main_client(spec, conn)
    return await Run(spec, conn).execute()


def generator_process(conn: Connection, spec: LoadSpec) -> None:
    """Entry point of the generator process: runs ``spec``, sends the result on ``conn``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        try:
            import uvloop

            result = uvloop.run(_main(spec, conn))
        except ImportError:
            result = asyncio.run(_main(spec, conn))
    except BaseException as exc:  # report, never hang the parent
        result = LoadResult(
            spec.target, len(spec.session_ids), spec.duration_s or 0.0, errors=[repr(exc)]
        )
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.generator_cpu_s = round(
        after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 3
    )
    with contextlib.suppress(OSError):
        conn.send({"result": asdict(result)})
        conn.close()
