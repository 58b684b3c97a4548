"""Client side of the wire for end-to-end tests: frames, the HTTP API and raw WebSocket streams.

Everything here talks to a real server exactly as docs/protocol.md describes, with
no voxgate client code in between, and checks the shape of every control
message it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from servers import Server
from voxgate._native import crc32c, encode_frame
from voxgate.wire import FLAG_END as FLAG_END
from voxgate.wire import FRAMES_CONTENT_TYPE as FRAMES_CONTENT_TYPE
from voxgate.wire import HEADER_FORMAT, SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX
from voxgate.wire import NACK_REASONS as NACK_REASONS

# docs/protocol.md, "Frames": magic, version, flags, seq, pts_us, length, crc32c.
HEADER = struct.Struct(HEADER_FORMAT)
PROBLEM_JSON = "application/problem+json"

Json = dict[str, Any]
TokenVia = Literal["header", "subprotocol", "query"]


# --- frames -------------------------------------------------------------------


def payload_for(tag: str, seq: int, size: int = 64) -> bytes:
    """A deterministic payload, different for every ``(tag, seq)`` and easy to find in files."""
    unit = f"<{tag}#{seq}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


def frame(seq: int, payload: bytes, *, end: bool = False) -> bytes:
    """A valid frame, encoded by voxgate's native codec."""
    return encode_frame(seq, payload, pts_us=seq * 20_000, end=end)


def raw_frame(
    seq: int,
    payload: bytes,
    *,
    magic: bytes = b"VF",
    version: int = 1,
    flags: int = 0,
    length: int | None = None,
    crc: int | None = None,
    pts_us: int = 0,
) -> bytes:
    """A frame built field by field with ``struct``, so that any field can be wrong."""
    header = HEADER.pack(
        magic,
        version,
        flags,
        seq,
        pts_us,
        len(payload) if length is None else length,
        crc32c(payload) if crc is None else crc,
    )
    return header + payload


def stream_crc(payloads: Iterable[bytes]) -> int:
    """CRC-32C of the payloads concatenated, as ``complete`` reports it."""
    value = 0
    for payload in payloads:
        value = crc32c(payload, value)
    return value


# --- ranges -------------------------------------------------------------------


def check_ranges(value: object, what: str = "ranges") -> list[list[int]]:
    """Assert the protocol's range shape: inclusive [first, last] pairs, sorted, disjoint."""
    assert isinstance(value, list), f"{what} is not a list: {value!r}"
    previous_last = -1
    for pair in value:
        is_pair = isinstance(pair, list) and len(pair) == 2
        is_pair = is_pair and all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        assert is_pair, f"{what}: {pair!r} is not an [first, last] pair of integers"
        first, last = pair
        assert 0 <= first <= last, f"{what}: {pair!r} is not an inclusive range"
        assert first > previous_last, f"{what} not sorted and non-overlapping: {value!r}"
        previous_last = last
    return value


def seqs_of(ranges: Iterable[list[int]]) -> set[int]:
    """Every seq the inclusive ranges cover."""
    return {seq for first, last in ranges for seq in range(first, last + 1)}


def subset(mapping: Json, expected: Json) -> Json:
    """The entries of ``mapping`` for the keys of ``expected`` (compare it with ``expected``)."""
    return {key: mapping.get(key, "<absent>") for key in expected}


def ranges_of(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted inclusive ranges covering exactly ``seqs``."""
    out: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if out and out[-1][1] + 1 == seq:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


# --- WebSocket stream ---------------------------------------------------------


@dataclass
class Answers:
    """What the server said about a set of frames: acks, duplicates and nacks by reason."""

    acked: set[int] = field(default_factory=set)
    duplicate: set[int] = field(default_factory=set)
    nacked: dict[str, set[int]] = field(default_factory=dict)
    windows: list[int] = field(default_factory=list)

    def verdict(self, seq: int) -> str | None:
        """The seq's verdict: acked, duplicate, a nack reason, or None if unanswered."""
        if seq in self.acked:
            return "acked"
        if seq in self.duplicate:
            return "duplicate"
        for reason, seqs in self.nacked.items():
            if seq in seqs:
                return reason
        return None

    def answered(self) -> set[int]:
        out = self.acked | self.duplicate
        for seqs in self.nacked.values():
            out |= seqs
        return out

    def summary(self) -> dict[str, list[list[int]]]:
        out = {"acked": ranges_of(self.acked), "duplicate": ranges_of(self.duplicate)}
        out.update({reason: ranges_of(seqs) for reason, seqs in self.nacked.items()})
        return out


class StreamClosed(AssertionError):
    """The server closed the stream while the test expected it open."""


class Stream:
    """One raw WebSocket stream connection, read and written message by message."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.hello: Json | None = None
        # Control messages read while looking for something else (complete, pong, ...).
        self.backlog: list[Json] = []

    # sending

    async def send(self, *frames: bytes) -> None:
        """Send ``frames`` back to back in one binary message."""
        await self.ws.send(b"".join(frames))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def send_json(self, message: Json) -> None:
        await self.ws.send(json.dumps(message))

    # receiving

    async def recv(self, within: float = 5.0) -> Json:
        """The next control message (backlog first); fails on a binary message or a timeout."""
        if self.backlog:
            return self.backlog.pop(0)
        return await self.recv_wire(within)

    async def recv_wire(self, within: float) -> Json:
        """The next control message off the wire; raises :class:`StreamClosed` on a close."""
        try:
            async with asyncio.timeout(within):
                data = await self.ws.recv()
        except TimeoutError:
            raise AssertionError(f"no message from the server within {within} s") from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else ""
            raise StreamClosed(f"server closed the stream: code {code} {reason!r}") from exc
        assert isinstance(data, str), f"server sent a binary message: {data[:64]!r}"
        message = json.loads(data)
        assert isinstance(message, dict), f"control message is not a JSON object: {data!r}"
        assert isinstance(message.get("type"), str), f"control message without type: {data!r}"
        return message

    async def recv_type(self, kind: str, within: float = 5.0) -> Json:
        """The next control message of type ``kind``, keeping others in the backlog."""
        for i, message in enumerate(self.backlog):
            if message["type"] == kind:
                return self.backlog.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            message = await self.recv_wire(max(0.0, deadline - loop.time()))
            if message["type"] == kind:
                return message
            if message["type"] == "error":
                raise AssertionError(f"server sent an error while waiting for {kind}: {message}")
            self.backlog.append(message)

    async def read_hello(self, within: float = 5.0) -> Json:
        """Read and check the ``hello`` that opens every stream (docs/protocol.md)."""
        hello = await self.recv_wire(within)
        assert hello["type"] == "hello", f"first message is not hello: {hello}"
        assert hello.get("protocol") == 1, hello
        assert isinstance(hello.get("session_id"), str), hello
        assert isinstance(hello.get("next_seq"), int), hello
        check_ranges(hello.get("missing"), "hello.missing")
        for key in ("window_bytes", "max_frame_bytes", "max_message_bytes"):
            assert isinstance(hello.get(key), int), f"hello.{key}: {hello}"
            # A window may be 0 under load (docs/protocol.md, credit); the limits may not.
            assert hello[key] >= (0 if key == "window_bytes" else 1), f"hello.{key}: {hello}"
        self.hello = hello
        return hello

    async def collect(self, seqs: Iterable[int], within: float = 10.0) -> Answers:
        """Read acks and nacks until every seq in ``seqs`` has an answer.

        Acks may be coalesced and arrive in any grouping. A seq answered two
        different ways, an ``error``, or a close fails the test. Other control
        messages (``complete``, ``pong``) go to the backlog.
        """
        want = set(seqs)
        answers = Answers()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not want <= answers.answered():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"no answer for seqs {ranges_of(want - answers.answered())} "
                    f"within {within} s; got {answers.summary()}"
                )
            try:
                message = await self.recv_wire(remaining)
            except StreamClosed as exc:
                raise StreamClosed(f"{exc}; answers so far {answers.summary()}") from exc
            kind = message["type"]
            if kind == "ack":
                acked = seqs_of(check_ranges(message.get("acked"), "ack.acked"))
                duplicate = seqs_of(check_ranges(message.get("duplicate"), "ack.duplicate"))
                window = message.get("window_bytes")
                assert isinstance(window, int), f"ack.window_bytes: {message}"
                assert window >= 0, f"ack.window_bytes: {message}"
                answers.windows.append(window)
                self._record(answers, acked, "acked")
                self._record(answers, duplicate, "duplicate")
            elif kind == "nack":
                reason = message.get("reason")
                assert reason in NACK_REASONS, f"unknown nack reason: {message}"
                nacked = seqs_of(check_ranges(message.get("ranges"), "nack.ranges"))
                assert nacked, f"nack without ranges: {message}"
                self._record(answers, nacked, str(reason))
            elif kind == "error":
                raise AssertionError(
                    f"server sent an error: {message}; answers {answers.summary()}"
                )
            else:
                self.backlog.append(message)
        return answers

    @staticmethod
    def _record(answers: Answers, seqs: set[int], verdict: str) -> None:
        for seq in seqs:
            before = answers.verdict(seq)
            assert before in (None, verdict), f"seq {seq} answered both {before} and {verdict}"
        if verdict == "acked":
            answers.acked |= seqs
        elif verdict == "duplicate":
            answers.duplicate |= seqs
        else:
            answers.nacked.setdefault(verdict, set()).update(seqs)

    async def expect_close(self, code: int, within: float = 5.0) -> list[Json]:
        """Read until the server closes; assert the close code and return what came before.

        For a 4xxx code the last message before the close must be an ``error``
        with a string ``code`` and ``message`` (docs/protocol.md, close codes).
        """
        messages: list[Json] = list(self.backlog)
        self.backlog.clear()
        try:
            async with asyncio.timeout(within):
                while True:
                    data = await self.ws.recv()
                    if isinstance(data, str):
                        messages.append(json.loads(data))
        except TimeoutError:
            raise AssertionError(
                f"server did not close within {within} s (expected {code}); got {messages}"
            ) from None
        except ConnectionClosed as exc:
            got = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else ""
            assert got == code, (
                f"close code {got} {reason!r}, expected {code}; messages before it: {messages}"
            )
        if code >= 4000:
            assert messages, f"close {code} without an error message before it"
            error = messages[-1]
            assert error.get("type") == "error", f"last message before close {code}: {error}"
            assert isinstance(error.get("code"), str), error
            assert error["code"], error
            assert isinstance(error.get("message"), str), error
        return messages

    async def drop(self) -> None:
        """Cut the TCP connection without a closing handshake, as a lost network would."""
        self.ws.transport.abort()
        await self.ws.wait_closed()

    async def close(self) -> None:
        await self.ws.close()


# --- HTTP API -----------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int) -> Json:
    """Assert an RFC 9457 problem details answer with ``status``."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url} answered "
        f"{response.status_code}, expected {status}: {response.text[:500]}"
    )
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(PROBLEM_JSON), f"content-type {content_type!r}, not problem+json"
    problem = response.json()
    assert isinstance(problem, dict), problem
    assert problem.get("status") == status, problem
    assert isinstance(problem.get("title"), str), problem
    return problem


class Api:
    """The management API (API key) and the stream and upload endpoints (tokens) of one server."""

    def __init__(self, server: Server, client: httpx.AsyncClient) -> None:
        self.server = server
        self.http = client
        self.streams: list[Stream] = []

    async def close_streams(self) -> None:
        """Close every stream this object opened (test teardown)."""
        for stream in self.streams:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.ws.close(), 5)
        self.streams.clear()

    async def create_session(self, **body: Any) -> Json:
        """``POST /v1/sessions``; asserts the 201 shape docs/protocol.md gives."""
        response = await self.http.post("/v1/sessions", json=body)
        assert response.status_code == 201, (
            f"create session: {response.status_code} {response.text}"
        )
        session = response.json()
        assert isinstance(session.get("id"), str), session
        assert session["id"], session
        assert session.get("state") == "open", session
        return dict(session)

    async def new_session(self, **body: Any) -> str:
        """The id of a fresh ``pcm_s16le`` session (or of ``body``'s kind)."""
        body.setdefault("codec", "pcm_s16le")
        body.setdefault("sample_rate", 16000)
        body.setdefault("channels", 1)
        return str((await self.create_session(**body))["id"])

    async def mint_token_response(
        self, session_id: str, ttl_s: int | None = None
    ) -> httpx.Response:
        body = {} if ttl_s is None else {"ttl_s": ttl_s}
        return await self.http.post(f"/v1/sessions/{session_id}/tokens", json=body)

    async def mint_token(self, session_id: str, ttl_s: int | None = None) -> str:
        """``POST /v1/sessions/{id}/tokens``; returns the token."""
        response = await self.mint_token_response(session_id, ttl_s)
        assert response.status_code == 201, f"mint token: {response.status_code} {response.text}"
        token = response.json().get("token")
        assert isinstance(token, str), response.text
        assert token, response.text
        return token

    async def get_session(self, session_id: str) -> Json:
        response = await self.http.get(f"/v1/sessions/{session_id}")
        assert response.status_code == 200, f"get session: {response.status_code} {response.text}"
        return dict(response.json())

    async def missing(self, session_id: str) -> Json:
        """``GET /v1/sessions/{id}/missing``, shape checked."""
        response = await self.http.get(f"/v1/sessions/{session_id}/missing")
        assert response.status_code == 200, f"missing: {response.status_code} {response.text}"
        report = dict(response.json())
        for key in ("next_seq", "frames", "bytes"):
            assert isinstance(report.get(key), int), f"missing.{key}: {report}"
        for key in ("ended", "complete"):
            assert isinstance(report.get(key), bool), f"missing.{key}: {report}"
        check_ranges(report.get("missing"), "missing.missing")
        return report

    async def stored_seqs(self, session_id: str) -> set[int]:
        """Seqs the server says it stores: below ``next_seq`` and not in ``missing``."""
        report = await self.missing(session_id)
        return set(range(report["next_seq"])) - seqs_of(report["missing"])

    async def audio(
        self,
        session_id: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return await self.http.get(
            f"/v1/sessions/{session_id}/audio", params=params or {}, headers=headers or {}
        )

    async def audio_bytes(self, session_id: str, allow_gaps: bool = False) -> bytes:
        params = {"allow_gaps": "true"} if allow_gaps else {}
        response = await self.audio(session_id, params)
        assert response.status_code == 200, f"audio: {response.status_code} {response.text[:300]}"
        return response.content

    async def upload(
        self,
        session_id: str,
        body: bytes | AsyncIterator[bytes],
        token: str | None = None,
    ) -> httpx.Response:
        """``POST /v1/sessions/{id}/frames`` with a fresh token unless one is given."""
        if token is None:
            token = await self.mint_token(session_id)
        return await self.http.post(
            f"/v1/sessions/{session_id}/frames",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": FRAMES_CONTENT_TYPE},
        )

    async def connect(
        self,
        session_id: str,
        token: str | None = None,
        *,
        via: TokenVia = "header",
        origin: str | None = None,
        mint: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Stream:
        """Open a raw stream; mints a token unless ``token`` is given or ``mint`` is False.

        Does not read ``hello``. The server must accept the upgrade: refusals
        are close codes after it (docs/protocol.md, close codes), not HTTP statuses.
        """
        if token is None and mint:
            token = await self.mint_token(session_id)
        url = f"{self.server.ws_url}/v1/sessions/{session_id}/stream"
        headers = dict(headers or {})
        subprotocols: list[Subprotocol] | None = None
        if token is not None:
            if via == "header":
                headers["Authorization"] = f"Bearer {token}"
            elif via == "subprotocol":
                subprotocols = [
                    Subprotocol(SUBPROTOCOL),
                    Subprotocol(f"{TOKEN_SUBPROTOCOL_PREFIX}{token}"),
                ]
            else:
                url += f"?token={token}"
        if origin is not None:
            headers["Origin"] = origin
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                subprotocols=subprotocols,
                compression=None,
                ping_interval=None,
                max_size=None,
                open_timeout=10,
                close_timeout=5,
            )
        except InvalidStatus as exc:
            raise AssertionError(
                f"WebSocket upgrade refused with HTTP {exc.response.status_code}: "
                f"{exc.response.body!r}; PROTOCOL wants the upgrade, then error and a close code"
            ) from exc
        stream = Stream(ws)
        self.streams.append(stream)
        return stream

    async def stream(self, session_id: str, **kwargs: Any) -> Stream:
        """Open a stream with a fresh token and read its ``hello``."""
        stream = await self.connect(session_id, **kwargs)
        hello = await stream.read_hello()
        assert hello["session_id"] == session_id, hello
        return stream

    async def send_all(
        self, stream: Stream, payloads: dict[int, bytes], end_seq: int | None = None
    ) -> Answers:
        """Send the frames one message each and collect their answers."""
        for seq, payload in payloads.items():
            await stream.send(frame(seq, payload, end=seq == end_seq))
        return await stream.collect(payloads)


# --- a continuous sender --------------------------------------------------------


class Sender:
    """Streams frames as fast as the credit allows, recording every answer.

    Meant for crash tests: ``acked`` only ever holds seqs the server acked (as
    new or duplicate), whatever happens to the connection, and ``run`` ends
    quietly when the server goes away.
    """

    def __init__(self, stream: Stream, payload: Callable[[int], bytes], batch: int = 4) -> None:
        self.stream = stream
        self.payload = payload
        self.batch = batch
        self.sent: set[int] = set()
        self.acked: set[int] = set()
        self.nacked: dict[str, set[int]] = {}
        self.complete: Json | None = None
        self.closed: str | None = None
        self._progress = asyncio.Event()
        self._inflight: dict[int, int] = {}
        # The credit the server grants now: hello's, then each ack's window_bytes.
        self.window = 0

    async def _read(self) -> None:
        try:
            while True:
                message = await self.stream.recv_wire(120)
                kind = message["type"]
                if kind == "ack":
                    done = seqs_of(check_ranges(message["acked"])) | seqs_of(
                        check_ranges(message["duplicate"])
                    )
                    self.acked |= done
                    for seq in done:
                        self._inflight.pop(seq, None)
                    self.window = int(message["window_bytes"])
                elif kind == "nack":
                    nacked = seqs_of(check_ranges(message["ranges"]))
                    self.nacked.setdefault(str(message["reason"]), set()).update(nacked)
                    for seq in nacked:
                        self._inflight.pop(seq, None)
                elif kind == "complete":
                    self.complete = message
                elif kind == "error":
                    self.closed = f"error {message}"
                self._progress.set()
        except StreamClosed as exc:
            self.closed = str(exc)
        finally:
            self._progress.set()

    def _may_send(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more keep the unacked bytes within half the current window."""
        if self.window <= 0:
            return False
        inflight = sum(self._inflight.values())
        return not inflight or inflight + nbytes <= self.window // 2

    async def run(self, seqs: Iterable[int], end_seq: int | None) -> None:
        """Send ``seqs`` in order, keeping at most half of the window unacked.

        The window starts as the stream's hello's ``window_bytes``; every ack's
        window replaces it (a window of 0 stops the sending until the server
        grants credit again).

        Returns when every frame got an answer (and ``complete`` came, if the
        last one is ``end_seq``), or when the connection is gone.
        """
        assert self.stream.hello is not None, "run() needs the stream's hello read first"
        order = list(seqs)
        self.window = int(self.stream.hello["window_bytes"])
        reader = asyncio.create_task(self._read())
        try:
            for start in range(0, len(order), self.batch):
                chunk = order[start : start + self.batch]
                payloads = {seq: self.payload(seq) for seq in chunk}
                nbytes = sum(len(payload) for payload in payloads.values())
                while not self._may_send(nbytes) and not reader.done():
                    self._progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._progress.wait(), 1.0)
                if reader.done():
                    return
                frames = []
                for seq, payload in payloads.items():
                    self._inflight[seq] = len(payload)
                    frames.append(frame(seq, payload, end=seq == end_seq))
                try:
                    await self.stream.send(*frames)
                except ConnectionClosed:
                    return
                self.sent.update(chunk)
            # Wait for the last answers (and complete), or the connection's end.
            want_complete = end_seq is not None and end_seq in order
            while not reader.done() and (
                self._inflight or (want_complete and self.complete is None)
            ):
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), 1.0)
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


async def wait_for_acks(sender: Sender, task: asyncio.Task[None], count: int) -> None:
    """Wait until ``sender`` has ``count`` acks (or its run ended); fails after 30 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(sender.acked) < count and not task.done():
        assert loop.time() < deadline, f"only {len(sender.acked)} acks in 30 s"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def api_for(server: Server) -> AsyncIterator[Api]:
    """An :class:`Api` on ``server`` with a fresh HTTP client (old keep-alive connections
    die with a restarted server); closes its streams at exit."""
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30.0,
    ) as client:
        api = Api(server, client)
        try:
            yield api
        finally:
            await api.close_streams()
