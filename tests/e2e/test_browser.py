"""The browser SDK (``/client/voxgate.js``) in a real Chromium against real servers.

Chromium (Debian's, never a downloaded one) runs headless with a fake microphone
that plays a tone from a WAV file this module writes; Playwright drives it. The
pages come from the server's own ``/client/`` route, an http origin. Tokens reach
the page through a function Playwright exposes (``mintToken(sessionId)``), which
mints them with the API key in the test process: the key never enters the page,
as in an application whose backend mints tokens.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import itertools
import math
import re
import shutil
import struct
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from litestar.testing import TestClient
from playwright.sync_api import Browser, Page, Playwright, Route, sync_playwright

from servers import Server, free_port, start_server
from voxgate._native import crc32c, encode_frame

CHROMIUM = "/usr/bin/chromium"
TONE_HZ = 440.0
TONE_RATE = 48_000
SESSION_RATE = 16_000
FRAME_MS = 20
FRAME_BYTES = SESSION_RATE * FRAME_MS // 1000 * 2
# Generous: a loaded 2-core machine runs Chromium, a server and the test at once.
WAIT_MS = 90_000

Json = dict[str, Any]

# Runs in the page: import the SDK from the server and keep its state on window.t.
START_MIC = """
async ([sdkUrl, sessionId, backoff, sampleRate, frameMs]) => {
  const sdk = await import(sdkUrl);
  const t = (window.t = { payloads: [], disconnects: [], micError: null });
  const stream = new sdk.VoxgateStream({
    url: new URL(sdkUrl).origin,
    sessionId,
    token: () => window.mintToken(sessionId),
    backoff,
  });
  t.stream = stream;
  stream.addEventListener("disconnect", (e) => t.disconnects.push(e.detail.code));
  await stream.open();
  t.media = await navigator.mediaDevices.getUserMedia({ audio: true });
  t.mic = await sdk.captureMicrophone(stream, t.media, {
    sampleRate,
    frameMs,
    onFrame: (payload) => t.payloads.push(payload),
    onError: (err) => { t.micError = String(err); },
  });
}
"""

# Stop the microphone, END the stream, and return what the page saw and sent.
FINISH_MIC = """
async (timeoutMs) => {
  const t = window.t;
  await t.mic.stop();
  t.media.getTracks().forEach((track) => track.stop());
  const complete = await t.stream.end({ timeoutMs });
  let binary = "";
  for (const p of t.payloads) {
    for (let i = 0; i < p.length; i += 8192) {
      binary += String.fromCharCode.apply(null, p.subarray(i, i + 8192));
    }
  }
  return {
    complete,
    stats: t.stream.stats,
    micFrames: t.mic.frames,
    micError: t.micError,
    disconnects: t.disconnects,
    audio: btoa(binary),
  };
}
"""

# Open a stream whose token function is given as an expression; answer the failure.
OPEN_EXPECTING_FAILURE = """
async ([sessionId, token]) => {
  const { VoxgateStream } = await import("/client/voxgate.js");
  const stream = new VoxgateStream({
    url: location.origin,
    sessionId,
    token,
    backoff: { initialMs: 50, maxMs: 200 },
  });
  try {
    await stream.open();
    stream.close();
    return { opened: true };
  } catch (err) {
    const { name, code, error, message } = err;
    return { opened: false, name, code, error, message };
  }
}
"""


def write_tone(path: Path, seconds: float = 6.0) -> None:
    """A mono 16-bit WAV of a 440 Hz tone at half scale (Chromium loops it as the microphone)."""
    count = int(TONE_RATE * seconds)
    samples = (int(16_000 * math.sin(2 * math.pi * TONE_HZ * n / TONE_RATE)) for n in range(count))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(TONE_RATE)
        out.writeframes(struct.pack(f"<{count}h", *samples))


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: scripts/setup.sh installs Debian's chromium")
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    tone = tmp_path_factory.mktemp("audio") / "tone.wav"
    write_tone(tone)
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={tone}",
            # An AudioContext made without a click must run, not stay suspended.
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    yield browser
    browser.close()


def mint(server: Server, session_id: str) -> str:
    """A fresh stream token for the session (raises while the server is down)."""
    response = httpx.post(
        f"{server.base_url}/v1/sessions/{session_id}/tokens",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={},
        timeout=10.0,
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def create_session(server: Server) -> str:
    response = httpx.post(
        f"{server.base_url}/v1/sessions",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={"codec": "pcm_s16le", "sample_rate": SESSION_RATE, "channels": 1},
        timeout=10.0,
    )
    response.raise_for_status()
    session_id: str = response.json()["id"]
    return session_id


def get_json(server: Server, path: str) -> Json:
    response = httpx.get(
        f"{server.base_url}{path}",
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=10.0,
    )
    response.raise_for_status()
    body: Json = response.json()
    return body


def stored_audio(server: Server, session_id: str) -> bytes:
    response = httpx.get(
        f"{server.base_url}/v1/sessions/{session_id}/audio",
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30.0,
    )
    response.raise_for_status()
    return response.content


def open_page(browser: Browser, server: Server, url: str | None = None) -> Page:
    """A page at ``url`` (default: the server's /client/) with ``mintToken(sessionId)``."""
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    token_for: Callable[[str], str] = lambda session_id: mint(server, session_id)  # noqa: E731
    page.expose_function("mintToken", token_for)
    page.goto(url or f"{server.base_url}/client/")
    return page


def is_tone(pcm: bytes) -> bool:
    """Whether 16-bit PCM at the session rate carries the 440 Hz tone (not silence)."""
    count = len(pcm) // 2
    samples = struct.unpack(f"<{count}h", pcm[: count * 2])
    rms = math.sqrt(sum(s * s for s in samples) / max(count, 1))
    # Zero crossings per second of a sine are twice its frequency.
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    hz = crossings / 2 / (count / SESSION_RATE)
    # Chromium's capture processing (gain control) lowers the level: ask for sound, not a level.
    return rms > 300 and abs(hz - TONE_HZ) < 20


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    page = open_page(browser, server)
    yield page
    page.close()


def test_client_files_are_served_cacheable(server: Server) -> None:
    for path in ("/client/voxgate.js", "/client/voxgate-worklet.js"):
        first = httpx.get(server.base_url + path)
        assert first.status_code == 200
        assert first.headers["content-type"].startswith("text/javascript")
        assert "max-age" in first.headers["cache-control"]
        etag = first.headers["etag"]
        again = httpx.get(server.base_url + path, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        other = httpx.get(server.base_url + path, headers={"If-None-Match": '"stale"'})
        assert other.status_code == 200
        assert other.content == first.content
    page = httpx.get(server.base_url + "/client/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b'from "./voxgate.js"' in page.content
    moved = httpx.get(server.base_url + "/client")
    assert moved.status_code == 308
    assert moved.headers["location"] == "/client/"


def test_sdk_frames_and_crc_match_the_server_codec(page: Page) -> None:
    payload = bytes(range(256)) * 5 + b"tail"
    got = page.evaluate(
        """async (bytes) => {
            const sdk = await import("/client/voxgate.js");
            const payload = new Uint8Array(bytes);
            const check = sdk.crc32c(new TextEncoder().encode("123456789"));
            const wire = sdk.encodeFrame(7, payload, 1234567890123n, sdk.FLAG_END);
            const head = sdk.crc32c(payload.subarray(0, 100));
            return { check, wire: Array.from(wire), crc: sdk.crc32c(payload),
                     chained: sdk.crc32c(payload.subarray(100), head) };
        }""",
        list(payload),
    )
    assert got["check"] == 0xE3069283
    assert got["crc"] == crc32c(payload)
    assert got["chained"] == crc32c(payload)
    assert bytes(got["wire"]) == encode_frame(7, payload, pts_us=1234567890123, end=True)


def test_demo_page_streams_four_seconds_of_microphone_to_complete(
    page: Page, server: Server
) -> None:
    page.fill("#key", server.api_key)
    page.click("#start")
    # 4 s of 20 ms frames, acked by the server.
    page.wait_for_function(
        "() => (window.voxgateDemo.stream && window.voxgateDemo.stream.stats.framesAcked >= 200)"
        " || window.voxgateDemo.error"
    )
    page.click("#stop")
    page.wait_for_function("() => window.voxgateDemo.complete || window.voxgateDemo.error")
    demo = page.evaluate(
        """() => ({ complete: window.voxgateDemo.complete, error: window.voxgateDemo.error,
                    sessionId: window.voxgateDemo.sessionId,
                    stats: window.voxgateDemo.stream.stats })"""
    )
    assert demo["error"] is None
    complete, stats, session_id = demo["complete"], demo["stats"], demo["sessionId"]
    assert page.text_content("#status") is not None
    assert "CRC-32C verified" in (page.text_content("#status") or "")

    audio = stored_audio(server, session_id)
    assert crc32c(audio) == complete["stream_crc32c"]
    assert len(audio) == complete["bytes"]
    session = get_json(server, f"/v1/sessions/{session_id}")
    assert session["state"] == "complete"
    assert session["frames"] == stats["framesSent"] == complete["frames"]
    assert stats["framesSent"] >= 200
    # Whole 20 ms frames, but the last (the flushed remainder, or an empty END).
    assert (complete["frames"] - 2) * FRAME_BYTES <= len(audio) <= complete["frames"] * FRAME_BYTES
    # The fake microphone plays the tone (after a moment of silence while it starts).
    assert is_tone(audio[2 * SESSION_RATE * 2 : 4 * SESSION_RATE * 2])


def test_server_killed_mid_stream_nothing_lost(browser: Browser, tmp_path: Path) -> None:
    with Server(tmp_path / "killed") as server:
        session_id = create_session(server)
        page = open_page(browser, server)
        try:
            backoff = {"initialMs": 100, "maxMs": 1000, "maxAttempts": 1000}
            sdk_url = f"{server.base_url}/client/voxgate.js"
            page.evaluate(START_MIC, [sdk_url, session_id, backoff, SESSION_RATE, FRAME_MS])
            page.wait_for_function("() => window.t.stream.stats.framesAcked >= 50")
            server.kill()
            page.wait_for_function("() => !window.t.stream.stats.connected")
            # The microphone runs on while the server is down: those frames wait in the SDK.
            down_at = page.evaluate("() => window.t.mic.frames")
            page.wait_for_function(f"() => window.t.mic.frames >= {down_at + 25}")
            server.start()
            page.wait_for_function(
                "() => window.t.stream.stats.reconnects >= 1"
                f" && window.t.stream.stats.framesAcked >= {down_at + 50}"
            )
            result = page.evaluate(FINISH_MIC, WAIT_MS)
        finally:
            page.close()
        sent = base64.b64decode(result["audio"])
        complete, stats = result["complete"], result["stats"]
        assert result["micError"] is None
        assert 1006 in result["disconnects"]
        assert stats["reconnects"] >= 1
        assert stats["framesSent"] >= down_at + 50

        audio = stored_audio(server, session_id)
        assert audio == sent
        assert crc32c(audio) == complete["stream_crc32c"]
        session = get_json(server, f"/v1/sessions/{session_id}")
        assert session["state"] == "complete"
        assert session["frames"] == complete["frames"] == stats["framesSent"]
        # Every microphone frame, plus an empty END frame if the last one had gone out.
        assert complete["frames"] in (result["micFrames"], result["micFrames"] + 1)
        missing = get_json(server, f"/v1/sessions/{session_id}/missing")
        assert missing["missing"] == []


def test_refused_origin_is_a_clear_error(browser: Browser, tmp_path: Path) -> None:
    env = {"VOXGATE_CORS_ORIGINS": "https://app.example"}
    with start_server(tmp_path / "origins", env=env) as server:
        session_id = create_session(server)
        page = open_page(browser, server)
        try:
            failure = page.evaluate(
                OPEN_EXPECTING_FAILURE.replace(
                    "token,", "token: () => window.mintToken(sessionId),"
                ),
                [session_id, None],
            )
        finally:
            page.close()
        assert failure["opened"] is False
        assert failure["name"] == "VoxgateError"
        assert failure["code"] == 4403
        assert failure["error"] == "origin"
        assert "Origin not allowed" in failure["message"]
        assert get_json(server, f"/v1/sessions/{session_id}")["frames"] == 0


@pytest.mark.parametrize("how", ["used", "expired"])
def test_spent_token_is_a_clear_error(page: Page, server: Server, how: str) -> None:
    session_id = create_session(server)
    if how == "used":
        token = mint(server, session_id)
        opened = page.evaluate(OPEN_EXPECTING_FAILURE, [session_id, token])
        assert opened == {"opened": True}
    else:
        answer = httpx.post(
            f"{server.base_url}/v1/sessions/{session_id}/tokens",
            headers={"Authorization": f"Bearer {server.api_key}"},
            json={"ttl_s": 1},
        ).json()
        token = answer["token"]
        # Wait for the clock (server and test share it) to pass the token's expiry.
        expires_at = datetime.fromisoformat(answer["expires_at"]) + timedelta(seconds=0.2)
        while datetime.now(UTC) < expires_at:
            time.sleep(0.05)
    # A function that keeps answering the spent token: retried, then a clear error.
    failure = page.evaluate(
        OPEN_EXPECTING_FAILURE.replace("token,", "token: () => token,"), [session_id, token]
    )
    assert failure["opened"] is False
    assert failure["code"] == 4401
    assert failure["error"] == "unauthorized"
    assert "expired or already used" in failure["message"]


def test_send_reports_back_pressure_and_never_buffers_without_bound(page: Page) -> None:
    # Nothing listens on the stream's port: every frame stays unacked in the SDK.
    result = page.evaluate(
        """async (port) => {
            const { VoxgateStream } = await import("/client/voxgate.js");
            const stream = new VoxgateStream({
                url: `http://127.0.0.1:${port}`, sessionId: "ses_unreachable",
                token: () => "unused", maxBufferedFrames: 10, highWaterFrames: 4,
                backoff: { initialMs: 1000, maxMs: 1000 },
            });
            const events = [];
            stream.addEventListener("backpressure", (e) => events.push(e.detail.bufferedFrames));
            const accepted = [];
            let refused = null;
            for (let i = 0; i < 12; i++) {
                try {
                    accepted.push(stream.send(new Uint8Array(320).fill(i)));
                } catch (err) {
                    refused = { at: i, code: err.code };
                    break;
                }
            }
            const buffered = stream.bufferedFrames;
            stream.close();
            return { accepted, refused, events, buffered };
        }""",
        free_port(),
    )
    # True while below the high-water mark, false from it on, refused at the limit.
    assert result["accepted"] == [True, True, True, False, False, False, False, False, False, False]
    assert result["events"] == [4]
    assert result["refused"] == {"at": 10, "code": "buffer_full"}
    assert result["buffered"] == 10


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def app_site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An application's own web server on another port (an origin apart from voxgate's):
    the folder it serves and its origin."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>app</title><p>app page</p>")
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_page_of_another_origin_loads_the_sdk_and_streams(
    browser: Browser, tmp_path: Path, app_site: tuple[Path, str]
) -> None:
    app_origin = app_site[1]
    # As in docs/clients.md: the application's page imports the SDK from voxgate,
    # whose allow-list names the application's origin.
    with start_server(tmp_path / "cors", env={"VOXGATE_CORS_ORIGINS": app_origin}) as server:
        session_id = create_session(server)
        page = open_page(browser, server, f"{app_origin}/index.html")
        try:
            backoff = {"initialMs": 100, "maxMs": 1000}
            sdk_url = f"{server.base_url}/client/voxgate.js"
            page.evaluate(START_MIC, [sdk_url, session_id, backoff, SESSION_RATE, FRAME_MS])
            page.wait_for_function("() => window.t.stream.stats.framesAcked >= 50")
            result = page.evaluate(FINISH_MIC, WAIT_MS)
        finally:
            page.close()
        assert result["complete"]["verified"] is True
        audio = stored_audio(server, session_id)
        assert audio == base64.b64decode(result["audio"])
        assert crc32c(audio) == result["complete"]["stream_crc32c"]


def doc_block(language: str, marker: str) -> str:
    """The code block of docs/clients.md in ``language`` that contains ``marker``."""
    text = (Path(__file__).parents[2] / "docs" / "clients.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"one {language} block with {marker!r} expected in docs/clients.md"
    block: str = found[0]
    return block


def load_module(path: Path, source: str) -> ModuleType:
    """``source`` written to ``path`` and imported as a module of its own (Litestar
    resolves handler annotations through ``sys.modules``)."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_clients_doc_page_and_backend_work_as_written(
    browser: Browser,
    tmp_path: Path,
    app_site: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy-paste example of docs/clients.md: its backend mints the tokens, its page
    (served from the application's origin) records the microphone and verifies complete."""
    site, origin = app_site
    with start_server(tmp_path / "doc") as server:
        monkeypatch.setenv("VOXGATE_URL", server.base_url)
        monkeypatch.setenv("VOXGATE_API_KEY", server.api_key)
        backend = load_module(tmp_path / "backend.py", doc_block("python", "backend.py"))
        html = doc_block("html", "VoxgateStream")
        (site / "record.html").write_text(
            html.replace("https://voice.example.com", server.base_url)
        )
        sessions: list[str] = []

        with TestClient(app=backend.app) as app:
            # The page's calls to its own backend (/voice/...) go to the documented app.
            def to_backend(route: Route) -> None:
                answer = app.post(urlsplit(route.request.url).path)
                if "session_id" in answer.json():
                    sessions.append(answer.json()["session_id"])
                route.fulfill(
                    status=answer.status_code,
                    body=answer.content,
                    headers={"content-type": answer.headers["content-type"]},
                )

            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            try:
                page.route(f"{origin}/voice/**", to_backend)
                page.goto(f"{origin}/record.html")
                page.click("#record")
                page.wait_for_function("() => !document.getElementById('stop').disabled")
                # Two seconds of audio stored, then stop.
                while get_json(server, f"/v1/sessions/{sessions[0]}")["frames"] < 100:
                    time.sleep(0.1)
                page.click("#stop")
                page.wait_for_function(
                    "() => /stored|failed|stopped/.test(document.getElementById('out').textContent)"
                )
                out = page.text_content("#out") or ""
            finally:
                page.close()
        report = re.search(r"stored (\d+) frames, (\d+) bytes, CRC-32C (\d+)", out)
        assert report, out
        frames, nbytes, crc = (int(value) for value in report.groups())
        session = get_json(server, f"/v1/sessions/{sessions[0]}")
        assert session["state"] == "complete"
        assert (session["frames"], session["bytes"]) == (frames, nbytes)
        audio = stored_audio(server, sessions[0])
        assert crc32c(audio) == crc
        assert frames >= 100


# Sends `count` synthetic frames as fast as back-pressure lets it, then END.
PRODUCE = """
async ([sessionId, count, size, highWaterFrames]) => {
  const { VoxgateStream } = await import("/client/voxgate.js");
  const stream = new VoxgateStream({
    url: location.origin, sessionId, token: () => window.mintToken(sessionId), highWaterFrames,
  });
  let waits = 0;
  await stream.open();
  for (let i = 0; i < count; i++) {
    const payload = new Uint8Array(size).fill(i % 251);
    if (!stream.send(payload)) {
      waits++;
      await stream.drained();
    }
  }
  const complete = await stream.end({ timeoutMs: %d });
  return { complete, stats: stream.stats, waits };
}
""".replace("%d", str(WAIT_MS))


def test_small_credit_window_paces_a_fast_producer(browser: Browser, tmp_path: Path) -> None:
    # A window of 2 KiB holds three 640-byte frames: the SDK must never send beyond it.
    env = {"VOXGATE_MAX_FRAME_BYTES": "1024", "VOXGATE_WINDOW_BYTES": "2048"}
    with start_server(tmp_path / "small-window", env=env) as server:
        session_id = create_session(server)
        page = open_page(browser, server)
        try:
            result = page.evaluate(PRODUCE, [session_id, 400, 640, 8])
        finally:
            page.close()
        stats = result["stats"]
        assert stats["nacks"] == {}, "a frame went out beyond the credit window"
        assert result["waits"] > 0, "send() never reported back-pressure"
        # END flags the last frame when it has not gone out yet, else an empty END follows.
        assert stats["framesSent"] == result["complete"]["frames"] in (400, 401)
        payloads = [bytes([i % 251]) * 640 for i in range(400)]
        assert stored_audio(server, session_id) == b"".join(payloads)


def test_newer_connection_supersedes_the_stream(page: Page, server: Server) -> None:
    session_id = create_session(server)
    result = page.evaluate(
        """async (sessionId) => {
            const { VoxgateStream } = await import("/client/voxgate.js");
            const make = () => new VoxgateStream({
                url: location.origin, sessionId, token: () => window.mintToken(sessionId),
            });
            const first = make();
            await first.open();
            first.send(new Uint8Array(320).fill(1));
            const failed = new Promise((resolve) => {
                first.addEventListener("error", (e) => resolve(e.detail));
            });
            const second = make();
            await second.open();
            const err = await failed;
            second.close();
            return { code: err.code, error: err.error, reconnects: first.stats.reconnects };
        }""",
        session_id,
    )
    # The older stream stops for good: reconnecting would take the session back.
    assert result == {"code": 4409, "error": "superseded", "reconnects": 0}
