"""Twilio Media Streams into voxgate, end to end against real server processes.

The client here is written from Twilio's published message formats, not from
voxgate's code. The shapes below are Twilio's own, as its Media Streams
documentation ("Media Streams - WebSocket Messages") and a call recorded in
twilio/media-streams (node/connect-basic/output.txt) show them:

    {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    {"event": "start", "sequenceNumber": "1",
     "start": {"accountSid": "AC...", "streamSid": "MZ...", "callSid": "CA...",
               "tracks": ["inbound"],
               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
               "customParameters": {"aCutomParameter": "aCustomValue that was set in TwiML"}},
     "streamSid": "MZ..."}
    {"event": "media", "sequenceNumber": "2",
     "media": {"track": "inbound", "chunk": "1", "timestamp": "52", "payload": "6/jk2NbZ..."},
     "streamSid": "MZ..."}
    {"event": "mark", "sequenceNumber": "103", "streamSid": "MZ...",
     "mark": {"name": "Repeat message 0"}}
    {"event": "dtmf", "streamSid": "MZ...", "sequenceNumber": "5",
     "dtmf": {"track": "inbound_track", "digit": "1"}}
    {"event": "stop", "sequenceNumber": "5",
     "stop": {"accountSid": "AC...", "callSid": "CA..."}, "streamSid": "MZ..."}

Every value is a string except the media format's numbers; chunks count from
"1" and timestamps are milliseconds since the stream started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import importlib.util
import json
import math
import re
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from litestar.testing import AsyncTestClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from e2e.wire import Api, api_for, assert_problem
from servers import Server, start_server
from voxgate.cli.stream import add_stream_command, run_stream_command
from voxgate.g711 import linear_to_ulaw

Json = dict[str, Any]
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-for-tests"
PUBLIC_URL = "https://voice.example.test"
CHUNK_BYTES = 160  # 20 ms of 8 kHz mu-law, what Twilio sends per media message
CALL_CHUNKS = 150  # 3 s


def tone(chunks: int, hz: float = 440.0, amplitude: int = 12000) -> list[int]:
    """16-bit samples of a sine at 8 kHz, ``chunks`` * 20 ms long."""
    return [
        int(amplitude * math.sin(2 * math.pi * hz * n / 8000)) for n in range(chunks * CHUNK_BYTES)
    ]


def mulaw_chunks(samples: list[int]) -> list[bytes]:
    encoded = bytes(linear_to_ulaw(s) for s in samples)
    return [encoded[i : i + CHUNK_BYTES] for i in range(0, len(encoded), CHUNK_BYTES)]


def metric(server: Server, name: str) -> float:
    """A sample's value from ``/metrics`` (0 when absent)."""
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def twilio_signature(url: str) -> str:
    """X-Twilio-Signature of a request without POST parameters: base64 HMAC-SHA1 of the URL."""
    digest = hmac.new(AUTH_TOKEN.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class TwilioCall:
    """One Media Stream as Twilio's side sends it."""

    def __init__(self, ws: ClientConnection, call_sid: str, stream_sid: str) -> None:
        self.ws = ws
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.sequence = 0
        self.chunk = 0
        self.received: list[str | bytes] = []

    def _next(self) -> str:
        self.sequence += 1
        return str(self.sequence)

    async def send(self, message: Json) -> None:
        await self.ws.send(json.dumps(message))

    async def connected(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    async def start(self, custom: dict[str, str], tracks: list[str] | None = None) -> None:
        await self.send(
            {
                "event": "start",
                "sequenceNumber": self._next(),
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": tracks or ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": custom,
                },
                "streamSid": self.stream_sid,
            }
        )

    def media_message(self, payload: bytes, track: str = "inbound") -> Json:
        self.chunk += 1
        return {
            "event": "media",
            "sequenceNumber": self._next(),
            "media": {
                "track": track,
                "chunk": str(self.chunk),
                "timestamp": str((self.chunk - 1) * 20),
                "payload": base64.b64encode(payload).decode(),
            },
            "streamSid": self.stream_sid,
        }

    async def media(self, payload: bytes) -> None:
        await self.send(self.media_message(payload))

    async def mark(self, name: str) -> None:
        await self.send(
            {
                "event": "mark",
                "sequenceNumber": self._next(),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    async def dtmf(self, digit: str) -> None:
        await self.send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> None:
        await self.send(
            {
                "event": "stop",
                "sequenceNumber": self._next(),
                "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )

    async def closed(self, within: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; the close code and reason (what came before is
        kept in ``received``)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    self.received.append(await self.ws.recv())
        except TimeoutError:
            raise AssertionError(f"server did not close within {within} s") from None
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return None, ""
            return exc.rcvd.code, exc.rcvd.reason


@asynccontextmanager
async def call(
    server: Server,
    n: int = 1,
    headers: dict[str, str] | None = None,
    scheme: str = "ws",
    cafile: Path | None = None,
) -> AsyncIterator[TwilioCall]:
    url = f"{scheme}://127.0.0.1:{server.port}/v1/twilio/stream"
    ssl_context = ssl.create_default_context(cafile=str(cafile)) if scheme == "wss" else None
    async with connect(
        url,
        additional_headers=headers or {},
        compression=None,
        ping_interval=None,
        open_timeout=10,
        close_timeout=5,
        ssl=ssl_context,
    ) as ws:
        yield TwilioCall(ws, f"CA{n:032x}", f"MZ{n:032x}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(tmp_path_factory.mktemp("twilio")) as running:
        yield running


@pytest.fixture(scope="module")
def signed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"VOXGATE_TWILIO_AUTH_TOKEN": AUTH_TOKEN, "VOXGATE_PUBLIC_URL": PUBLIC_URL}
    with start_server(tmp_path_factory.mktemp("twilio-signed"), env=env) as running:
        yield running


async def mulaw_session(api: Api) -> tuple[str, str]:
    session_id = await api.new_session(codec="mulaw", sample_rate=8000, channels=1)
    return session_id, await api.mint_token(session_id)


def parse_wav(data: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """The chunks of a RIFF/WAVE file before ``data``, and the data chunk's bytes."""
    assert (data[:4], data[8:12]) == (b"RIFF", b"WAVE"), data[:12]
    riff_size = struct.unpack_from("<I", data, 4)[0]
    assert riff_size == len(data) - 8, (riff_size, len(data))
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset < len(data):
        name, size = struct.unpack_from("<4sI", data, offset)
        body = data[offset + 8 : offset + 8 + size]
        if name == b"data":
            assert len(body) == size, "data chunk shorter than its header says"
            return chunks, body
        chunks[name] = body
        offset += 8 + size + (size & 1)
    raise AssertionError(f"no data chunk; chunks {list(chunks)}")


async def stream_call(
    server: Server, custom: dict[str, str], payloads: list[bytes], n: int = 1, **kw: Any
) -> tuple[int | None, str, list[str | bytes]]:
    """A whole call: connected, start, the media (a mark and a dtmf midway), stop."""
    async with call(server, n, **kw) as twilio:
        await twilio.connected()
        await twilio.start(custom)
        for i, payload in enumerate(payloads):
            await twilio.media(payload)
            if i == len(payloads) // 2:
                await twilio.mark("greeting-played")
                await twilio.dtmf("7")
        await twilio.stop()
        code, reason = await twilio.closed()
        return code, reason, twilio.received


# --- a call with a stream token --------------------------------------------------------


async def test_call_streams_into_the_session_and_downloads_as_mulaw_wav(server: Server) -> None:
    samples = tone(CALL_CHUNKS)
    payloads = mulaw_chunks(samples)
    async with api_for(server) as api:
        session_id, token = await mulaw_session(api)
        custom = {"session_id": session_id, "token": token, "caller": "+15550001111"}
        code, reason, received = await stream_call(server, custom, payloads)
        # After stop the server ends the call itself once the session is complete, and it
        # never sends Twilio voxgate's own control messages.
        assert (code, received) == (1000, []), (code, reason, received)
        counted = metric(server, 'voxgate_twilio_messages_total{event="media"}')
        assert counted >= CALL_CHUNKS, counted
        session = await api.get_session(session_id)
        assert session["state"] == "complete", session
        assert (session["frames"], session["bytes"]) == (CALL_CHUNKS + 1, CALL_CHUNKS * 160)

        wav = await api.audio(session_id, {"format": "wav"})
        assert wav.status_code == 200, wav.text
        assert wav.headers["content-type"].startswith("audio/wav")
        chunks, data = parse_wav(wav.content)
        tag, channels, rate, byte_rate, align, bits = struct.unpack_from("<HHIIHH", chunks[b"fmt "])
        assert (tag, channels, rate, byte_rate, align, bits) == (7, 1, 8000, 8000, 1, 8)
        assert struct.unpack("<I", chunks[b"fact"]) == (len(data),)
        assert data == b"".join(payloads)

        pcm = await api.audio(session_id, {"format": "wav", "encoding": "pcm_s16le"})
        assert pcm.status_code == 200, pcm.text
        chunks, data = parse_wav(pcm.content)
        assert struct.unpack_from("<HHIIHH", chunks[b"fmt "]) == (1, 1, 8000, 16000, 2, 16)
        decoded = struct.unpack(f"<{len(data) // 2}h", data)
        assert len(decoded) == len(samples)
        # mu-law keeps about 13 bits: the error grows with the magnitude, within 1/16 of it.
        worst = max(abs(d - s) - abs(s) / 16 for d, s in zip(decoded, samples, strict=True))
        assert worst <= 8, worst

        # A range of the decoded variant is the same bytes as that part of the whole.
        part = await api.audio(
            session_id,
            {"format": "wav", "encoding": "pcm_s16le"},
            headers={"Range": "bytes=101-2000"},
        )
        assert part.status_code == 206, part.text
        assert part.content == pcm.content[101:2001]
        assert part.headers["content-range"] == f"bytes 101-2000/{len(pcm.content)}"


async def test_raw_download_and_decoding_refused_for_other_codecs(server: Server) -> None:
    async with api_for(server) as api:
        opus = await api.new_session(codec="opus", sample_rate=48000, channels=1)
        answer = await api.audio(opus, {"format": "raw", "encoding": "pcm_s16le"})
        assert_problem(answer, 422)
        answer = await api.audio(opus, {"format": "wav"})
        assert_problem(answer, 422)


async def test_dropped_call_leaves_the_session_open(server: Server) -> None:
    payloads = mulaw_chunks(tone(10))
    async with api_for(server) as api:
        session_id, token = await mulaw_session(api)
        async with call(server, 2) as twilio:
            await twilio.connected()
            await twilio.start({"session_id": session_id, "token": token})
            for payload in payloads:
                await twilio.media(payload)
            # A ping answered means the media before it were read.
            await asyncio.wait_for(await twilio.ws.ping(), 5)
            twilio.ws.transport.abort()
        for _ in range(100):
            session = await api.get_session(session_id)
            if session["frames"] == len(payloads):
                break
            await asyncio.sleep(0.05)
        assert session["state"] == "open", session
        assert session["frames"] == len(payloads), session
        assert await api.audio_bytes(session_id) == b"".join(payloads)


def doc_block(language: str, marker: str) -> str:
    """The code block of docs/clients.md in ``language`` that contains ``marker``."""
    text = (Path(__file__).parents[2] / "docs" / "clients.md").read_text()
    found = [b for b in re.findall(rf"```{language}\n(.*?)```", text, re.S) if marker in b]
    assert len(found) == 1, f"one {language} block with {marker!r} expected in docs/clients.md"
    block: str = found[0]
    return block


async def test_clients_doc_backend_answers_a_call_that_then_streams(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The webhook of docs/clients.md, as written: its TwiML carries a session and a token
    that a call then streams with."""
    monkeypatch.setenv("VOXGATE_URL", server.base_url)
    monkeypatch.setenv("VOXGATE_API_KEY", server.api_key)
    path = tmp_path / "calls.py"
    path.write_text(doc_block("python", "calls.py"))
    spec = importlib.util.spec_from_file_location("doc_twilio_calls", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Litestar resolves annotations through sys.modules
    spec.loader.exec_module(module)
    async with AsyncTestClient(app=module.app) as backend:
        # Twilio's voice webhook: a form POST with the call's parameters.
        answer = await backend.post(
            "/twilio/voice", data={"CallSid": f"CA{21:032x}", "From": "+15550003333"}
        )
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"].startswith("text/xml")
    stream = ElementTree.fromstring(answer.text).find("./Connect/Stream")
    assert stream is not None, answer.text
    assert stream.get("url", "").endswith("/v1/twilio/stream"), answer.text
    custom = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    assert set(custom) == {"session_id", "token"}, custom
    payloads = mulaw_chunks(tone(20))
    code, reason, received = await stream_call(server, custom, payloads, n=21)
    assert (code, received) == (1000, []), (code, reason, received)
    async with api_for(server) as api:
        session = await api.get_session(custom["session_id"])
    assert session["state"] == "complete", session
    assert session["metadata"]["callSid"] == f"CA{21:032x}", session


def mulaw_wav(data: bytes) -> bytes:
    """A WAV file of 8 kHz mono mu-law (format tag 7), written field by field."""
    fmt = struct.pack("<HHIIHHH", 7, 1, 8000, 8000, 1, 8, 0)
    fact = struct.pack("<I", len(data))
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"fact" + struct.pack("<I", 4) + fact
        + b"LIST" + struct.pack("<I", 4) + b"INFO"  # a chunk readers must skip
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip
    return b"RIFF" + struct.pack("<I", len(body)) + body


async def run_cli(server: Server, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_stream_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["stream", *argv, "--url", server.base_url, "--api-key", server.api_key]
    )
    return await run_stream_command(args)


@pytest.mark.parametrize("kind", ["call.ulaw", "call.mulaw", "call.wav"])
async def test_cli_streams_mulaw_files(server: Server, tmp_path: Path, kind: str) -> None:
    audio = b"".join(mulaw_chunks(tone(30)))
    path = tmp_path / kind
    path.write_bytes(mulaw_wav(audio) if kind.endswith(".wav") else audio)
    async with api_for(server) as api:
        session_id = await api.new_session(codec="mulaw", sample_rate=8000, channels=1)
        assert await run_cli(server, str(path), "--session", session_id) == 0
        session = await api.get_session(session_id)
        # 20 ms frames of 160 bytes (the last one carries END); the WAV header is not audio.
        got = (session["state"], session["frames"], session["bytes"])
        assert got == ("complete", 30, len(audio)), session
        assert await api.audio_bytes(session_id) == audio


async def test_cli_refuses_a_mulaw_file_for_a_pcm_session(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "call.ulaw"
    path.write_bytes(b"\xff" * 1600)
    async with api_for(server) as api:
        session_id = await api.new_session()  # pcm_s16le
        assert await run_cli(server, str(path), "--session", session_id) == 2
        assert "mulaw" in capsys.readouterr().err
        assert (await api.get_session(session_id))["frames"] == 0


# --- refusals and faults -------------------------------------------------------------------


async def refused(server: Server, custom: dict[str, str], **kw: Any) -> tuple[int | None, str]:
    async with call(server, 9, **kw) as twilio:
        await twilio.connected()
        await twilio.start(custom)
        await twilio.media(b"\xff" * CHUNK_BYTES)
        return await twilio.closed()


async def session_count(api: Api) -> int:
    page = (await api.http.get("/v1/sessions", params={"limit": 500})).json()
    return len(page["sessions"])


async def test_calls_without_valid_credentials_are_refused(server: Server) -> None:
    async with api_for(server) as api:
        session_id, token = await mulaw_session(api)
        other, _ = await mulaw_session(api)
        before = await session_count(api)
        assert (await refused(server, {}))[0] == 4401
        assert (await refused(server, {"session_id": session_id, "token": "vgt_forged"}))[0] == 4401
        assert (await refused(server, {"session_id": other, "token": token}))[0] == 4403
        # Without VOXGATE_TWILIO_AUTH_TOKEN a signature is no credential.
        headers = {"X-Twilio-Signature": twilio_signature(f"{server.ws_url}/v1/twilio/stream")}
        assert (await refused(server, {}, headers=headers))[0] == 4401
        assert await session_count(api) == before
        for sid in (session_id, other):
            assert (await api.get_session(sid))["frames"] == 0


async def test_session_of_another_codec_is_refused(server: Server) -> None:
    async with api_for(server) as api:
        session_id = await api.new_session()  # pcm_s16le
        token = await api.mint_token(session_id)
        code, reason = await refused(server, {"session_id": session_id, "token": token})
        assert code == 4400, (code, reason)
        assert "mulaw" in reason, reason
        assert (await api.get_session(session_id))["frames"] == 0


FAULTS: list[tuple[str, str | Json, str]] = [
    ("not JSON", '{"event": "media", "media": ', "not valid JSON"),
    ("bad base64", {"payload": "not base64!!"}, "base64"),
    ("outbound track", {"track": "outbound"}, "track"),
    ("payload too large", {"payload": base64.b64encode(b"\xff" * 300_000).decode()}, "above"),
]


@pytest.mark.parametrize(("fault", "bad", "says"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_closes_the_call_and_keeps_what_was_stored(
    server: Server, fault: str, bad: str | Json, says: str
) -> None:
    payloads = mulaw_chunks(tone(25))
    async with api_for(server) as api:
        session_id, token = await mulaw_session(api)
        async with call(server, 3) as twilio:
            await twilio.connected()
            await twilio.start({"session_id": session_id, "token": token})
            for payload in payloads:
                await twilio.media(payload)
            if isinstance(bad, str):
                await twilio.ws.send(bad)
            else:
                message = twilio.media_message(b"\xff" * CHUNK_BYTES)
                message["media"].update(bad)
                await twilio.send(message)
            code, reason = await twilio.closed()
        expected = 1009 if fault == "payload too large" else 4400
        assert code == expected, (code, reason)
        assert says in reason, reason
        assert twilio.received == []
        session = await api.get_session(session_id)
        assert (session["state"], session["frames"]) == ("open", len(payloads)), session
        assert await api.audio_bytes(session_id) == b"".join(payloads)


async def test_media_before_start_is_refused(server: Server) -> None:
    async with call(server, 4) as twilio:
        await twilio.connected()
        await twilio.media(b"\xff" * CHUNK_BYTES)
        code, reason = await twilio.closed()
    assert code == 4400, (code, reason)
    assert "before start" in reason, reason


# --- signed streams: a session per call -------------------------------------------------------

SIGNED_URL = PUBLIC_URL.replace("https://", "wss://") + "/v1/twilio/stream"


async def calls_of(api: Api, call_sid: str) -> list[Json]:
    page = (await api.http.get("/v1/sessions", params={"limit": 500})).json()
    return [s for s in page["sessions"] if s["metadata"].get("callSid") == call_sid]


async def test_signed_call_gets_a_session_of_its_own(signed_server: Server) -> None:
    headers = {"X-Twilio-Signature": twilio_signature(SIGNED_URL)}
    payloads = mulaw_chunks(tone(50, hz=300))
    async with api_for(signed_server) as api:
        for n in (11, 12):
            code, reason, received = await stream_call(
                signed_server, {"caller": "+15550002222"}, payloads, n=n, headers=headers
            )
            assert (code, received) == (1000, []), (code, reason, received)
            sessions = await calls_of(api, f"CA{n:032x}")
            assert len(sessions) == 1, sessions
            session = sessions[0]
            assert session["metadata"] == {
                "callSid": f"CA{n:032x}",
                "streamSid": f"MZ{n:032x}",
                "customParameters": {"caller": "+15550002222"},
            }
            expected = ("complete", "mulaw", 8000, 1, len(payloads) + 1)
            got = tuple(session[k] for k in ("state", "codec", "sample_rate", "channels", "frames"))
            assert got == expected, session
            assert await api.audio_bytes(session["id"]) == b"".join(payloads)


async def test_bad_or_missing_signature_is_refused_and_creates_nothing(
    signed_server: Server,
) -> None:
    async with api_for(signed_server) as api:
        before = await session_count(api)
        wrong_url = twilio_signature("wss://elsewhere.example.test/v1/twilio/stream")
        assert (await refused(signed_server, {}, headers={"X-Twilio-Signature": wrong_url}))[
            0
        ] == 4403
        assert (await refused(signed_server, {}, headers={"X-Twilio-Signature": "AAAA"}))[0] == 4403
        assert (await refused(signed_server, {}))[0] == 4401
        assert await session_count(api) == before


async def test_signature_over_the_host_header_without_a_public_url(tmp_path: Path) -> None:
    """Without VOXGATE_PUBLIC_URL the signed URL is rebuilt from the Host header."""
    env = {"VOXGATE_TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    with start_server(tmp_path, env=env) as plain:
        url = f"{plain.ws_url}/v1/twilio/stream"
        headers = {"X-Twilio-Signature": twilio_signature(url)}
        payloads = mulaw_chunks(tone(5))
        code, reason, _ = await stream_call(plain, {}, payloads, n=31, headers=headers)
        assert code == 1000, (code, reason)
        async with api_for(plain) as api:
            sessions = await calls_of(api, f"CA{31:032x}")
            assert [s["state"] for s in sessions] == ["complete"], sessions
        # Signed for the public name while Host says 127.0.0.1: refused.
        headers = {"X-Twilio-Signature": twilio_signature(SIGNED_URL)}
        assert (await refused(plain, {}, headers=headers))[0] == 4403


# --- wss -----------------------------------------------------------------------------------


def serve_has_tls() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "voxgate", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--ssl-certfile" in result.stdout


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1; skips when serve cannot use one."""
    if not serve_has_tls():
        pytest.skip(
            "voxgate serve has no --ssl-certfile/--ssl-keyfile option in this build "
            "(the production-defaults TLS work adds it)"
        )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_call_over_wss(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    """Twilio only connects to wss:// URLs: a call over TLS streams like one over ws://."""
    cert, key = certificate
    tls = TlsServer(tmp_path / "server", cert, key)
    with tls:
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{tls.port}",
            headers={"Authorization": f"Bearer {tls.api_key}"},
            verify=str(cert),
            timeout=30.0,
        ) as client:
            api = Api(tls, client)
            session_id, token = await mulaw_session(api)
            payloads = mulaw_chunks(tone(25))
            custom = {"session_id": session_id, "token": token}
            code, reason, received = await stream_call(
                tls, custom, payloads, scheme="wss", cafile=cert
            )
            assert (code, received) == (1000, []), (code, reason, received)
            assert await api.audio_bytes(session_id) == b"".join(payloads)


class TlsServer(Server):
    """``voxgate serve`` with a certificate: health checked over https."""

    def __init__(self, root: Path, cert: Path, key: Path) -> None:
        super().__init__(root)
        self.cert, self.key = cert, key

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--ssl-certfile",
            str(self.cert),
            "--ssl-keyfile",
            str(self.key),
        ]

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.running, f"server exited while starting\n{self.log_tail()}"
            try:
                url = f"https://127.0.0.1:{self.port}/health"
                if httpx.get(url, verify=str(self.cert), timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"TLS server not healthy\n{self.log_tail()}")
