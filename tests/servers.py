"""Real voxgate server processes for tests.

``start_server(tmp_path)`` launches ``python -m voxgate serve`` on a free
loopback port with its own data dir and API key, waits until ``GET /health``
answers 200, and returns a :class:`Server` that can be stopped, killed with
SIGKILL and restarted on the same port and data dir. Use it as a context
manager or stop it yourself. Every server's output goes to a log file whose
tail the top-level conftest adds to the report of a failing test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx

API_KEY = "test-key-0123456789abcdefghijklmnopqrstuv"  # at least 32 characters
STARTUP_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0

# Servers started and not yet stopped, newest last (for failure reports).
RUNNING: list[Server] = []


class ServerError(RuntimeError):
    """The server did not start, or died; the message ends with its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One ``voxgate serve`` process (and its workers) on 127.0.0.1."""

    startup_timeout_s = STARTUP_TIMEOUT_S

    def __init__(
        self,
        root: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.log_path = root / "server.log"
        self.workers = workers
        self.port = port if port is not None else free_port()
        self.api_key = API_KEY
        self.extra_env = dict(env or {})
        # (certificate, key): serve https/wss with ``--ssl-certfile/--ssl-keyfile``.
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting this server's (self-signed) certificate; None without TLS."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls[0]))

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError("server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def environment(self) -> dict[str, str]:
        """The server's environment: ours without any VOXGATE_*, plus its own settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
        env.update(
            {
                "VOXGATE_DATA_DIR": str(self.data_dir),
                "VOXGATE_API_KEYS": self.api_key,
                "PYTHONUNBUFFERED": "1",
                # Tests create sessions and tokens far faster than the production
                # defaults allow from one address; tests of the limits set their own.
                "VOXGATE_RATE_LIMIT_SESSIONS": "off",
                "VOXGATE_RATE_LIMIT_TOKENS": "off",
                "VOXGATE_RATE_LIMIT_TRANSCRIPTS": "off",
                "VOXGATE_RATE_LIMIT_SESSION_CONNECTS": "off",
                "VOXGATE_RATE_LIMIT_AUTH_FAILURES": "off",
                "VOXGATE_RATE_LIMIT_UPLOADS": "off",
                "VOXGATE_RATE_LIMIT_LISTEN_CONNECTS": "off",
            }
        )
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "voxgate",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            *(
                ["--ssl-certfile", str(self.tls[0]), "--ssl-keyfile", str(self.tls[1])]
                if self.tls
                else []
            ),
        ]

    def start(self) -> None:
        """Launch the server and wait until ``GET /health`` answers 200.

        Raises :class:`ServerError` with the log tail when the process exits
        or is not healthy within ``startup_timeout_s``.
        """
        if self.running:
            raise ServerError("server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            # A session of its own, so that kill() reaches every worker process.
            self._proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self not in RUNNING:
            RUNNING.append(self)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                self._forget()
                raise ServerError(f"server exited with {code} while starting\n{self.log_tail()}")
            try:
                response = httpx.get(
                    f"{self.base_url}/health", timeout=1.0, verify=self.ssl_context() or True
                )
                if response.status_code == 200:
                    return
                last_error = f"GET /health answered {response.status_code}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        self.kill()
        raise ServerError(
            f"server not healthy after {self.startup_timeout_s:.0f} s ({last_error})\n"
            f"{self.log_tail()}"
        )

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code (None if killed)."""
        if self._proc is None:
            return None
        proc = self._proc
        code: int | None = None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = proc.returncode
        # Leftover workers must not keep the port or the data dir.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._forget()
        return code

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the server to exit by itself; its exit code, or None if still running."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the server and all its workers at once, as a crash would."""
        if self._proc is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        self._forget()

    def restart(self) -> None:
        """Stop if running, then start again on the same port and data dir."""
        if self.running:
            self.stop()
        self.start()

    def _forget(self) -> None:
        self._proc = None
        if self in RUNNING:
            RUNNING.remove(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- {self.log_path} (last {len(tail)} lines) ---\n" + "\n".join(tail)

    def __enter__(self) -> Server:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Server({self.base_url}, workers={self.workers}, data_dir={self.data_dir})"


def start_server(tmp_path: Path, env: dict[str, str] | None = None, workers: int = 1) -> Server:
    """Start a server under ``tmp_path`` (data in ``tmp_path/data``) and return it running."""
    server = Server(tmp_path, env=env, workers=workers)
    server.start()
    return server


@contextlib.contextmanager
def two_instances(root: Path, env: dict[str, str]) -> Iterator[tuple[Server, Server]]:
    """Two servers with the same settings under ``root`` (``a`` and ``b``), started in turn."""
    with Server(root / "a", env=env) as a, Server(root / "b", env=env) as b:
        yield a, b
