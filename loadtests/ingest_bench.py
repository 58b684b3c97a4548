"""Ingest benchmark: voxgate's durable path beside what users would run instead.

    # one load against several servers, printed side by side with ratios
    python loadtests/ingest_bench.py compare --servers voxgate,litestar,fastapi,picows \\
        --streams 16 --frame-bytes 640 --frames-per-message 1 --duration 10 [--repeat 3]

    # live calls held at ack p99 <= 50 ms: a doubling ladder of paced streams from 50
    python loadtests/ingest_bench.py capacity --servers voxgate,litestar --driver rust \\
        --rate 50 --frames-per-message 1

    # every target of docs/performance.md in one run, as ratios, with a verdict each
    python loadtests/ingest_bench.py targets [--repeat 3] [--json targets.json]

    # the long-session tool: 120 chunks of 30 s audio per stream, as fast as acks allow
    python loadtests/ingest_bench.py session --chunks 120 --chunk-seconds 30 --fast \\
        --streams 4 --json session.json [--url http://127.0.0.1:8000 --api-key KEY]

    # resident memory per idle open stream
    python loadtests/ingest_bench.py idle --streams 2000

Servers (``loadtests/benchservers.py``): ``voxgate``; the baselines (a) ``litestar``,
``voxgate-ref`` (another build, ``$VOXGATE_BENCH_REF``), (c) ``fastapi``, (d) ``picows``.
Each starts as a subprocess on a free 127.0.0.1 port and stops after its run.
The load comes from ``loadtests/loadgen.py`` (picows + uvloop, callbacks, no
task per stream) in a process of its own, or with ``--driver rust`` from
``loadtests/loadgen-rs`` (built on first use); ``--generators N`` splits the
streams over N such processes (``generators.py``). Their CPU use is printed
beside the server's, in all and per message, so a saturated generator shows.
voxgate streams are ended and their ``complete`` CRC checked after every run.
Only 127.0.0.1 is ever targeted; every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchservers import (
    API_KEY,
    KINDS,
    ROLES,
    VOXGATE_KINDS,
    Server,
    disk_usage,
    group_memory,
    machine_busy_s,
    sessions_and_tokens,
    start_server,
)
from generators import DRIVERS, failed_result, open_generator
from loadgen import CONNECT_TIMEOUT_S, LoadSpec


@dataclass
class Scenario:
    """One load shape."""

    name: str
    streams: int
    frame_bytes: int
    frames_per_message: int
    duration_s: float
    rate: float | None = None
    inflight: int | None = None  # unacked messages per stream; None: --inflight


# -- running one load ----------------------------------------------------------------


def run_load(
    spec: LoadSpec,
    server: Server | None,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    budget_s: float | None = None,
    generators: int = 1,
    threads: int = 1,
) -> dict[str, Any]:
    """Run ``spec`` in ``generators`` processes of ``spec.driver`` against ``server``.

    Bounded in time; ``threads`` is the Rust generator's runtime threads.
    """
    generator = open_generator(spec, generators, threads)
    try:
        try:
            generator.wait_ready(CONNECT_TIMEOUT_S + 0.02 * len(spec.session_ids) + 30)
        except (RuntimeError, TimeoutError) as exc:
            return generator.result or failed_result(spec, repr(exc))
        cpu_before = server.cpu_s() if server is not None else 0.0
        services = getattr(server, "services_cpu_s", None)
        services_before = services() if services is not None else {}
        busy_before = machine_busy_s()
        generator.start()
        budget = budget_s or (spec.duration_s or 600.0) + 90.0
        try:
            result = generator.wait_result(budget, on_progress)
        except (RuntimeError, TimeoutError) as exc:
            result = failed_result(spec, repr(exc))
        if server is not None:
            result["server_cpu_s"] = round(server.cpu_s() - cpu_before, 3)
        if services is not None:
            # PostgreSQL and Redis of a cluster: CPU outside the instances' process groups.
            after = services()
            result["services_cpu_s"] = {
                k: round(after[k] - services_before.get(k, 0.0), 3) for k in after
            }
        # Whatever else ran meanwhile (other jobs on a shared machine) skews the figures.
        busy = machine_busy_s() - busy_before
        result["other_cpu_s"] = round(
            max(0.0, busy - result["server_cpu_s"] - result["generator_cpu_s"]), 3
        )
        return result
    finally:
        generator.close()


def one_run(kind: str, scenario: Scenario, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Start ``kind``, run ``scenario`` against it, stop it; returns the result."""
    server = start_server(
        kind, root, workers=args.workers, durability=args.durability, window_bytes=args.window_bytes
    )
    try:
        sessions, tokens = sessions_and_tokens(kind, server.base_url, scenario.streams)
        spec = LoadSpec(
            target=kind,
            ws_base=server.ws_base,
            ws_bases=getattr(server, "ws_bases", ()),
            session_ids=sessions,
            tokens=tokens,
            frame_bytes=scenario.frame_bytes,
            frames_per_message=scenario.frames_per_message,
            duration_s=scenario.duration_s,
            rate=scenario.rate,
            verify=kind in VOXGATE_KINDS,
            driver=args.driver,
            inflight_messages=scenario.inflight or args.inflight,
            warmup_s=args.warmup,
        )
        result = run_load(spec, server, generators=args.generators, threads=args.gen_threads)
        result["server_memory"] = server.memory()
        result.pop("per_stream_acked", None)
        result.pop("latency_hist_us", None)
        return result
    finally:
        server.stop()


def _median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every run's figure beside it."""
    ordered = sorted(runs, key=lambda r: r["frames_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_frames_per_s"] = [r["frames_per_s"] for r in runs]
    chosen["runs_p99_ms"] = [r["latency_ms"].get("p99") for r in runs]
    chosen["errors"] = [e for r in runs for e in r["errors"]]
    return chosen


def compare(
    kinds: list[str], scenario: Scenario, root: Path, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Each server under ``scenario``, ``--repeat`` times interleaved; medians."""
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for round_ in range(args.repeat):
        for kind in kinds:
            print(f"  [{scenario.name}] {kind} run {round_ + 1}/{args.repeat} ...", flush=True)
            runs[kind].append(one_run(kind, scenario, root, args))
    return {kind: _median_result(results) for kind, results in runs.items()}


# -- reports -------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(title: str, results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        f"{'server':<34} {'frames/s':>10} {'MB/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'srv CPU':>8} {'gen CPU':>8} {'gen us/msg':>10} {'other':>6}"
        "  runs (frames/s)"
    )
    for kind, r in results.items():
        lat = r["latency_ms"]
        duration = r["duration_s"] or 1.0
        # Generator CPU per message sent (connects, drain and END included): its own cost.
        per_message = (
            1e6 * r["generator_cpu_s"] / r["messages_sent"] if r["messages_sent"] else None
        )
        print(
            f"{ROLES.get(kind, kind):<34} {r['frames_per_s']:>10,.0f} {r['mb_per_s']:>8.2f} "
            f"{_fmt(lat.get('p50')):>8} {_fmt(lat.get('p95')):>8} {_fmt(lat.get('p99')):>8} "
            f"{100 * r['server_cpu_s'] / duration:>7.0f}% "
            f"{100 * r['generator_cpu_s'] / duration:>7.0f}% "
            f"{_fmt(per_message, '.1f'):>10} "
            f"{100 * r.get('other_cpu_s', 0.0) / duration:>5.0f}%  "
            f"{', '.join(f'{x:,.0f}' for x in r.get('runs_frames_per_s', []))}"
        )
    for kind, r in results.items():
        notes = []
        if r["nacks"]:
            notes.append(f"nacks {r['nacks']}")
        if r.get("closes"):
            notes.append(f"closes {r['closes']}")
        if lat_late := r["latency_ms"].get("late_messages"):
            notes.append(f"late paced messages {lat_late}")
        if kind in VOXGATE_KINDS:
            notes.append(f"streams verified {r['streams_verified']}/{r['streams']}")
        if r["errors"]:
            notes.append(f"errors {r['errors'][:3]}")
        if notes:
            print(f"  {kind}: " + "; ".join(notes))


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average_at_start": os.getloadavg(),
        "workers": args.workers,
        "durability": args.durability,
        "window_bytes": args.window_bytes,
        "repeat": getattr(args, "repeat", 1),
        "driver": args.driver,
        "generators": args.generators,
        "inflight_messages": args.inflight,
    }


# -- subcommands ---------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    scenario = Scenario(
        "compare", args.streams, args.frame_bytes, args.frames_per_message, args.duration, args.rate
    )
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-", dir=args.data_root) as tmp:
        results = compare(kinds, scenario, Path(tmp), args)
    print_table(
        f"streams={args.streams} frame_bytes={args.frame_bytes} "
        f"frames_per_message={args.frames_per_message} duration={args.duration}s "
        f"rate={args.rate or 'credit-bound'} repeat={args.repeat} cpus={os.cpu_count()}",
        results,
    )
    ratios: dict[str, float | None] = {}
    if "voxgate" in results:
        for kind, r in results.items():
            if kind != "voxgate":
                ratios[f"voxgate/{kind}"] = ratio(
                    results["voxgate"]["frames_per_s"], r["frames_per_s"]
                )
        print(
            "ratios (frames/s): " + ", ".join(f"{k} x{_fmt(v, '.3f')}" for k, v in ratios.items())
        )
    document = {"environment": environment(args), "scenario": asdict(scenario)}
    document |= {"results": results, "ratios": ratios}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results.values()) else 0


def cmd_capacity(args: argparse.Namespace) -> int:
    """Live calls each server holds: paced streams on a doubling ladder from ``--start``,
    each rung run for every server in turn, until ack p99 passes ``--p99-ms`` (or frames
    go unacked). Capacity is the last rung that held."""
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-", dir=args.data_root) as tmp:
        held, rungs = _capacity(
            kinds,
            args.rate,
            args.frames_per_message,
            args.start,
            args.max_streams,
            args.p99_ms,
            args.duration,
            Path(tmp),
            args,
        )
    print(f"\nlive-call capacity (ack p99 <= {args.p99_ms:g} ms, >= 95% of offered acked):")
    for kind, n in held.items():
        print(f"  {kind:12} {n if n is not None else f'< {args.start}'} streams")
    mine = held.get("voxgate")
    if mine:
        for kind, n in held.items():
            if kind != "voxgate" and n:
                print(f"  voxgate/{kind} x{mine / n:.2f}")
    document = {"environment": environment(args), "held": held, "rungs": rungs}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n")
    return 0


def measure_idle(kind: str, streams: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Server RSS before and with ``streams`` idle open streams; bytes per stream."""
    server = start_server(kind, root, workers=1, durability=args.durability)
    try:
        sessions, tokens = sessions_and_tokens(kind, server.base_url, streams)
        # Warm up: one short-lived stream, so first-use allocations are not counted.
        driver = args.driver
        spec = LoadSpec(kind, server.ws_base, sessions, tokens, 640, 1, idle=True, driver=driver)
        warm = LoadSpec(kind, server.ws_base, sessions[:1], tokens[:1], 640, 1, duration_s=0.5)
        if kind in VOXGATE_KINDS:
            more, more_tokens = sessions_and_tokens(kind, server.base_url, 1)
            warm = LoadSpec(kind, server.ws_base, more, more_tokens, 640, 1, duration_s=0.5)
        warm.driver = driver
        run_load(warm, server)
        time.sleep(1.0)
        before = server.memory()
        generator = open_generator(spec, args.generators, args.gen_threads)
        try:
            generator.wait_ready(CONNECT_TIMEOUT_S + 0.02 * streams + 30)
            time.sleep(2.0)  # let the server settle its per-connection state
            during = server.memory()
            generator.start()
            generator.stop_idle()
            generator.wait_result(30.0)
        finally:
            generator.close()
        delta = during["VmRSS"] - before["VmRSS"]
        return {
            "server": kind,
            "streams": streams,
            "rss_before_mb": round(before["VmRSS"] / 1e6, 2),
            "rss_with_streams_mb": round(during["VmRSS"] / 1e6, 2),
            "bytes_per_stream": round(delta / streams),
            "fds_with_streams": during["fds"],
        }
    finally:
        server.stop()


def cmd_idle(args: argparse.Namespace) -> int:
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    out = []
    with tempfile.TemporaryDirectory(prefix="voxgate-idle-", dir=args.data_root) as tmp:
        for kind in kinds:
            for _ in range(args.repeat):
                out.append(measure_idle(kind, args.streams, Path(tmp), args))
                print(json.dumps(out[-1]), flush=True)
    medians = {
        kind: statistics.median(o["bytes_per_stream"] for o in out if o["server"] == kind)
        for kind in kinds
    }
    for kind, value in medians.items():
        print(f"{kind}: {value / 1000:.1f} KB resident per idle open stream (median)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": out, "median": medians}, indent=2))
    return 0


TARGETS_DOC = "docs/performance.md"


def disk_write_sync_mb_s(root: Path, seconds: float = 3.0) -> float:
    """This disk's own bandwidth for 1 MiB writes each followed by fdatasync, in MB/s."""
    block = os.urandom(1 << 20)
    path = root / "disk-baseline.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    written = 0
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.write(fd, block)
            os.fdatasync(fd)
            written += len(block)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return written / elapsed / 1e6


def _capacity(
    kinds: list[str],
    rate: float,
    per_message: int,
    start: int,
    ceiling: int,
    p99_ms: float,
    duration_s: float,
    root: Path,
    args: argparse.Namespace,
) -> tuple[dict[str, int | None], list[dict[str, Any]]]:
    """Most paced streams (doubling from ``start``) each server holds at ack p99 <= p99_ms
    with at least 95% of the offered frames acked; and every rung's figures."""
    held: dict[str, int | None] = dict.fromkeys(kinds)
    alive = set(kinds)
    rungs: list[dict[str, Any]] = []
    streams = start
    while alive and streams <= ceiling:
        scenario = Scenario(
            f"live {streams} x{per_message}", streams, 640, per_message, duration_s, rate
        )
        results = compare([k for k in kinds if k in alive], scenario, root, args)
        print_table(
            f"live calls: {streams} streams x {rate:g} frames/s, {per_message} per message",
            results,
        )
        rung: dict[str, Any] = {"streams": streams}
        for kind, r in results.items():
            p99 = r["latency_ms"].get("p99")
            ok = (
                p99 is not None
                and p99 <= p99_ms
                and not r["errors"]
                and r["frames_per_s"] >= 0.95 * streams * rate
            )
            rung[kind] = {
                "p99_ms": p99,
                "frames_per_s": r["frames_per_s"],
                "server_cpu_s": r["server_cpu_s"],
                "services_cpu_s": r.get("services_cpu_s"),
                "generator_cpu_s": r["generator_cpu_s"],
                "held": ok,
            }
            if ok:
                held[kind] = streams
            else:
                alive.discard(kind)
        rungs.append(rung)
        streams *= 2
    return held, rungs


def cmd_targets(args: argparse.Namespace) -> int:
    """Every ingest-speed target, measured in one run as ratios, each with its verdict."""
    d = args.duration
    one = Scenario("640 B x1, 4 in flight", args.streams, 640, 1, d, inflight=4)
    one_bulk = Scenario("640 B x1", args.streams, 640, 1, d)
    ten = Scenario("640 B x10", args.streams, 640, 10, d)
    big = Scenario("64 KiB x1", 16, 64 * 1024, 1, d)
    report: dict[str, Any] = {"environment": environment(args)}
    with tempfile.TemporaryDirectory(prefix="voxgate-targets-", dir=args.data_root) as tmp:
        root = Path(tmp)
        r1 = compare(["voxgate", "litestar", "fastapi"], one, root, args)
        print_table(f"{one.name}: {one.streams} streams, {d:g} s", r1)
        rb = compare(["voxgate"], one_bulk, root, args)
        r10 = compare(["voxgate"], ten, root, args)
        print_table(
            f"{one_bulk.name} and {ten.name}: credit-bound, {ten.streams} streams",
            rb | {"voxgate x10": r10["voxgate"]},
        )
        disk = disk_write_sync_mb_s(root)
        r64 = compare(["voxgate"], big, root, args)
        print_table(f"{big.name}: {big.streams} streams, {d:g} s; disk {disk:.0f} MB/s", r64)
        dp, top = args.paced_duration, args.paced_max
        live1, _ = _capacity(["voxgate", "litestar"], 50.0, 1, 50, top, 50.0, dp, root, args)
        live5, _ = _capacity(["voxgate"], 50.0, 5, 250, top, 50.0, dp, root, args)
    vox = r1["voxgate"]["frames_per_s"]
    a = ratio(vox, r1["litestar"]["frames_per_s"])
    c = ratio(vox, r1["fastapi"]["frames_per_s"])
    x10 = ratio(r10["voxgate"]["frames_per_s"], rb["voxgate"]["frames_per_s"])
    d64 = ratio(r64["voxgate"]["mb_per_s"], disk)
    cap = ratio(live1["voxgate"], live1["litestar"])
    gen = max(r["generator_cpu_s"] / max(r["duration_s"], 1e-9) for r in r1.values())

    def verdict(
        name: str, value: float | None, goal: float, fmt: str = ".3f"
    ) -> tuple[str, str, bool]:
        return (name, f"x{_fmt(value, fmt)}", bool(value is not None and value >= goal))

    verdicts = [
        verdict("640 B x1, 4 in flight: voxgate / (a) Litestar >= 0.9", a, 0.9),
        verdict("640 B x1, 4 in flight: voxgate / (c) FastAPI >= 0.9", c, 0.9),
        verdict("live calls x1 (p99 <= 50 ms): voxgate / (a) Litestar >= 0.8", cap, 0.8),
        (
            "live calls x5 (p99 <= 50 ms): >= 1000 streams, one worker",
            f"{live5['voxgate']} streams",
            bool(live5["voxgate"] and live5["voxgate"] >= 1000),
        ),
        verdict("640 B x10 / 640 B x1 >= 4", x10, 4.0),
        verdict("64 KiB: voxgate MB/s / disk write+fdatasync >= 0.8", d64, 0.8),
    ]
    print(f"\nlive calls held x1: {live1}; x5: {live5}")
    print(f"generator CPU at most {gen:.0%} of a core in the 640 B x1 runs")
    print("\ntargets (one run, medians of --repeat):")
    for name, value, ok in verdicts:
        print(f"  {'met   ' if ok else 'MISSED'}  {name:<62} {value}")
    report |= {
        "640B_x1_inflight4": r1,
        "640B_x1": rb,
        "640B_x10": r10,
        "64KiB_x1": r64,
        "disk_mb_s": disk,
        "live_x1": live1,
        "live_x5": live5,
        "verdicts": [{"target": n, "value": v, "met": ok} for n, v, ok in verdicts],
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cmd_session(args: argparse.Namespace) -> int:
    """The long-session tool: ``--chunks`` of ``--chunk-seconds`` per stream, then END."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    frames_per_chunk = max(1, round(args.chunk_seconds * 1000 / args.frame_ms))
    total_frames = args.chunks * frames_per_chunk
    rate = None if args.fast else 1000 / args.frame_ms
    with tempfile.TemporaryDirectory(prefix="voxgate-session-", dir=args.data_root) as tmp:
        server: Server | None = None
        if args.url:
            base_url, api_key = args.url.rstrip("/"), args.api_key
            ws_base = base_url.replace("http", "ws", 1)
            data_dir = Path(args.server_data_dir) if args.server_data_dir else None
        else:
            server = start_server(
                "voxgate",
                Path(tmp),
                workers=args.workers,
                durability=args.durability,
                window_bytes=args.window_bytes,
            )
            base_url, api_key, ws_base = server.base_url, API_KEY, server.ws_base
            data_dir = server.data_dir
        try:
            sessions, tokens = sessions_and_tokens("voxgate", base_url, args.streams, api_key)
            spec = LoadSpec(
                target="voxgate",
                ws_base=ws_base,
                session_ids=sessions,
                tokens=tokens,
                frame_bytes=args.frame_bytes,
                frames_per_message=args.frames_per_message,
                total_frames=total_frames,
                rate=rate,
                verify=True,
                driver=args.driver,
                inflight_messages=args.inflight,
            )
            snapshots: list[dict[str, Any]] = []
            started = time.monotonic()
            next_snapshot = started
            total_chunks = args.chunks * args.streams

            def snapshot() -> None:
                entry: dict[str, Any] = {"t_s": round(time.monotonic() - started, 1)}
                memory = server.memory() if server is not None else _pid_memory(args.server_pid)
                if memory:
                    entry |= {
                        "rss_mb": round(memory["VmRSS"] / 1e6, 2),
                        "hwm_mb": round(memory["VmHWM"] / 1e6, 2),
                        "fds": memory["fds"],
                        "threads": memory["Threads"],
                    }
                if data_dir is not None and data_dir.exists():
                    entry["disk_mb"] = round(disk_usage(data_dir) / 1e6, 2)
                snapshots.append(entry)

            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("chunks  {task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                disable=args.no_progress,
            ) as bar:
                task = bar.add_task(
                    "streaming" + (" (fast)" if args.fast else " (real time)"),
                    total=total_chunks,
                    rate="",
                )
                last = {"t": time.monotonic(), "acked": 0}

                def on_progress(progress: dict[str, Any]) -> None:
                    nonlocal next_snapshot
                    now = time.monotonic()
                    if now >= next_snapshot:
                        snapshot()
                        next_snapshot += args.sample_s
                    if not progress:
                        return
                    acked = progress["acked"]
                    dt = now - last["t"]
                    if dt >= 1.0:
                        fps = (acked - last["acked"]) / dt
                        last.update(t=now, acked=acked)
                        bar.update(
                            task,
                            rate=f"{fps:,.0f} frames/s {fps * args.frame_bytes / 1e6:.1f} MB/s",
                        )
                    bar.update(task, completed=min(total_chunks, acked // frames_per_chunk))

                budget = (total_frames / rate if rate else 0) + args.timeout
                result = run_load(
                    spec,
                    server,
                    on_progress=on_progress,
                    budget_s=budget,
                    generators=args.generators,
                    threads=args.gen_threads,
                )
                snapshot()
            per_stream = result.pop("per_stream_acked", [])
            result.pop("latency_hist_us", None)
            chunks_acked = sum(min(args.chunks, n // frames_per_chunk) for n in per_stream)
            peak = max((s.get("hwm_mb", 0.0) for s in snapshots), default=None)
            report = {
                "config": {
                    "streams": args.streams,
                    "chunks": args.chunks,
                    "chunk_seconds": args.chunk_seconds,
                    "frame_ms": args.frame_ms,
                    "frame_bytes": args.frame_bytes,
                    "frames_per_message": args.frames_per_message,
                    "fast": args.fast,
                    "url": base_url,
                    **environment(args),
                },
                "throughput": {
                    "frames_per_s": result["frames_per_s"],
                    "mb_per_s": result["mb_per_s"],
                    "audio_seconds_per_s": round(result["frames_per_s"] * args.frame_ms / 1000, 1),
                    "duration_s": result["duration_s"],
                },
                "ack_latency_ms": result["latency_ms"],
                "success": {
                    "chunks_total": total_chunks,
                    "chunks_acked": chunks_acked,
                    "rate": round(chunks_acked / total_chunks, 6) if total_chunks else None,
                    "frames_sent": result["frames_sent"],
                    "frames_acked": result["frames_acked"],
                    "streams_verified": result["streams_verified"],
                    "streams": args.streams,
                },
                "rss_snapshots": snapshots,
                "peak_rss_mb": peak,
                "disk_usage_mb": snapshots[-1].get("disk_mb") if snapshots else None,
                "server_cpu_s": result["server_cpu_s"],
                "generator_cpu_s": result["generator_cpu_s"],
                "nacks": result["nacks"],
                "errors": result["errors"],
            }
        finally:
            if server is not None:
                server.stop()
    text = json.dumps(report, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text)
    ok = not report["errors"] and report["success"]["rate"] == 1.0
    return 0 if ok else 1


def _pid_memory(pid: int | None) -> dict[str, int]:
    return group_memory(os.getpgid(pid)) if pid else {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="voxgate ingest benchmark")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workers", type=int, default=1, help="server worker processes")
    common.add_argument("--durability", choices=("fsync", "process"), default="fsync")
    common.add_argument("--window-bytes", type=int, default=None, help="per-stream credit")
    common.add_argument("--data-root", default=None, help="parent dir of the temp data dirs")
    common.add_argument("--json", dest="json_out", default=None, help="write the report here")
    common.add_argument("--repeat", type=int, default=1, help="runs per figure; medians kept")
    common.add_argument(
        "--driver",
        choices=(*DRIVERS, "raw"),
        default="picows",
        help="load generator: picows (Python, default), rust (loadgen-rs, built on first use), "
        "client (voxgate's StreamClient)",
    )
    common.add_argument(
        "--generators", type=int, default=1, help="generator processes sharing the streams"
    )
    common.add_argument(
        "--gen-threads", type=int, default=1, help="runtime threads per Rust generator"
    )
    common.add_argument(
        "--inflight", type=int, default=None, help="unacked messages per stream (default: credit)"
    )
    common.add_argument(
        "--warmup", type=float, default=0.0, help="seconds of load before the measured window"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    c = commands.add_parser("compare", parents=[common], help="one load, several servers")
    c.add_argument("--servers", default="voxgate,litestar", help=f"any of {', '.join(KINDS)}")
    c.add_argument("--streams", type=int, default=16)
    c.add_argument("--frame-bytes", type=int, default=640)
    c.add_argument("--frames-per-message", type=int, default=10)
    c.add_argument("--duration", type=float, default=10.0, help="seconds per server")
    c.add_argument("--rate", type=float, default=None, help="frames/s per stream (paced)")
    c.set_defaults(handler=cmd_compare)

    t = commands.add_parser("targets", parents=[common], help="every target, one run")
    t.add_argument("--streams", type=int, default=50)
    t.add_argument("--duration", type=float, default=8.0)
    t.add_argument("--paced-duration", type=float, default=10.0, help="seconds per rung")
    t.add_argument("--paced-max", type=int, default=3200, help="last rung of the ladders")
    t.set_defaults(handler=cmd_targets)

    s = commands.add_parser("session", parents=[common], help="the long-session tool")
    s.add_argument("--chunks", type=int, default=120)
    s.add_argument("--chunk-seconds", type=float, default=30.0)
    s.add_argument("--fast", action="store_true", help="as fast as acks allow, not real time")
    s.add_argument("--streams", type=int, default=1)
    s.add_argument("--frame-ms", type=float, default=20.0, help="audio per frame")
    s.add_argument("--frame-bytes", type=int, default=640, help="16 kHz PCM16: 640 per 20 ms")
    s.add_argument("--frames-per-message", type=int, default=5)
    s.add_argument("--sample-s", type=float, default=5.0, help="RSS snapshot interval")
    s.add_argument("--timeout", type=float, default=3600.0, help="bound on the whole run, s")
    s.add_argument("--url", default=None, help="an already running server (default: start one)")
    s.add_argument("--api-key", default=os.environ.get("VOXGATE_API_KEY", API_KEY))
    s.add_argument("--server-pid", type=int, default=None, help="with --url: sample its RSS")
    s.add_argument("--server-data-dir", default=None, help="with --url: measure its disk use")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(handler=cmd_session)

    cap = commands.add_parser(
        "capacity", parents=[common], help="live calls held at an ack p99 bound (ladder)"
    )
    cap.add_argument("--servers", default="voxgate,litestar")
    cap.add_argument("--start", type=int, default=50, help="streams on the first rung")
    cap.add_argument("--max-streams", type=int, default=3200)
    cap.add_argument("--rate", type=float, default=50.0, help="frames/s per stream")
    cap.add_argument("--frame-bytes", type=int, default=640)
    cap.add_argument("--frames-per-message", type=int, default=1)
    cap.add_argument("--duration", type=float, default=10.0, help="seconds per rung")
    cap.add_argument("--p99-ms", type=float, default=50.0)
    cap.set_defaults(handler=cmd_capacity)

    i = commands.add_parser("idle", parents=[common], help="memory per idle open stream")
    i.add_argument("--servers", default="voxgate")
    i.add_argument("--streams", type=int, default=2000)
    i.set_defaults(handler=cmd_idle)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        argv = ["compare", *argv]  # the earlier form, without a subcommand
    args = build_parser().parse_args(argv)
    if getattr(args, "driver", None) == "raw":
        args.driver = "picows"  # the earlier name of the lean load loop
    if getattr(args, "streams", 1) < 1 or getattr(args, "streams", 1) > 5000:
        raise SystemExit("--streams must be 1..5000")
    if getattr(args, "duration", 1.0) <= 0 or getattr(args, "duration", 1.0) > 600:
        raise SystemExit("--duration must be within 0..600 s")
    if not 1 <= args.generators <= 16 or not 1 <= args.gen_threads <= 8:
        raise SystemExit("--generators must be 1..16 and --gen-threads 1..8")
    if args.inflight is not None and not 1 <= args.inflight <= 100_000:
        raise SystemExit("--inflight must be 1..100000 messages")
    if not 0 <= args.warmup <= 120:
        raise SystemExit("--warmup must be within 0..120 s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
