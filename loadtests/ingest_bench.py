"""Ingest benchmark: voxgate's durable path beside what users would run instead.

    # one load against several servers, printed side by side with ratios
    python loadtests/ingest_bench.py compare --servers voxgate,litestar,fastapi,voxgate-py,picows \\
        --streams 16 --frame-bytes 640 --frames-per-message 1 --duration 10 [--repeat 3]

    # every target of docs/performance.md in one run, as ratios, with a verdict each
    python loadtests/ingest_bench.py targets [--repeat 3] [--json targets.json]

    # the long-session tool: 120 chunks of 30 s audio per stream, as fast as acks allow
    python loadtests/ingest_bench.py session --chunks 120 --chunk-seconds 30 --fast \\
        --streams 4 --json session.json [--url http://127.0.0.1:8000 --api-key KEY]

    # resident memory per idle open stream
    python loadtests/ingest_bench.py idle --streams 2000

Servers (``loadtests/benchservers.py``): ``voxgate``; the baselines (a) ``litestar``,
(b) ``voxgate-py`` (the pure-Python core), (c) ``fastapi``, (d) ``picows``.
Each starts as a subprocess on a free 127.0.0.1 port and stops after its run.
The load comes from ``loadtests/loadgen.py`` (picows + uvloop, callbacks, no
task per stream) in a process of its own; its CPU use is printed beside the
server's so a saturated generator shows. voxgate streams are ended and their
``complete`` CRC checked after every run. Only 127.0.0.1 is ever targeted;
every phase is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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
    ServerProcess,
    disk_usage,
    group_memory,
    machine_busy_s,
    sessions_and_tokens,
    start_server,
)
from loadgen import CONNECT_TIMEOUT_S, LoadResult, LoadSpec, generator_process

VOXGATE_KINDS = ("voxgate", "voxgate-py")


@dataclass
class Scenario:
    """One load shape."""

    name: str
    streams: int
    frame_bytes: int
    frames_per_message: int
    duration_s: float
    rate: float | None = None


# -- running one load ----------------------------------------------------------------


class Generator:
    """The generator process for one load, with its pipe."""

    def __init__(self, spec: LoadSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=generator_process, args=(child, spec), daemon=True)
        self.process.start()
        child.close()
        self.spec = spec
        self.result: dict[str, Any] | None = None

    def wait_ready(self, timeout: float) -> None:
        message = self._next(timeout)
        if "result" in message:  # failed before it was ready
            self.result = message["result"]
            raise RuntimeError(f"generator failed: {self.result['errors'] if self.result else ''}")
        if "ready" not in message:
            raise RuntimeError(f"generator said {message} before ready")

    def _next(self, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"generator silent for {timeout:.0f} s")
        try:
            message: dict[str, Any] = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"generator exited (code {self.process.exitcode})") from None
        return message

    def start(self) -> None:
        self.conn.send("start")

    def stop_idle(self) -> None:
        self.conn.send("stop")

    def wait_result(
        self, timeout: float, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while self.result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"generator gave no result within {timeout:.0f} s")
            try:
                message = self._next(min(left, 1.0))
            except TimeoutError:
                if on_progress is not None:
                    on_progress({})
                continue
            if "progress" in message and on_progress is not None:
                on_progress(message["progress"])
            elif "result" in message:
                self.result = message["result"]
        return self.result

    def close(self) -> None:
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _failed(spec: LoadSpec, error: str) -> dict[str, Any]:
    result = asdict(LoadResult(spec.target, len(spec.session_ids), spec.duration_s or 0.0))
    result["errors"] = [error]
    return result


def run_load(
    spec: LoadSpec,
    server: ServerProcess | None,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Run ``spec`` in a generator process against ``server``; bounded in time."""
    generator = Generator(spec)
    try:
        try:
            generator.wait_ready(CONNECT_TIMEOUT_S + 0.02 * len(spec.session_ids) + 30)
        except (RuntimeError, TimeoutError) as exc:
            return generator.result or _failed(spec, repr(exc))
        cpu_before = server.cpu_s() if server is not None else 0.0
        busy_before = machine_busy_s()
        generator.start()
        budget = budget_s or (spec.duration_s or 600.0) + 90.0
        try:
            result = generator.wait_result(budget, on_progress)
        except TimeoutError as exc:
            result = _failed(spec, repr(exc))
        if server is not None:
            result["server_cpu_s"] = round(server.cpu_s() - cpu_before, 3)
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
            session_ids=sessions,
            tokens=tokens,
            frame_bytes=scenario.frame_bytes,
            frames_per_message=scenario.frames_per_message,
            duration_s=scenario.duration_s,
            rate=scenario.rate,
            verify=kind in VOXGATE_KINDS,
            driver=getattr(args, "driver", "picows"),
        )
        result = run_load(spec, server)
        result["server_memory"] = server.memory()
        result.pop("per_stream_acked", None)
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
        f"{'p99 ms':>8} {'srv CPU':>8} {'gen CPU':>8} {'other':>6}  runs (frames/s)"
    )
    for kind, r in results.items():
        lat = r["latency_ms"]
        duration = r["duration_s"] or 1.0
        print(
            f"{ROLES.get(kind, kind):<34} {r['frames_per_s']:>10,.0f} {r['mb_per_s']:>8.2f} "
            f"{_fmt(lat.get('p50')):>8} {_fmt(lat.get('p95')):>8} {_fmt(lat.get('p99')):>8} "
            f"{100 * r['server_cpu_s'] / duration:>7.0f}% "
            f"{100 * r['generator_cpu_s'] / duration:>7.0f}% "
            f"{100 * r.get('other_cpu_s', 0.0) / duration:>5.0f}%  "
            f"{', '.join(f'{x:,.0f}' for x in r.get('runs_frames_per_s', []))}"
        )
    for kind, r in results.items():
        notes = []
        if r["nacks"]:
            notes.append(f"nacks {r['nacks']}")
        if r.get("closes"):
            notes.append(f"closes {r['closes']}")
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


def measure_idle(kind: str, streams: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Server RSS before and with ``streams`` idle open streams; bytes per stream."""
    server = start_server(kind, root, workers=1, durability=args.durability)
    try:
        sessions, tokens = sessions_and_tokens(kind, server.base_url, streams)
        # Warm up: one short-lived stream, so first-use allocations are not counted.
        spec = LoadSpec(kind, server.ws_base, sessions, tokens, 640, 1, idle=True)
        warm = LoadSpec(kind, server.ws_base, sessions[:1], tokens[:1], 640, 1, duration_s=0.5)
        if kind in VOXGATE_KINDS:
            more, more_tokens = sessions_and_tokens(kind, server.base_url, 1)
            warm = LoadSpec(kind, server.ws_base, more, more_tokens, 640, 1, duration_s=0.5)
        run_load(warm, server)
        time.sleep(1.0)
        before = server.memory()
        generator = Generator(spec)
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


def cmd_targets(args: argparse.Namespace) -> int:
    """Every target of the issue, measured in one run as ratios, each with its verdict."""
    d = args.duration
    one = Scenario("640 B x1", args.streams, 640, 1, d)
    ten = Scenario("640 B x10", args.streams, 640, 10, d)
    big = Scenario("64 KiB x1", args.streams, 64 * 1024, 1, d)
    paced = Scenario("2000 real-time", args.paced_streams, 640, 5, args.paced_duration, 50.0)
    report: dict[str, Any] = {"environment": environment(args)}
    verdicts: list[tuple[str, str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="voxgate-targets-", dir=args.data_root) as tmp:
        root = Path(tmp)
        r1 = compare(["voxgate", "litestar", "fastapi", "voxgate-py", "picows"], one, root, args)
        print_table(f"{one.name}: {one.streams} streams, {d:g} s", r1)
        r10 = compare(["voxgate"], ten, root, args)
        print_table(f"{ten.name}: {ten.streams} streams, {d:g} s", r10)
        r64 = compare(["voxgate", "picows"], big, root, args)
        print_table(f"{big.name}: {big.streams} streams, {d:g} s", r64)
        print(f"  [{paced.name}] voxgate ...", flush=True)
        rp = {"voxgate": one_run("voxgate", paced, root, args)}
        print_table(
            f"{paced.name}: {paced.streams} streams x 50 frames/s, 5 frames/message, "
            f"{paced.duration_s:g} s",
            rp,
        )
        idle = [measure_idle("voxgate", args.idle_streams, root, args) for _ in range(args.repeat)]
    vox = r1["voxgate"]["frames_per_s"]
    a = ratio(vox, r1["litestar"]["frames_per_s"])
    c = ratio(vox, r1["fastapi"]["frames_per_s"])
    b = ratio(vox, r1["voxgate-py"]["frames_per_s"])
    d1 = ratio(vox, r1["picows"]["frames_per_s"])
    x10 = ratio(r10["voxgate"]["frames_per_s"], vox)
    d64 = ratio(r64["voxgate"]["mb_per_s"], r64["picows"]["mb_per_s"])
    p = rp["voxgate"]
    p99 = p["latency_ms"].get("p99")
    lost = p["frames_sent"] - p["frames_acked"] if not p["errors"] else None
    per_stream = statistics.median(i["bytes_per_stream"] for i in idle)
    verdicts = [
        ("640 B x1: voxgate / (a) Litestar >= 0.9", f"x{_fmt(a, '.3f')}", bool(a and a >= 0.9)),
        ("640 B x1: voxgate / (c) FastAPI >= 1.2", f"x{_fmt(c, '.3f')}", bool(c and c >= 1.2)),
        ("640 B x10 / 640 B x1 >= 4", f"x{_fmt(x10, '.3f')}", bool(x10 and x10 >= 4)),
        (
            "64 KiB: voxgate / (d) picows MB/s >= 0.6",
            f"x{_fmt(d64, '.3f')}",
            bool(d64 and d64 >= 0.6),
        ),
        (
            f"{paced.streams} real-time streams: ack p99 <= 50 ms",
            f"{_fmt(p99)} ms",
            bool(p99 is not None and p99 <= 50 and not p["errors"]),
        ),
        (
            f"{paced.streams} real-time streams: nothing lost",
            "not shown: streams did not drain" if lost is None else f"{lost} lost",
            lost == 0,
        ),
        ("idle open stream <= 30 KB resident", f"{per_stream / 1000:.1f} KB", per_stream <= 30_000),
    ]
    print("\ninformational: voxgate / (b) pure-Python core x" + _fmt(b, ".3f"))
    print("informational: voxgate / (d) picows at 640 B x1 x" + _fmt(d1, ".3f"))
    print("\ntargets (one run, medians of --repeat):")
    for name, value, ok in verdicts:
        print(f"  {'met   ' if ok else 'MISSED'}  {name:<48} {value}")
    report |= {
        "640B_x1": r1,
        "640B_x10": r10,
        "64KiB_x1": r64,
        "realtime": rp,
        "idle": idle,
        "ratios": {"a": a, "b": b, "c": c, "d_640": d1, "x10": x10, "d_64KiB": d64},
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
        server: ServerProcess | None = None
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
                result = run_load(spec, server, on_progress=on_progress, budget_s=budget)
                snapshot()
            per_stream = result.pop("per_stream_acked", [])
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
    commands = parser.add_subparsers(dest="command", required=True)

    c = commands.add_parser("compare", parents=[common], help="one load, several servers")
    c.add_argument("--servers", default="voxgate,litestar", help=f"any of {', '.join(KINDS)}")
    c.add_argument("--streams", type=int, default=16)
    c.add_argument("--frame-bytes", type=int, default=640)
    c.add_argument("--frames-per-message", type=int, default=10)
    c.add_argument("--duration", type=float, default=10.0, help="seconds per server")
    c.add_argument("--rate", type=float, default=None, help="frames/s per stream (paced)")
    c.add_argument("--driver", choices=("picows", "raw", "client"), default="picows")
    c.set_defaults(handler=cmd_compare)

    t = commands.add_parser("targets", parents=[common], help="every target, one run")
    t.add_argument("--streams", type=int, default=16)
    t.add_argument("--duration", type=float, default=8.0)
    t.add_argument("--paced-streams", type=int, default=2000)
    t.add_argument("--paced-duration", type=float, default=20.0)
    t.add_argument("--idle-streams", type=int, default=2000)
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
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
