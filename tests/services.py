"""Real Redis and PostgreSQL servers for tests, started on loopback in a temporary directory.

Nothing here assumes a service already running: each fixture starts its own
server from Debian's packages (``scripts/setup.sh`` installs ``redis-server``
and ``postgresql``) on a free port, and stops it afterwards. PostgreSQL refuses
to run as root, so as root its data directory belongs to the ``postgres`` user
and its programs run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import free_port

STARTUP_TIMEOUT_S = 30.0


class ServiceError(RuntimeError):
    """A test service could not be started; the message says what to install or read."""


def _wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceError(f"not listening on 127.0.0.1:{port} after {STARTUP_TIMEOUT_S}s")


class RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence unless asked, restartable on its port."""

    def __init__(
        self, root: Path, *, appendonly: bool = False, password: str | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server not found: run scripts/setup.sh (apt-get install)")
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = self.root / "redis.log"
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.root),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _wait_for_port(self.port, self.proc, log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise ServiceError("PostgreSQL not found: run scripts/setup.sh (installs postgresql)")
    return Path(found[-1]).parent


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust auth, restartable."""

    def __init__(self, root: Path) -> None:
        self.bindir = _pg_bindir()
        self.root = root
        self.datadir = root / "pgdata"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else os.environ.get("USER", "postgres")

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"{' '.join(command)}: {result.stdout}{result.stderr}")

    def init(self) -> None:
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.datadir), "-A", "trust", "-U", self.user, "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root} -c fsync=on -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "pg.log"),
            "-o", options, "-w", "-t", str(int(STARTUP_TIMEOUT_S)), "start",
        )  # fmt: skip
        _wait_for_port(self.port, None, self.root / "pg.log")

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.dsn(name)


def _service_root(prefix: str) -> Iterator[Path]:
    # Not under pytest's tmp_path: that is private to root, and PostgreSQL runs as postgres.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the whole run; tests use their own key prefixes or databases."""
    for root in _service_root("voxgate-redis-"):
        server = RedisServer(root)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole run; tests create their own databases."""
    for root in _service_root("voxgate-pg-"):
        server = PostgresServer(root)
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop("immediate")
