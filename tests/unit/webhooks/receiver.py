"""A real HTTP webhook receiver on 127.0.0.1 for tests, and the docs' verification snippets.

:class:`Receiver` records every POST (headers and raw body) and answers with
``status`` (204 unless a test changes it), after ``delay_s``. It can be taken
down (the port then refuses connections) and brought back on the same port.
"""

from __future__ import annotations

import base64
import http.server
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from servers import free_port

DOCS = Path(__file__).resolve().parents[3] / "docs" / "clients.md"
SECRET = "test-webhook-secret-0123456789"


class Delivery(msgspec.Struct, frozen=True):
    """One request the receiver got."""

    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        decoded: dict[str, Any] = msgspec.json.decode(self.body)
        return decoded

    @property
    def event_id(self) -> str:
        return self.headers["voxgate-event-id"]


class Receiver:
    """An ``http.server`` in a thread that records webhook POSTs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 204
        self.delay_s = 0.0
        self.deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/voxgate"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver.status
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._changed:
                    receiver.deliveries.append(Delivery(headers, body))
                    receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take the receiver down: connections to its port are refused from now on."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def wait_for(
        self, done: Callable[[list[Delivery]], bool], timeout_s: float = 60.0
    ) -> list[Delivery]:
        """The deliveries once ``done(deliveries)`` holds; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self.deliveries):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(d.event_id, d.event["type"]) for d in self.deliveries]
                    raise AssertionError(f"deliveries not as expected after {timeout_s}s: {seen}")
                self._changed.wait(left)
            return list(self.deliveries)

    def snapshot(self) -> list[Delivery]:
        with self._changed:
            return list(self.deliveries)


def docs_block(language: str, marker: str) -> str:
    """The one code block of docs/clients.md in ``language`` that contains ``marker``."""
    text = DOCS.read_text()
    found: list[str] = [
        block
        for block in re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)
        if marker in block
    ]
    assert len(found) == 1, f"one {language} block with {marker!r} expected in {DOCS}"
    return found[0]


VerifyFn = Callable[[str, str, bytes], bool]


def docs_python_verifier() -> VerifyFn:
    """``verify_voxgate_signature`` exactly as docs/clients.md gives it."""
    namespace: dict[str, Any] = {}
    exec(docs_block("python", "def verify_voxgate_signature"), namespace)
    verify: VerifyFn = namespace["verify_voxgate_signature"]
    return verify


def docs_node_verify(tmp: Path, cases: list[tuple[str, str, bytes]]) -> list[bool]:
    """Run docs/clients.md's ``verifyVoxgateSignature`` in Node on (secret, header, body) cases."""
    module = tmp / "verify.mjs"
    module.write_text(docs_block("js", "export function verifyVoxgateSignature"))
    harness = tmp / "harness.mjs"
    harness.write_text(
        'import { readFileSync } from "node:fs";\n'
        'import { verifyVoxgateSignature } from "./verify.mjs";\n'
        'const cases = JSON.parse(readFileSync(0, "utf8"));\n'
        "console.log(JSON.stringify(cases.map(([secret, header, body]) =>\n"
        '  verifyVoxgateSignature(secret, header, Buffer.from(body, "base64")))));\n'
    )
    payload = msgspec.json.encode(
        [[secret, header, base64.b64encode(body).decode()] for secret, header, body in cases]
    )
    done = subprocess.run(
        ["node", str(harness)], input=payload, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    results: list[bool] = msgspec.json.decode(done.stdout)
    return results
