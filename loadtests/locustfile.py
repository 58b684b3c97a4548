"""Locust load test: management API users and real-time streaming users.

    VOXGATE_API_KEY=... locust -f loadtests/locustfile.py --host http://127.0.0.1:8000

- ``ApiUser`` creates sessions, mints tokens, relays transcripts (only when the
  server has a transcripts endpoint: it reads the server's OpenAPI document
  once and fills the request body from its schema) and reads missing reports.
- ``StreamUser`` opens one session and streams 20 ms frames of 640 bytes in
  real time, ``STREAM_FRAMES_PER_MESSAGE`` frames per message, over a
  gevent-friendly WebSocket client (websocket-client; locust's gevent patches
  make its socket cooperative). Each acked frame is reported as a request
  ``WS frame->ack`` whose response time is the time from sending the frame's
  message to the ack covering it. Nacks, errors and closes are failures. When
  the user stops it ends the stream and checks ``complete``'s stream CRC.

Settings (environment): ``VOXGATE_API_KEY``, ``STREAM_FRAMES_PER_MESSAGE`` (5),
``STREAM_FRAME_MS`` (20), ``STREAM_FRAME_BYTES`` (640).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from typing import Any

import gevent  # type: ignore[import-untyped]
import orjson
import websocket  # websocket-client
from locust import FastHttpUser, User, between, events, task

from transcripts import OPENAPI_PATH, find, session_path
from voxgate import _native

API_KEY = os.environ.get("VOXGATE_API_KEY", "")
FRAMES_PER_MESSAGE = int(os.environ.get("STREAM_FRAMES_PER_MESSAGE", "5"))
FRAME_MS = float(os.environ.get("STREAM_FRAME_MS", "20"))
FRAME_BYTES = int(os.environ.get("STREAM_FRAME_BYTES", "640"))
FRAME_TO_ACK = "frame->ack"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class Transcripts:
    """Whether the server relays transcripts, found out once per process."""

    _lock = threading.Lock()
    _probed = False
    path: str | None = None
    body: Any = None

    @classmethod
    def probe(cls, client: Any) -> None:
        with cls._lock:
            if cls._probed:
                return
            cls._probed = True
            with client.get(OPENAPI_PATH, name="openapi", catch_response=True) as got:
                if got.status_code != 200:
                    got.success()  # no OpenAPI document: no transcripts either
                    return
                document = got.json()
                got.success()
            found = find(document)
            if found is not None:
                cls.path, cls.body = found


class ApiUser(FastHttpUser):
    """Management calls: sessions, tokens, transcripts (when present), missing reports."""

    weight = 1
    wait_time = between(0.2, 0.5)

    def on_start(self) -> None:
        Transcripts.probe(self.client)
        self.session_id: str | None = None
        self.new_session()

    def new_session(self) -> None:
        created = self.client.post(
            "/v1/sessions", json={"codec": "pcm_s16le", "sample_rate": 16000}, headers=AUTH
        )
        self.session_id = created.json()["id"] if created.status_code == 201 else None

    @task(2)
    def create_session(self) -> None:
        self.new_session()

    @task(3)
    def mint_token(self) -> None:
        if self.session_id is not None:
            self.client.post(
                f"/v1/sessions/{self.session_id}/tokens",
                json={"ttl_s": 60},
                headers=AUTH,
                name="/v1/sessions/[id]/tokens",
            )

    @task(3)
    def relay_transcript(self) -> None:
        if Transcripts.path is None or self.session_id is None:
            return
        path = session_path(Transcripts.path, self.session_id)
        self.client.post(path, json=Transcripts.body, headers=AUTH, name=Transcripts.path)

    @task(3)
    def read_missing(self) -> None:
        if self.session_id is not None:
            self.client.get(
                f"/v1/sessions/{self.session_id}/missing",
                headers=AUTH,
                name="/v1/sessions/[id]/missing",
            )


class StreamUser(User):
    """One real-time stream per user; every acked frame is a locust request."""

    weight = 3

    def on_start(self) -> None:
        self.payload = os.urandom(FRAME_BYTES)
        self.frame_crc = _native.crc32c(self.payload)
        self.pending: deque[list[float]] = deque()  # [frames, sent at]
        self.next_seq = 0
        self.complete: dict[str, Any] | None = None
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.closed = False
        self.open_stream()

    def _fire(self, name: str, ms: float, length: int, exc: BaseException | None) -> None:
        events.request.fire(  # type: ignore[no-untyped-call]
            request_type="WS",
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
        )

    def open_stream(self) -> None:
        import requests

        base = (self.host or "").rstrip("/")
        start = time.perf_counter()
        try:
            created = requests.post(
                f"{base}/v1/sessions", json={"codec": "pcm_s16le"}, headers=AUTH, timeout=30
            )
            created.raise_for_status()
            self.session_id = created.json()["id"]
            minted = requests.post(
                f"{base}/v1/sessions/{self.session_id}/tokens", json={}, headers=AUTH, timeout=30
            )
            minted.raise_for_status()
            url = base.replace("http", "ws", 1) + f"/v1/sessions/{self.session_id}/stream"
            self.ws = websocket.create_connection(
                url, header=[f"Authorization: Bearer {minted.json()['token']}"], timeout=30
            )
            hello = orjson.loads(self.ws.recv())
            if hello.get("type") != "hello":
                raise RuntimeError(f"expected hello, got {hello}")
            self.window = int(hello["window_bytes"])
        except Exception as exc:
            self._fire("open stream", (time.perf_counter() - start) * 1000, 0, exc)
            raise
        self._fire("open stream", (time.perf_counter() - start) * 1000, 0, None)
        self.reader = gevent.spawn(self.read_acks)

    def read_acks(self) -> None:
        assert self.ws is not None
        while not self.closed:
            try:
                raw = self.ws.recv()
            except Exception as exc:
                if not self.closed:
                    self._fire("stream closed", 0, 0, exc)
                return
            if not raw:
                if not self.closed:
                    self._fire("stream closed", 0, 0, RuntimeError("server closed the stream"))
                return
            message = orjson.loads(raw)
            kind = message["type"]
            if kind == "ack":
                now = time.perf_counter()
                done = sum(b - a + 1 for a, b in message["acked"] + message["duplicate"])
                while done and self.pending:
                    entry = self.pending[0]
                    take = min(done, int(entry[0]))
                    ms = (now - entry[1]) * 1000
                    for _ in range(take):
                        self._fire(FRAME_TO_ACK, ms, FRAME_BYTES, None)
                    entry[0] -= take
                    done -= take
                    if not entry[0]:
                        self.pending.popleft()
            elif kind == "nack":
                count = sum(b - a + 1 for a, b in message["ranges"])
                for _ in range(count):
                    self._fire(FRAME_TO_ACK, 0, 0, RuntimeError(f"nack {message['reason']}"))
            elif kind == "complete":
                self.complete = message
            elif kind == "error":
                self._fire("stream error", 0, 0, RuntimeError(str(message)))

    @task
    def stream(self) -> None:
        """Send one message of real-time audio, then wait for the next one's due time."""
        assert self.ws is not None
        seq = self.next_seq
        message = b"".join(
            _native.encode_frame(s, self.payload) for s in range(seq, seq + FRAMES_PER_MESSAGE)
        )
        self.next_seq += FRAMES_PER_MESSAGE
        self.pending.append([FRAMES_PER_MESSAGE, time.perf_counter()])
        try:
            self.ws.send_binary(message)
        except Exception as exc:
            self._fire("send", 0, 0, exc)
            raise
        gevent.sleep(FRAMES_PER_MESSAGE * FRAME_MS / 1000)

    def on_stop(self) -> None:
        """END the stream; ``complete`` must carry the CRC of everything sent."""
        if self.ws is None:
            return
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            self.ws.send_binary(_native.encode_frame(self.next_seq, b"", 0, True))
            deadline = time.monotonic() + 15
            while self.complete is None and time.monotonic() < deadline:
                gevent.sleep(0.05)
            expected = 0
            for _ in range(self.next_seq):
                expected = _native.crc32c_combine(expected, self.frame_crc, FRAME_BYTES)
            if self.complete is None:
                error = TimeoutError("no complete within 15 s of END")
            elif self.complete["stream_crc32c"] != expected:
                error = RuntimeError(f"stream CRC mismatch: {self.complete}")
        except Exception as exc:
            error = exc
        self._fire("end->complete", (time.perf_counter() - start) * 1000, 0, error)
        self.closed = True
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.reader is not None:
            self.reader.kill(block=False)
