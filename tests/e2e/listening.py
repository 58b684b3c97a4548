"""Listener side of the wire for end-to-end tests: WebSocket listeners and SSE streams.

Every message is checked as it is read, against docs/api.md "Listeners":
audio frames come whole, with good CRCs, in seq order without a gap or a repeat
from the first seq asked for; transcript ids only grow; progress counters never
go back. A violation fails the test at the message that broke it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from servers import Server
from voxgate._native import FRAME_OK, StreamDecoder
from voxgate.wire import SUBPROTOCOL, TOKEN_SUBPROTOCOL_PREFIX

Json = dict[str, Any]
Via = Literal["header", "query", "subprotocol"]


class Heard:
    """Everything one listener received, in order, and the invariants checked on the way."""

    def __init__(self, from_seq: int | None, last_event_id: int) -> None:
        self.hello: Json | None = None
        self.events: list[Json] = []  # text events after hello
        self.frames: list[tuple[int, int, int, bytes]] = []  # (seq, flags, pts_us, payload)
        self.next_audio = from_seq
        self.last_id = last_event_id
        self.next_seq = 0
        self.frame_count = 0

    def take_event(self, event: Json) -> None:
        kind = event.get("type")
        assert isinstance(kind, str), f"event without type: {event}"
        if self.hello is None:
            assert kind == "hello", f"first event is not hello: {event}"
            self.hello = event
            self.next_seq, self.frame_count = event["next_seq"], event["frames"]
            return
        if kind == "transcript":
            assert event["id"] > self.last_id, f"transcript {event['id']} after {self.last_id}"
            self.last_id = event["id"]
        elif kind == "progress":
            assert event["next_seq"] >= self.next_seq, f"next_seq went back: {event}"
            assert event["frames"] >= self.frame_count, f"frames went back: {event}"
            self.next_seq, self.frame_count = event["next_seq"], event["frames"]
        self.events.append(event)

    def take_audio(self, data: bytes) -> None:
        assert self.next_audio is not None, "audio for a listener that did not ask for it"
        decoder = StreamDecoder(1 << 24)
        frames = decoder.feed(data)
        decoder.finish()  # a message holds whole frames only
        assert frames, "empty audio message"
        for seq, flags, pts_us, payload, _, verdict in frames:
            assert verdict == FRAME_OK, f"frame {seq} arrived with a bad CRC"
            assert payload is not None
            assert seq == self.next_audio, f"frame {seq} arrived, expected {self.next_audio}"
            self.next_audio = seq + 1
            self.frames.append((seq, flags, pts_us, payload))

    def of_type(self, kind: str) -> list[Json]:
        return [event for event in self.events if event["type"] == kind]

    @property
    def transcripts(self) -> list[Json]:
        return self.of_type("transcript")

    @property
    def progress(self) -> list[Json]:
        return self.of_type("progress")

    @property
    def states(self) -> list[str]:
        return [event["state"] for event in self.of_type("state")]

    def latest(self) -> Json:
        """The hello merged with every progress event since: the listener's current view."""
        assert self.hello is not None
        view = dict(self.hello)
        for event in self.progress:
            view.update(event)
        return view


def listen_query(
    *, audio: bool, from_seq: int | None, last_event_id: int | None, token: str | None
) -> str:
    params = []
    if audio:
        params.append("audio=true")
    if from_seq is not None:
        params.append(f"from_seq={from_seq}")
    if last_event_id is not None:
        params.append(f"last_event_id={last_event_id}")
    if token is not None:
        params.append(f"token={token}")
    return "?" + "&".join(params) if params else ""


class WsListener:
    """A WebSocket listener (``/v1/sessions/{id}/listen``) and what it heard."""

    def __init__(self, ws: ClientConnection, heard: Heard) -> None:
        self.ws = ws
        self.heard = heard
        self.close_code: int | None = None
        self.close_reason = ""
        self.error: Json | None = None

    @classmethod
    async def open(
        cls,
        server: Server,
        session_id: str,
        *,
        key: str | None = None,
        token: str | None = None,
        via: Via = "header",
        audio: bool = False,
        from_seq: int | None = None,
        last_event_id: int | None = None,
        max_queue: int | None = 64,
        read_hello: bool = True,
        rcvbuf: int | None = None,
    ) -> WsListener:
        """Connect with the API key (default) or ``token``; reads ``hello`` unless told not to.

        ``rcvbuf`` shrinks the client socket's receive buffer, so that a listener
        reading slowly makes the server's sends wait sooner.
        """
        headers: dict[str, str] = {}
        subprotocols: list[Subprotocol] | None = None
        query_token = None
        credential = token if token is not None else (key or server.api_key)
        if token is None or via == "header":
            headers["Authorization"] = f"Bearer {credential}"
        elif via == "query":
            query_token = token
        else:
            subprotocols = [
                Subprotocol(SUBPROTOCOL),
                Subprotocol(f"{TOKEN_SUBPROTOCOL_PREFIX}{token}"),
            ]
        query = listen_query(
            audio=audio, from_seq=from_seq, last_event_id=last_event_id, token=query_token
        )
        extra: dict[str, Any] = {}
        if rcvbuf is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.connect(("127.0.0.1", server.port))
            extra["sock"] = sock
        ws = await connect(
            f"{server.ws_url}/v1/sessions/{session_id}/listen{query}",
            additional_headers=headers,
            subprotocols=subprotocols,
            max_size=None,
            max_queue=max_queue,
            ping_interval=None,
            open_timeout=10,
            close_timeout=5,
            compression=None,
            **extra,
        )
        listener = cls(ws, Heard((from_seq or 0) if audio else None, last_event_id or 0))
        if read_hello:
            await listener.recv()
            assert listener.heard.hello is not None, f"no hello: {listener.error}"
        return listener

    async def recv(self, within: float = 10.0) -> bool:
        """Read one message; False once the server closed (code and error recorded)."""
        if self.close_code is not None:
            return False
        try:
            async with asyncio.timeout(within):
                data = await self.ws.recv()
        except TimeoutError:
            raise AssertionError(f"listener heard nothing within {within} s") from None
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else 1006
            self.close_reason = exc.rcvd.reason if exc.rcvd else ""
            return False
        if isinstance(data, bytes):
            self.heard.take_audio(data)
            return True
        event = json.loads(data)
        if event.get("type") == "error":
            assert isinstance(event.get("code"), str), event
            assert isinstance(event.get("message"), str), event
            self.error = event
        elif event.get("type") == "pong":
            self.heard.events.append(event)
        else:
            self.heard.take_event(event)
        return True

    async def until(self, done: Callable[[Heard], bool], within: float = 20.0) -> None:
        """Read until ``done(heard)``; fails on a timeout or a close first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not done(self.heard):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {within} s; {self.summary()}")
            if not await self.recv(remaining):
                raise AssertionError(
                    f"closed with {self.close_code} {self.error} before the condition; "
                    f"{self.summary()}"
                )

    async def until_closed(self, within: float = 20.0) -> int:
        """Read everything until the server closes; the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await self.recv(max(0.01, deadline - loop.time())):
            pass
        assert self.close_code is not None
        return self.close_code

    def summary(self) -> str:
        heard = self.heard
        return (
            f"heard {len(heard.events)} events, {len(heard.frames)} frames "
            f"(next audio {heard.next_audio}), transcripts up to {heard.last_id}, "
            f"last event {heard.events[-1] if heard.events else heard.hello}"
        )

    async def send_json(self, message: Json) -> None:
        await self.ws.send(json.dumps(message))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


class SseListener:
    """A Server-Sent Events listener (``/v1/sessions/{id}/events``) read in a task."""

    def __init__(self, response: httpx.Response, heard: Heard) -> None:
        self.response = response
        self.heard = heard
        self.ids: list[int] = []  # SSE ids seen, in order
        self.errors: list[Json] = []
        self.comments = 0
        self.ended = False
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        http: httpx.AsyncClient,
        session_id: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        last_event_id: int = 0,
    ) -> AsyncIterator[SseListener]:
        async with http.stream(
            "GET", f"/v1/sessions/{session_id}/events", headers=headers or {}, params=params or {}
        ) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            listener = cls(response, Heard(None, last_event_id))
            try:
                yield listener
            finally:
                listener._task.cancel()
                with contextlib.suppress(BaseException):
                    await listener._task

    async def _read(self) -> None:
        kind, data, event_id = "message", "", None
        try:
            async for line in self.response.aiter_lines():
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event: "):
                    kind = line[len("event: ") :]
                elif line.startswith("data: "):
                    data = line[len("data: ") :]
                elif line.startswith("id: "):
                    event_id = int(line[len("id: ") :])
                elif line == "" and data:
                    event = json.loads(data)
                    if kind == "error":
                        self.errors.append(event)
                    else:
                        assert event["type"] == kind, f"event {kind} carries {event}"
                        if event_id is not None:
                            assert kind == "transcript", f"id on a {kind} event"
                            assert event_id == event["id"], (event_id, event)
                            self.ids.append(event_id)
                        self.heard.take_event(event)
                    kind, data, event_id = "message", "", None
                    self._changed.set()
        finally:
            self.ended = True
            self._changed.set()

    async def until(self, done: Callable[[SseListener], bool], within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while not done(self):
                if self._task.done():
                    self._task.result()  # re-raise a failed check
                    raise AssertionError(f"SSE stream ended: errors {self.errors}")
                self._changed.clear()
                await self._changed.wait()
