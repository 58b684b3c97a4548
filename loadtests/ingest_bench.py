"""Ingest benchmark: voxgate's durable path against a bare Litestar/Granian baseline.

    python loadtests/ingest_bench.py --streams 16 --frame-bytes 640 \\
        --frames-per-message 10 --duration 10 [--workers 1] [--json out.json]

For each server in turn it starts the server as a subprocess on a free
127.0.0.1 port (voxgate: ``voxgate serve`` with a temporary data dir and a
fixed API key; baseline: ``loadtests/baseline_litestar.py``), runs the load
generator in a separate process, then stops the server. The generator opens
N WebSocket streams and sends as fast as the credit window allows (the
baseline advertises the same window, so it sees the same in-flight cap),
``frames-per-message`` frames per binary message. It counts frames acked
within the timed window (durable frames for voxgate), and per-frame ack
latency (send of the frame's message to the ack covering it). Afterwards
every voxgate stream is ended and its ``complete`` CRC is checked.

Only 127.0.0.1 is ever targeted; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from voxgate import _native
from voxgate.settings import Settings

HERE = Path(__file__).resolve().parent
API_KEY = "bench-key"
STARTUP_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 10.0
COMPLETE_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 20.0


@dataclass
class LoadSpec:
    """What one generator run does (picklable: it crosses into the generator process)."""

    target: str
    ws_base: str
    session_ids: list[str]
    tokens: list[str]
    frame_bytes: int
    frames_per_message: int
    duration_s: float
    verify: bool  # end each stream and check complete's CRC (voxgate only)
    driver: str = "raw"  # "raw": the lean loop below; "client": voxgate.client.StreamClient


@dataclass
class LoadResult:
    """What one generator run measured."""

    target: str
    streams: int
    duration_s: float
    frames_acked: int = 0
    bytes_acked: int = 0
    messages_sent: int = 0
    frames_per_s: float = 0.0
    mb_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    nacks: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    streams_verified: int = 0
    generator_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    other_cpu_s: float = 0.0  # the rest of the machine's busy time during the run


class StreamLoad:
    """One stream of the generator: a writer bounded by the window, a reader of acks."""

    def __init__(self, spec: LoadSpec, index: int, payload: bytes) -> None:
        self.spec = spec
        self.index = index
        self.payload = payload
        self.ws: ClientConnection | None = None
        self.window = 0
        self.max_message = 1 << 20
        self.inflight = 0
        self.next_seq = 0
        self.sent: dict[int, float] = {}
        self.resend: list[int] = []
        self.credit = asyncio.Event()
        self.complete: dict[str, Any] | None = None
        self.completed = asyncio.Event()
        self.drained = asyncio.Event()
        self.stop_at = float("inf")
        self.acked_in_window = 0
        self.messages = 0
        self.samples: list[float] = []
        self.nacks: dict[str, int] = {}

    async def open(self) -> None:
        session_id = self.spec.session_ids[self.index]
        url = f"{self.spec.ws_base}/v1/sessions/{session_id}/stream"
        self.ws = await connect(
            url,
            additional_headers={"Authorization": f"Bearer {self.spec.tokens[self.index]}"},
            compression=None,
            max_size=None,
            open_timeout=CONNECT_TIMEOUT_S,
            ping_interval=None,
        )
        hello = orjson.loads(await self.ws.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"expected hello, got {hello}")
        self.window = int(hello["window_bytes"])
        self.max_message = int(hello["max_message_bytes"])

    async def write(self) -> None:
        assert self.ws is not None
        fb = self.spec.frame_bytes
        per_message = min(self.spec.frames_per_message, self.max_message // (fb + 24))
        encode = _native.encode_frame
        payload = self.payload
        sent = self.sent
        clock = time.perf_counter
        while clock() < self.stop_at:
            fit = min(per_message, (self.window - self.inflight) // fb)
            if fit <= 0:
                self.credit.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.credit.wait(), 0.5)
                continue
            seqs = self.resend[:fit]
            del self.resend[:fit]
            while len(seqs) < fit:
                seqs.append(self.next_seq)
                self.next_seq += 1
            message = b"".join([encode(seq, payload) for seq in seqs])
            now = clock()
            for seq in seqs:
                sent[seq] = now
            self.inflight += fit * fb
            self.messages += 1
            await self.ws.send(message)

    async def read(self) -> None:
        assert self.ws is not None
        fb = self.spec.frame_bytes
        sent = self.sent
        clock = time.perf_counter
        samples = self.samples
        async for raw in self.ws:
            if isinstance(raw, bytes):
                continue
            message = orjson.loads(raw)
            kind = message["type"]
            if kind == "ack":
                now = clock()
                in_window = now <= self.stop_at
                done = 0
                for ranges in (message["acked"], message["duplicate"]):
                    for first, last in ranges:
                        for seq in range(first, last + 1):
                            at = sent.pop(seq, None)
                            if at is not None:
                                done += 1
                                if in_window:
                                    samples.append(now - at)
                self.inflight -= done * fb
                if in_window:
                    self.acked_in_window += done
                self.window = int(message["window_bytes"])
                self.credit.set()
                if not sent and not self.resend:
                    self.drained.set()
            elif kind == "nack":
                reason = message["reason"]
                for first, last in message["ranges"]:
                    for seq in range(first, last + 1):
                        if sent.pop(seq, None) is not None:
                            self.inflight -= fb
                            self.resend.append(seq)
                            self.nacks[reason] = self.nacks.get(reason, 0) + 1
                self.resend.sort()
                self.credit.set()
            elif kind == "complete":
                self.complete = message
                self.completed.set()
            elif kind == "error":
                raise RuntimeError(f"stream {self.index}: server error {message}")

    async def finish(self) -> bool:
        """Resend what was nacked, wait for every ack, then END and check complete's CRC."""
        assert self.ws is not None
        fb = self.spec.frame_bytes
        deadline = time.perf_counter() + DRAIN_TIMEOUT_S
        while self.resend and time.perf_counter() < deadline:
            if self.inflight + fb > self.window:
                self.credit.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.credit.wait(), 0.5)
                continue
            seq = self.resend.pop(0)
            self.sent[seq] = time.perf_counter()
            self.inflight += fb
            await self.ws.send(_native.encode_frame(seq, self.payload))
        if self.sent:
            self.drained.clear()
            await asyncio.wait_for(self.drained.wait(), max(0.1, deadline - time.perf_counter()))
        if not self.spec.verify:
            return False
        end_seq = self.next_seq
        await self.ws.send(_native.encode_frame(end_seq, b"", 0, True))
        await asyncio.wait_for(self.completed.wait(), COMPLETE_TIMEOUT_S)
        assert self.complete is not None
        frame_crc = _native.crc32c(self.payload)
        expected = 0
        for _ in range(end_seq):
            expected = _native.crc32c_combine(expected, frame_crc, fb)
        return bool(
            self.complete["stream_crc32c"] == expected
            and self.complete["frames"] == end_seq + 1
            and self.complete["bytes"] == end_seq * fb
        )


async def _client_stream(
    spec: LoadSpec, index: int, payload: bytes, start_at: float, result: LoadResult
) -> list[float]:
    """One stream driven by the real :class:`StreamClient`; returns its in-window samples."""
    from voxgate.client import Backoff, StreamClient

    tokens = iter([spec.tokens[index]])

    async def token() -> str:
        return next(tokens)  # one pre-minted token: a reconnect fails the stream

    http_base = spec.ws_base.replace("ws://", "http://", 1)
    client = StreamClient(
        http_base,
        spec.session_ids[index],
        token,
        frames_per_message=spec.frames_per_message,
        backoff=Backoff(max_attempts=1),
        keepalive_s=None,
    )
    async with client:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        stop_at = start_at + spec.duration_s
        while time.perf_counter() < stop_at:
            await client.send(payload, 0)
        stats = client.stats
        acked, samples = stats.frames_acked + stats.duplicates, list(stats.ack_latency_s)
        result.frames_acked += acked
        result.messages_sent += stats.messages_sent
        for reason, count in stats.nacks.items():
            result.nacks[reason] = result.nacks.get(reason, 0) + count
        if spec.verify:
            await client.end()
            await client.wait_complete(COMPLETE_TIMEOUT_S)
            result.streams_verified += 1
        else:
            await asyncio.wait_for(client.flush(), DRAIN_TIMEOUT_S)
    return samples


async def _generate_with_client(spec: LoadSpec) -> LoadResult:
    payload = os.urandom(spec.frame_bytes)
    result = LoadResult(
        target=spec.target, streams=len(spec.session_ids), duration_s=spec.duration_s
    )
    # Connections open during the first second; the clock starts after it.
    start_at = time.perf_counter() + 1.0
    outcomes = await asyncio.gather(
        *(_client_stream(spec, i, payload, start_at, result) for i in range(result.streams)),
        return_exceptions=True,
    )
    samples: list[float] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors.append(repr(outcome))
        else:
            samples += outcome
    result.bytes_acked = result.frames_acked * spec.frame_bytes
    result.frames_per_s = round(result.frames_acked / spec.duration_s, 1)
    result.mb_per_s = round(result.bytes_acked / spec.duration_s / 1e6, 3)
    result.latency_ms = _percentiles(samples)
    return result


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0), "n": len(ordered)}


async def _generate(spec: LoadSpec) -> LoadResult:
    payload = os.urandom(spec.frame_bytes)
    loads = [StreamLoad(spec, i, payload) for i in range(len(spec.session_ids))]
    result = LoadResult(target=spec.target, streams=len(loads), duration_s=spec.duration_s)
    await asyncio.gather(*(load.open() for load in loads))
    readers = [asyncio.create_task(load.read()) for load in loads]
    start = time.perf_counter()
    for load in loads:
        load.stop_at = start + spec.duration_s
    writers = await asyncio.gather(*(load.write() for load in loads), return_exceptions=True)
    result.errors += [repr(err) for err in writers if isinstance(err, BaseException)]
    finished = await asyncio.gather(*(load.finish() for load in loads), return_exceptions=True)
    for outcome in finished:
        if isinstance(outcome, BaseException):
            result.errors.append(repr(outcome))
        elif outcome:
            result.streams_verified += 1
    for load in loads:
        assert load.ws is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(load.ws.close(), 2.0)
    for reader in readers:
        reader.cancel()
    for reader_outcome in await asyncio.gather(*readers, return_exceptions=True):
        if isinstance(reader_outcome, BaseException) and not isinstance(
            reader_outcome, asyncio.CancelledError
        ):
            result.errors.append(repr(reader_outcome))
    samples: list[float] = []
    for load in loads:
        result.frames_acked += load.acked_in_window
        result.messages_sent += load.messages
        samples += load.samples
        for reason, count in load.nacks.items():
            result.nacks[reason] = result.nacks.get(reason, 0) + count
    result.bytes_acked = result.frames_acked * spec.frame_bytes
    result.frames_per_s = round(result.frames_acked / spec.duration_s, 1)
    result.mb_per_s = round(result.bytes_acked / spec.duration_s / 1e6, 3)
    result.latency_ms = _percentiles(samples)
    return result


def _generator_process(conn: Connection, spec: LoadSpec) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    try:
        generate = _generate_with_client if spec.driver == "client" else _generate
        result = asyncio.run(generate(spec))
    except BaseException as exc:  # report, never hang the parent
        result = LoadResult(spec.target, len(spec.session_ids), spec.duration_s, errors=[repr(exc)])
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.generator_cpu_s = round(
        after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 3
    )
    conn.send(asdict(result))
    conn.close()


# -- servers ------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in the process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 of stat: pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


class ServerProcess:
    """A server subprocess in its own process group, stopped with its workers."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = int(command[command.index("--port") + 1])
        self.log = log
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

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy in {STARTUP_TIMEOUT_S} s")

    def cpu_s(self) -> float:
        return _group_cpu_s(self.proc.pid)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _voxgate_command() -> list[str]:
    script = Path(sys.executable).with_name("voxgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "voxgate"]


def _limits_env(window_bytes: int | None) -> dict[str, str]:
    # Both servers read their advertised window from the same variable; the
    # window may not be below the largest frame, so a small one lowers that too.
    if window_bytes is None:
        return {}
    env = {"VOXGATE_WINDOW_BYTES": str(window_bytes)}
    if window_bytes < Settings().max_frame_bytes:
        env["VOXGATE_MAX_FRAME_BYTES"] = str(window_bytes)
    return env


def start_voxgate(
    root: Path, workers: int, durability: str, window_bytes: int | None
) -> ServerProcess:
    """``voxgate serve`` with its own data dir and API key; waits until healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env |= {
        "VOXGATE_DATA_DIR": str(root / "data"),
        "VOXGATE_API_KEYS": API_KEY,
        "VOXGATE_DURABILITY": durability,
        "VOXGATE_LOG_LEVEL": "WARNING",
        # Every simulated stream has its own session and token, all from one address.
        "VOXGATE_RATE_LIMIT_SESSIONS": "off",
        "VOXGATE_RATE_LIMIT_TOKENS": "off",
        "VOXGATE_MAX_STREAMS_PER_IP": "0",
    }
    env |= _limits_env(window_bytes)
    command = [*_voxgate_command(), "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers)]
    server = ServerProcess("voxgate", command, env, root / "voxgate.log")
    server.wait_healthy()
    return server


def start_baseline(root: Path, workers: int, window_bytes: int | None) -> ServerProcess:
    """``baseline_litestar.py`` on Granian; waits until healthy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env |= _limits_env(window_bytes)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    command = [sys.executable, str(HERE / "baseline_litestar.py"), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    server = ServerProcess("baseline", command, env, root / "baseline.log")
    server.wait_healthy()
    return server


def _sessions_and_tokens(base_url: str, streams: int) -> tuple[list[str], list[str]]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    sessions: list[str] = []
    tokens: list[str] = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=10.0) as http:
        for _ in range(streams):
            created = http.post("/v1/sessions", json={"codec": "pcm_s16le"})
            created.raise_for_status()
            session_id = created.json()["id"]
            minted = http.post(f"/v1/sessions/{session_id}/tokens", json={"ttl_s": 600})
            minted.raise_for_status()
            sessions.append(session_id)
            tokens.append(minted.json()["token"])
    return sessions, tokens


def run_load(spec: LoadSpec, server: ServerProcess) -> dict[str, Any]:
    """Run the generator in its own process against ``server``; bounded in time."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    cpu_before = server.cpu_s()
    busy_before = _machine_busy_s()
    process = context.Process(target=_generator_process, args=(child, spec), daemon=True)
    process.start()
    child.close()
    budget = spec.duration_s + CONNECT_TIMEOUT_S + DRAIN_TIMEOUT_S + COMPLETE_TIMEOUT_S + 30
    result: dict[str, Any]
    if parent.poll(budget):
        result = parent.recv()
    else:
        result = asdict(LoadResult(spec.target, len(spec.session_ids), spec.duration_s))
        result["errors"] = [f"generator gave no result within {budget:.0f} s"]
    process.join(5)
    if process.is_alive():
        process.kill()
    result["server_cpu_s"] = round(server.cpu_s() - cpu_before, 3)
    # Whatever else ran meanwhile (other jobs on a shared machine) skews the figures.
    busy = _machine_busy_s() - busy_before
    result["other_cpu_s"] = round(
        max(0.0, busy - result["server_cpu_s"] - result["generator_cpu_s"]), 3
    )
    return result


# -- report ---------------------------------------------------------------------------


def _row(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    duration = result["duration_s"]
    return (
        f"{result['target']:<9} {result['frames_per_s']:>11,.0f} {result['mb_per_s']:>8.2f} "
        f"{lat.get('p50', float('nan')):>8.2f} {lat.get('p95', float('nan')):>8.2f} "
        f"{lat.get('p99', float('nan')):>8.2f} "
        f"{100 * result['server_cpu_s'] / duration:>7.0f}% "
        f"{100 * result['generator_cpu_s'] / duration:>6.0f}% "
        f"{100 * result['other_cpu_s'] / duration:>6.0f}%"
    )


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table and the voxgate/baseline ratios; returns the JSON document."""
    print()
    print(
        f"streams={args.streams} frame_bytes={args.frame_bytes} "
        f"frames_per_message={args.frames_per_message} duration={args.duration}s "
        f"workers={args.workers} durability={args.durability} driver={args.driver} "
        f"window_bytes={args.window_bytes or 'default'} cpus={os.cpu_count()}"
    )
    print(
        f"{'server':<9} {'frames/s':>11} {'MB/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'srv CPU':>8} {'gen CPU':>7} {'other':>7}"
    )
    for result in results.values():
        print(_row(result))
    ratios: dict[str, float] = {}
    if "voxgate" in results and "baseline" in results:
        vox, base = results["voxgate"], results["baseline"]
        if base["frames_per_s"]:
            ratios["frames_per_s"] = round(vox["frames_per_s"] / base["frames_per_s"], 3)
        for q in ("p50", "p95", "p99"):
            if vox["latency_ms"].get(q) and base["latency_ms"].get(q):
                ratios[f"latency_{q}"] = round(vox["latency_ms"][q] / base["latency_ms"][q], 2)
        print(
            "voxgate/baseline: throughput x{:.3f}, latency p50 x{}, p99 x{}".format(
                ratios.get("frames_per_s", float("nan")),
                ratios.get("latency_p50", "n/a"),
                ratios.get("latency_p99", "n/a"),
            )
        )
    for result in results.values():
        notes = []
        if result["nacks"]:
            notes.append(f"nacks {result['nacks']}")
        if result["target"] == "voxgate":
            notes.append(f"streams verified {result['streams_verified']}/{result['streams']}")
        if result["errors"]:
            notes.append(f"errors {result['errors'][:3]}")
        if notes:
            print(f"{result['target']}: " + "; ".join(notes))
    return {
        "config": {
            "streams": args.streams,
            "frame_bytes": args.frame_bytes,
            "frames_per_message": args.frames_per_message,
            "duration_s": args.duration,
            "workers": args.workers,
            "durability": args.durability,
            "window_bytes": args.window_bytes,
            "driver": args.driver,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "results": results,
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="voxgate ingest benchmark")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--frame-bytes", type=int, default=640)
    parser.add_argument("--frames-per-message", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per server")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--durability", choices=("fsync", "process"), default="fsync")
    parser.add_argument(
        "--window-bytes",
        type=int,
        default=None,
        help="per-stream credit window of both servers (default: voxgate's default)",
    )
    parser.add_argument(
        "--servers", default="voxgate,baseline", help="comma-separated: voxgate, baseline"
    )
    parser.add_argument(
        "--driver",
        choices=("raw", "client"),
        default="raw",
        help="load loop: a lean protocol loop (raw) or voxgate.client.StreamClient (client)",
    )
    parser.add_argument("--data-root", default=None, help="parent dir of the temp data dir")
    parser.add_argument("--json", dest="json_out", default=None, help="write results here")
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 1000 or not 0 < args.duration <= 600:
        parser.error("--streams must be 1..1000 and --duration 0..600 s")
    if args.frame_bytes < 1 or args.frames_per_message < 1:
        parser.error("--frame-bytes and --frames-per-message must be at least 1")

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-", dir=args.data_root) as tmp:
        root = Path(tmp)
        for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
            if name == "voxgate":
                server = start_voxgate(root, args.workers, args.durability, args.window_bytes)
            elif name == "baseline":
                server = start_baseline(root, args.workers, args.window_bytes)
            else:
                parser.error(f"unknown server {name!r}")
            try:
                if name == "voxgate":
                    sessions, tokens = _sessions_and_tokens(server.base_url, args.streams)
                else:
                    sessions = [f"ses_baseline_{i}" for i in range(args.streams)]
                    tokens = ["unused"] * args.streams
                spec = LoadSpec(
                    target=name,
                    ws_base=f"ws://127.0.0.1:{server.port}",
                    session_ids=sessions,
                    tokens=tokens,
                    frame_bytes=args.frame_bytes,
                    frames_per_message=args.frames_per_message,
                    duration_s=args.duration,
                    verify=name == "voxgate",
                    driver=args.driver,
                )
                print(f"running {name} for {args.duration:g} s ...", flush=True)
                results[name] = run_load(spec, server)
            finally:
                server.stop()
    document = report(results, args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n")
    failed = any(r["errors"] for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
