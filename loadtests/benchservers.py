"""Servers the benchmarks run, each a subprocess on a free 127.0.0.1 port.

- ``voxgate``: ``voxgate serve`` with a temporary data dir and a fixed API key;
- ``voxgate-ref``: another build of voxgate (``$VOXGATE_BENCH_REF``), for before/after;
- ``litestar``: ``baseline_litestar.py``, a bare Litestar-on-Granian handler (baseline a);
- ``fastapi``: ``baseline_fastapi.py``, FastAPI on uvicorn parsing, checking CRCs, acking (c);
- ``picows``: ``baseline_picows.py``, a raw picows sink (d);
- ``voxgate-pg2``: two ``voxgate serve`` instances sharing one PostgreSQL and one
  Redis, all started here on loopback (``tests/services.py``), the load split
  between the instances.

Every server advertises the window of ``VOXGATE_WINDOW_BYTES`` so each sees the
same in-flight cap. A server runs in its own process group; its CPU time and
resident memory are read from /proc for the whole group (workers included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

import httpx

from voxgate.settings import Settings

HERE = Path(__file__).resolve().parent
API_KEY = "bench-key-0123456789abcdefghijklmnopqrstuv"  # at least 32 characters
STARTUP_TIMEOUT_S = 30.0
KINDS = ("voxgate", "voxgate-ref", "voxgate-pg2", "litestar", "fastapi", "picows")
# The kinds that are voxgate (sessions, tokens, verified streams).
VOXGATE_KINDS = ("voxgate", "voxgate-ref", "voxgate-pg2")
# voxgate-ref: another build of voxgate (its ``voxgate`` executable, e.g. the previous
# release's virtualenv), for before/after figures measured in one run.
REF_ENV = "VOXGATE_BENCH_REF"
ALIASES = {"baseline": "litestar"}
# What each server is, for reports.
ROLES = {
    "voxgate": "voxgate (Rust core)",
    "voxgate-ref": f"voxgate, the build at ${REF_ENV}",
    "voxgate-pg2": "voxgate x2 on PostgreSQL + Redis",
    "litestar": "(a) bare Litestar/Granian",
    "fastapi": "(c) FastAPI/uvicorn + crc32c",
    "picows": "(d) raw picows sink",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 of stat: pgrp
            pids.append(int(entry.name))
    return pids


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in the process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _group_pids(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes), open fds and threads of one process; {} if it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return {}
    return out


def group_memory(pgid: int) -> dict[str, int]:
    """Summed VmRSS, VmHWM, fds and threads over the process group."""
    total = {"VmRSS": 0, "VmHWM": 0, "fds": 0, "Threads": 0}
    for pid in _group_pids(pgid):
        for key, value in proc_status(pid).items():
            total[key] += value
    return total


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class Server(Protocol):
    """What the benchmarks need of a server under test (one process, or a cluster)."""

    kind: str
    data_dir: Path | None

    @property
    def base_url(self) -> str: ...
    @property
    def ws_base(self) -> str: ...
    def cpu_s(self) -> float: ...
    def memory(self) -> dict[str, int]: ...
    def stop(self) -> None: ...


class ServerProcess:
    """A server subprocess in its own process group, stopped with its workers."""

    def __init__(
        self, kind: str, command: list[str], env: dict[str, str], log: Path, port: int
    ) -> None:
        self.kind = kind
        self.port = port
        self.log = log
        self.data_dir: Path | None = None
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        """Until ``/health`` answers (picows: until the port accepts), bounded in time."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log.read_text()[-2000:]}")
            if self.kind == "picows":
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1.0),
                ):
                    return
            else:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                        return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} not ready in {STARTUP_TIMEOUT_S} s")

    def cpu_s(self) -> float:
        return group_cpu_s(self.proc.pid)

    def memory(self) -> dict[str, int]:
        return group_memory(self.proc.pid)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class Cluster:
    """Two voxgate instances sharing PostgreSQL and Redis, all on loopback, all stopped
    with it. Shaped like :class:`ServerProcess`; ``ws_bases`` names every instance.

    PostgreSQL and Redis come from Debian's packages through ``tests/services.py``
    (``scripts/setup.sh`` installs them); their CPU is not in ``cpu_s`` (it runs as
    another user): see ``services_cpu_s``.
    """

    def __init__(
        self, root: Path, *, workers: int, durability: str, window_bytes: int | None
    ) -> None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        import services

        self.kind = "voxgate-pg2"
        self.data_dir: Path | None = None
        self.members: list[Server] = []
        self._redis = services.RedisServer(Path(tempfile.mkdtemp(prefix="voxgate-bench-redis-")))
        pg_root = Path(tempfile.mkdtemp(prefix="voxgate-bench-pg-"))
        pg_root.chmod(0o755)
        self._pg = services.PostgresServer(pg_root)
        self._roots = [self._redis.root, pg_root]
        try:
            self._redis.start()
            self._pg.init()
            self._pg.start()
            env = {
                "VOXGATE_DATABASE_URL": self._pg.create_database("voxgate_bench"),
                "VOXGATE_REDIS_URL": self._redis.url,
            }
            for _ in range(2):
                self.members.append(
                    start_server(
                        "voxgate",
                        root,
                        workers=workers,
                        durability=durability,
                        window_bytes=window_bytes,
                        extra_env=env,
                    )
                )
        except BaseException:
            self.stop()
            raise

    @property
    def base_url(self) -> str:
        return self.members[0].base_url

    @property
    def ws_base(self) -> str:
        return self.members[0].ws_base

    @property
    def ws_bases(self) -> tuple[str, ...]:
        return tuple(m.ws_base for m in self.members)

    def cpu_s(self) -> float:
        return sum(m.cpu_s() for m in self.members)

    def services_cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of every PostgreSQL and Redis process on the machine (the
        benchmark starts the only ones)."""
        tick = os.sysconf("SC_CLK_TCK")
        totals = {"postgres": 0.0, "redis": 0.0}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            used = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            if name.startswith("postgres"):
                totals["postgres"] += used
            elif name.startswith("redis"):
                totals["redis"] += used
        return totals

    def memory(self) -> dict[str, int]:
        total = {"VmRSS": 0, "VmHWM": 0, "fds": 0, "Threads": 0}
        for member in self.members:
            for key, value in member.memory().items():
                total[key] = total.get(key, 0) + value
        return total

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        with contextlib.suppress(Exception):
            self._pg.stop("immediate")
        with contextlib.suppress(Exception):
            self._redis.stop()
        for path in self._roots:
            shutil.rmtree(path, ignore_errors=True)


def _voxgate_command() -> list[str]:
    script = Path(sys.executable).with_name("voxgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "voxgate"]


def start_server(
    kind: str,
    root: Path,
    *,
    workers: int = 1,
    durability: str = "fsync",
    window_bytes: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start a server of ``kind`` (see :data:`KINDS`) under ``root``; waits until ready."""
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown server {kind!r}: one of {', '.join(KINDS)}")
    if kind == "voxgate-pg2":
        return Cluster(root, workers=workers, durability=durability, window_bytes=window_bytes)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    if window_bytes is not None:
        env["VOXGATE_WINDOW_BYTES"] = str(window_bytes)
        # The window may not be below the largest frame: a small one lowers that too.
        if window_bytes < Settings().max_frame_bytes:
            env["VOXGATE_MAX_FRAME_BYTES"] = str(window_bytes)
    data_dir = None
    if kind in ("voxgate", "voxgate-ref"):
        data_dir = root / f"data-{kind}-{port}"
        env |= {
            "VOXGATE_DATA_DIR": str(data_dir),
            "VOXGATE_API_KEYS": API_KEY,
            "VOXGATE_DURABILITY": durability,
            "VOXGATE_LOG_LEVEL": "WARNING",
            # Every simulated stream has its own session and token, all from one address.
            "VOXGATE_RATE_LIMIT_SESSIONS": "off",
            "VOXGATE_RATE_LIMIT_TOKENS": "off",
            "VOXGATE_RATE_LIMIT_SESSION_CONNECTS": "off",
            "VOXGATE_RATE_LIMIT_TRANSCRIPTS": "off",
            "VOXGATE_RATE_LIMIT_AUTH_FAILURES": "off",
            "VOXGATE_RATE_LIMIT_UPLOADS": "off",
            "VOXGATE_RATE_LIMIT_LISTEN_CONNECTS": "off",
            "VOXGATE_MAX_STREAMS_PER_IP": "0",
        }
        if kind == "voxgate-ref":
            ref = os.environ.get(REF_ENV)
            if not ref:
                raise ValueError(f"voxgate-ref needs ${REF_ENV}: the voxgate executable to run")
            executable = [ref]
        else:
            executable = _voxgate_command()
        command = [*executable, "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", str(workers)]
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        script = HERE / f"baseline_{kind}.py"
        command = [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", str(workers)]
    env |= extra_env or {}
    server = ServerProcess(kind, command, env, root / f"{kind}-{port}.log", port)
    server.data_dir = data_dir
    server.wait_ready()
    return server


async def _create(base_url: str, api_key: str, streams: int) -> tuple[list[str], list[str]]:
    headers = {"Authorization": f"Bearer {api_key}"}
    gate = asyncio.Semaphore(16)
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=30.0, limits=limits
    ) as http:

        async def one() -> tuple[str, str]:
            async with gate:
                created = await http.post("/v1/sessions", json={"codec": "pcm_s16le"})
                created.raise_for_status()
                session_id = created.json()["id"]
                minted = await http.post(f"/v1/sessions/{session_id}/tokens", json={"ttl_s": 3600})
                minted.raise_for_status()
                return session_id, minted.json()["token"]

        pairs = await asyncio.gather(*(one() for _ in range(streams)))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def sessions_and_tokens(
    kind: str, base_url: str, streams: int, api_key: str = API_KEY
) -> tuple[list[str], list[str]]:
    """Sessions with a fresh stream token each (voxgate); placeholders for the baselines."""
    if kind not in VOXGATE_KINDS:
        return [f"ses_baseline_{i}" for i in range(streams)], ["unused"] * streams
    return asyncio.run(_create(base_url, api_key, streams))
