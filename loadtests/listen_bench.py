"""Live fan-out benchmark: what publishing costs ingest, and how listener audio should travel.

    python loadtests/listen_bench.py micro [--json out.json]
    python loadtests/listen_bench.py ingest --streams 16 --listeners 0,16 --duration 10 \\
        [--redis] [--json out.json]

``micro`` runs in-process against a temporary embedded store and, when
``redis-server`` is installed, a private Redis on a free loopback port:

- the hub's publishing path per commit (what the writer's hook and the next
  event-loop turn cost), without listeners, with local listeners, and with
  the Redis bus;
- the two ways audio could reach a listener on another instance: re-read
  from the store by seq range (what voxgate does), or pushed through Redis
  pub/sub with every commit. Both report MB/s and CPU seconds per MB.

``ingest`` starts ``voxgate serve`` (twice with ``--redis``, over one data
dir: listeners on the second instance) and runs the load generator of
``ingest_bench.py`` (``loadgen.py``) while N audio listeners, one per stream
in a process of their own, read everything; it prints the ingest rate for
each listener count, the ingesting server's CPU per frame and how much audio
the listeners received.

Only 127.0.0.1 is ever targeted; every phase is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis.asyncio
import redis.exceptions
from websockets.asyncio.client import connect

from benchservers import API_KEY, Server, sessions_and_tokens, start_server
from ingest_bench import run_load
from loadgen import LoadSpec
from voxgate._native import FLAG_END, StreamDecoder, crc32c
from voxgate.fanout.bus import LocalBus, RedisBus
from voxgate.fanout.events import Out
from voxgate.fanout.hub import Hub
from voxgate.fanout.listener import Listener
from voxgate.ingest.stream import StreamRegistry
from voxgate.redis_client import redis_client
from voxgate.settings import Settings
from voxgate.store.base import FrameIn
from voxgate.store.sqlite import SqliteStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis(root: Path) -> Any:
    """A throwaway redis-server on a free loopback port, or None when none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(root)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def cpu_s() -> float:
    times = os.times()
    return times.user + times.system


# -- micro ----------------------------------------------------------------------------


class Counter(Listener):
    """A local listener that only counts what its feed offers."""

    def __init__(self, hub: Hub, session_id: str) -> None:
        settings = hub.settings
        super().__init__(
            hub.store,
            session_id,
            audio=False,
            from_seq=0,
            last_event_id=0,
            buffer_events=settings.listen_buffer_events,
            max_lag_frames=settings.listen_max_lag_frames,
        )
        self.count = 0

    def offer(self, out: Out) -> None:
        self.count += 1


def commit_batch(sessions: list[str], first_seq: int, per_session: int, size: int) -> list[FrameIn]:
    payload = b"\x01" * size
    crc = crc32c(payload)
    return [
        FrameIn(sid, first_seq + i, 0, 0, crc, payload)
        for i in range(per_session)
        for sid in sessions
    ]


async def publish_cost(
    root: Path, redis_url: str | None, sessions: int, per_session: int, rounds: int
) -> dict[str, float]:
    """Microseconds of CPU per commit spent by the hub's publishing path."""
    store = SqliteStore(root / "publish", durability="process")
    await store.open()
    results: dict[str, float] = {}
    modes = ["local, no listeners", "local, a listener per session"]
    if redis_url:
        modes.append("redis, no local listeners")
    try:
        for mode in modes:
            client = redis_client(redis_url) if redis_url and mode.startswith("redis") else None
            bus = RedisBus(client) if client is not None else LocalBus()
            hub = Hub(Settings(), store, bus, StreamRegistry().window_of)
            await hub.start()
            ids = [
                (
                    await store.create_session(
                        codec=None, sample_rate=None, channels=None, metadata={}
                    )
                ).id
                for _ in range(sessions)
            ]
            counters = []
            if "a listener" in mode:
                for sid in ids:
                    counter = Counter(hub, sid)
                    await hub.join(counter)
                    counters.append(counter)
            # Commits first (their cost is not the hub's), then their results, timed.
            committed = []
            for r in range(rounds):
                frames = commit_batch(ids, r * per_session, per_session, 640)
                committed.append((frames, await store.commit(frames)))
            started = cpu_s()
            for frames, result in committed:
                hub.committed(frames, result)
                await asyncio.sleep(0)  # the turns in which the hub publishes
                await asyncio.sleep(0)
            if isinstance(hub.bus, RedisBus):
                await hub.bus.drained()
            elapsed = cpu_s() - started
            results[mode] = elapsed / rounds * 1e6
            if counters:
                assert sum(c.count for c in counters) == len(ids) * rounds
            for counter in counters:
                hub.leave(counter)
            await hub.stop(1.0)
            if client is not None:
                await client.aclose()
    finally:
        await store.close()
    return results


async def audio_paths(root: Path, redis_url: str | None, megabytes: int) -> dict[str, Any]:
    """Re-reading audio from the store versus pushing it through Redis, per MB."""
    frame_bytes, per_commit = 640, 50
    total_frames = megabytes * (1 << 20) // frame_bytes
    store = SqliteStore(root / "audio", durability="process")
    await store.open()
    out: dict[str, Any] = {}
    try:
        sid = (
            await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
        ).id
        for first in range(0, total_frames, 1000):
            await store.commit(
                commit_batch([sid], first, min(1000, total_frames - first), frame_bytes)
            )
        # What a listener does: read from the store by seq range, frame, hand to the socket.
        hub = Hub(
            Settings(listen_max_lag_frames=total_frames),
            store,
            LocalBus(),
            StreamRegistry().window_of,
        )
        await hub.start()
        listener = hub.new_listener(sid, audio=True, from_seq=0, last_event_id=0)
        await hub.join(listener)
        started, wall = cpu_s(), time.perf_counter()
        run = listener.run()
        async for item in run:
            if isinstance(item, Out) and item.kind == "audio" and listener.cursor == total_frames:
                break
        out["store re-read"] = _rate(megabytes, cpu_s() - started, time.perf_counter() - wall)
        await run.aclose()
        hub.leave(listener)
        await hub.stop(1.0)
    finally:
        await store.close()
    if redis_url is None:
        return out
    publisher = redis.asyncio.Redis.from_url(redis_url)
    subscriber = redis.asyncio.Redis.from_url(redis_url)
    pubsub = subscriber.pubsub()
    await pubsub.subscribe("bench:audio")
    message = b"\x02" * (frame_bytes * per_commit)
    messages = total_frames // per_commit
    received = 0

    async def receive() -> None:
        nonlocal received
        while received < messages:
            got = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if got is not None:
                received += 1

    started, wall = cpu_s(), time.perf_counter()
    reader = asyncio.create_task(receive())
    try:
        for first in range(0, messages, 100):
            pipe = publisher.pipeline(transaction=False)
            for _ in range(min(100, messages - first)):
                pipe.publish("bench:audio", message)
            await pipe.execute()
        await asyncio.wait_for(reader, 120)
        out["redis push"] = _rate(megabytes, cpu_s() - started, time.perf_counter() - wall)
    except redis.exceptions.ConnectionError as exc:
        # Redis drops a subscriber whose output buffer passes client-output-buffer-limit.
        out["redis push"] = {"error": f"subscriber dropped after {received} messages: {exc}"}
        reader.cancel()
    await pubsub.aclose()
    await subscriber.aclose()
    await publisher.aclose()
    return out


def _rate(megabytes: int, cpu: float, wall: float) -> dict[str, float]:
    return {"mb_per_s": round(megabytes / wall, 1), "cpu_s_per_mb": round(cpu / megabytes, 4)}


def run_micro(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="voxgate-listen-bench-") as tmp:
        root = Path(tmp)
        with private_redis(root) as redis_url:
            publish = asyncio.run(publish_cost(root, redis_url, 64, 16, args.rounds))
            audio = asyncio.run(audio_paths(root, redis_url, args.megabytes))
    print(f"publishing path, per commit of 64 sessions x 16 frames ({args.rounds} commits):")
    for mode, micros in publish.items():
        print(f"  {mode:<32} {micros:>9.1f} us CPU")
    print(f"audio for a listener, {args.megabytes} MiB of 640-byte frames:")
    for path, rate in audio.items():
        if "error" in rate:
            print(f"  {path:<16} {rate['error']}")
        else:
            print(
                f"  {path:<16} {rate['mb_per_s']:>8.1f} MB/s  {rate['cpu_s_per_mb']:.4f} CPU s/MB"
            )
    if redis_url is None:
        print("  (no redis-server installed: the Redis figures are left out)")
    return {"publish_us_per_commit": publish, "audio": audio}


# -- ingest with listeners ----------------------------------------------------------------


def _listener_process(
    conn: Connection, ws_base: str, session_ids: list[str], budget: float
) -> None:
    conn.send(asyncio.run(_listen(ws_base, session_ids, budget)))
    conn.close()


async def _listen(ws_base: str, session_ids: list[str], budget: float) -> dict[str, Any]:
    """One audio listener per session, each until its session's END frame (or ``budget``)."""
    heard = {"frames": 0, "bytes": 0}
    closes: list[int] = []

    async def one(sid: str) -> None:
        decoder = StreamDecoder(1 << 20)
        async with connect(
            f"{ws_base}/v1/sessions/{sid}/listen?audio=true",
            additional_headers={"Authorization": f"Bearer {API_KEY}"},
            max_size=None,
            compression=None,
            ping_interval=None,
        ) as ws:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(budget):
                    async for message in ws:
                        if not isinstance(message, bytes):
                            continue
                        for _, flags, _, payload, _, _ in decoder.feed(message):
                            heard["frames"] += 1
                            heard["bytes"] += len(payload or b"")
                            if flags & FLAG_END:
                                return
            if ws.close_code is not None:
                closes.append(ws.close_code)

    await asyncio.gather(*(one(sid) for sid in session_ids), return_exceptions=True)
    return {**heard, "closes": closes}


def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="voxgate-listen-bench-") as tmp:
        root = Path(tmp)
        redis_cm = private_redis(root) if args.redis else contextlib.nullcontext()
        with redis_cm as redis_url:
            if args.redis and redis_url is None:
                raise SystemExit("--redis needs redis-server installed")
            for count in [int(n) for n in args.listeners.split(",")]:
                results[str(count)] = _ingest_once(args, root / f"run{count}", count, redis_url)
    where = "on a second instance via Redis" if args.redis else "on the same instance"
    print(f"\ningest of {args.streams} streams, listeners {where}:")
    print(
        f"{'listeners':>9} {'frames/s':>11} {'MB/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'heard MB':>9} {'A CPU us/frame':>15} {'other CPU s':>11}"
    )
    for label, result in results.items():
        load, heard = result["load"], result["listeners"]
        lat = load["latency_ms"]
        print(
            f"{label:>9} {load['frames_per_s']:>11,.0f} {load['mb_per_s']:>7.2f} "
            f"{lat.get('p50', float('nan')):>7.2f} {lat.get('p99', float('nan')):>7.2f} "
            f"{heard.get('bytes', 0) / 2**20:>9.1f}"
            f" {1e6 * load['server_cpu_s'] / max(1, load['frames_acked']):>15.1f}"
            f" {load['other_cpu_s']:>11.1f}"
        )
        if load["errors"]:
            print(f"  errors: {load['errors'][:3]}")
    return results


def _ingest_once(
    args: argparse.Namespace, root: Path, count: int, redis_url: str | None
) -> dict[str, Any]:
    root.mkdir(parents=True)
    extra = {"VOXGATE_DATA_DIR": str(root / "data")}
    if redis_url:
        extra["VOXGATE_REDIS_URL"] = redis_url
    ingest_server = start_server("voxgate", root, durability=args.durability, extra_env=extra)
    listen_server: Server = ingest_server
    try:
        if redis_url:
            listen_server = start_server(
                "voxgate", root, durability=args.durability, extra_env=extra
            )
        sessions, tokens = sessions_and_tokens("voxgate", ingest_server.base_url, args.streams)
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        listeners = context.Process(
            target=_listener_process,
            args=(child, listen_server.ws_base, sessions[:count], args.duration + 60),
            daemon=True,
        )
        if count:
            listeners.start()
            time.sleep(1.0)  # connected before the load starts
        spec = LoadSpec(
            target="voxgate",
            ws_base=ingest_server.ws_base,
            session_ids=sessions,
            tokens=tokens,
            frame_bytes=args.frame_bytes,
            frames_per_message=args.frames_per_message,
            duration_s=args.duration,
            verify=True,  # END every stream: the listeners stop at it
        )
        print(f"ingest with {count} audio listeners for {args.duration:g} s ...", flush=True)
        load = run_load(spec, ingest_server)
        heard: dict[str, Any] = {}
        if count:
            heard = parent.recv() if parent.poll(args.duration + 90) else {}
            listeners.join(5)
            if listeners.is_alive():
                listeners.kill()
        load.pop("per_stream_acked", None)
        return {"load": load, "listeners": heard}
    finally:
        ingest_server.stop()
        if listen_server is not ingest_server:
            listen_server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="voxgate live fan-out benchmark")
    parser.add_argument("--json", dest="json_out", default=None, help="write results here")
    commands = parser.add_subparsers(dest="command", required=True)
    micro = commands.add_parser("micro", help="in-process: publishing cost, audio paths")
    micro.add_argument("--rounds", type=int, default=2000)
    micro.add_argument("--megabytes", type=int, default=64)
    ingest = commands.add_parser("ingest", help="servers: ingest rate with audio listeners")
    ingest.add_argument("--streams", type=int, default=16)
    ingest.add_argument("--listeners", default="0,16", help="comma-separated listener counts")
    ingest.add_argument("--frame-bytes", type=int, default=640)
    ingest.add_argument("--frames-per-message", type=int, default=10)
    ingest.add_argument("--duration", type=float, default=10.0)
    ingest.add_argument("--durability", choices=("fsync", "process"), default="fsync")
    ingest.add_argument("--redis", action="store_true", help="two instances, listeners on B")
    args = parser.parse_args(argv)
    document: dict[str, Any]
    if args.command == "micro":
        if not 1 <= args.rounds <= 100_000 or not 1 <= args.megabytes <= 1024:
            parser.error("--rounds must be 1..100000 and --megabytes 1..1024")
        document = run_micro(args)
    else:
        try:
            counts = [int(n) for n in args.listeners.split(",")]
        except ValueError:
            parser.error("--listeners takes comma-separated integers")
        if not 1 <= args.streams <= 1000 or any(not 0 <= n <= args.streams for n in counts):
            parser.error("--streams must be 1..1000 and each listener count 0..streams")
        if not 0 < args.duration <= 600:
            parser.error("--duration must be 0..600 s")
        document = run_ingest(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
