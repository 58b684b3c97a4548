"""Soak: real-time streams for a long time; resident memory must not keep growing.

    # the full soak (15 minutes, 150 real-time streams: half of one worker's peak here)
    python loadtests/soak.py --duration 900 --warmup 60 --streams 150 --json soak.json

    # the short version the test suite runs
    python loadtests/soak.py --duration 40 --warmup 15 --streams 40 --sample-s 1

It starts ``voxgate serve`` (one worker), opens ``--streams`` sessions that
stream 20 ms frames of 640 bytes in real time (5 frames per message), and
relays a transcript for every session every ``--transcript-s`` seconds when the
server has a transcripts endpoint (found in its OpenAPI document; without one
the report says so). Every ``--sample-s`` seconds it records the server's
resident memory, open file descriptors, asyncio tasks and open streams from
``GET /v1/stats``. After the streams end it samples once more.

It passes when, after ``--warmup`` seconds, resident memory grows by less than
``--max-growth-mb`` (5 MB), file descriptors and tasks do not grow, no frame is
lost (every stream's ``complete`` CRC checks out), and once the streams are
closed their tasks and descriptors are gone. Exit code 0 on pass, 1 on fail.
Only 127.0.0.1; bounded in time.

Growth is the median of the last minute after warm-up minus the median of the
first (windows of a quarter of that period when it is shorter than four
minutes): one sample can land in an ack stall, when the server holds a few
megabytes of payloads for a moment, and would count that as growth. The
report also gives the last sample minus the first, and the peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchservers import API_KEY, sessions_and_tokens, start_server
from generators import Generator
from loadgen import CONNECT_TIMEOUT_S, LoadSpec
from transcripts import OPENAPI_PATH, find, session_path

FRAME_BYTES = 640
FRAME_MS = 20.0
FRAMES_PER_MESSAGE = 5
# Tasks and descriptors a quiet server may gain or lose (HTTP requests in flight).
SLACK = 4
RELAY_CONNECTIONS = 32


class Relay:
    """Posts a transcript per session every ``period_s`` from its own thread and loop."""

    def __init__(self, base_url: str, sessions: list[str], period_s: float) -> None:
        self.base_url = base_url
        self.sessions = sessions
        self.period_s = period_s
        self.path: str | None = None
        self.body: Any = None
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def probe(self) -> bool:
        got = httpx.get(f"{self.base_url}{OPENAPI_PATH}", timeout=10.0)
        found = find(got.json()) if got.status_code == 200 else None
        if found is not None:
            self.path, self.body = found
        return found is not None

    def start(self) -> None:
        if self.path is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._relay())

    async def _relay(self) -> None:
        assert self.path is not None
        headers = {"Authorization": f"Bearer {API_KEY}"}
        limits = httpx.Limits(max_connections=RELAY_CONNECTIONS)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=10.0, limits=limits
        ) as http:
            gate = asyncio.Semaphore(RELAY_CONNECTIONS)

            async def one(session_id: str) -> None:
                assert self.path is not None
                async with gate:
                    try:
                        got = await http.post(session_path(self.path, session_id), json=self.body)
                        ok = got.status_code < 300
                    except httpx.HTTPError:
                        ok = False
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1

            while not self._stop.is_set():
                started = time.monotonic()
                await asyncio.gather(*(one(s) for s in self.sessions))
                await asyncio.sleep(max(0.0, self.period_s - (time.monotonic() - started)))


def server_stats(http: httpx.Client) -> dict[str, Any]:
    got = http.get("/v1/stats")
    got.raise_for_status()
    stats: dict[str, Any] = got.json()
    return stats


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="voxgate-soak-", dir=args.data_root) as tmp:
        extra = dict(item.split("=", 1) for item in args.server_env)
        server = start_server("voxgate", Path(tmp), durability=args.durability, extra_env=extra)
        http = httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10.0,
        )
        try:
            idle = server_stats(http)
            sessions, tokens = sessions_and_tokens("voxgate", server.base_url, args.streams)
            relay = Relay(server.base_url, sessions, args.transcript_s)
            has_transcripts = relay.probe()
            spec = LoadSpec(
                target="voxgate",
                ws_base=server.ws_base,
                session_ids=sessions,
                tokens=tokens,
                frame_bytes=FRAME_BYTES,
                frames_per_message=FRAMES_PER_MESSAGE,
                duration_s=args.duration,
                rate=1000 / FRAME_MS,
                verify=True,
            )
            generator = Generator(spec)
            samples: list[dict[str, Any]] = []
            try:
                generator.wait_ready(CONNECT_TIMEOUT_S + 0.02 * args.streams + 30)
                generator.start()
                relay.start()
                started = time.monotonic()
                next_at = started
                result: dict[str, Any] | None = None

                def sample(_: dict[str, Any]) -> None:
                    nonlocal next_at
                    now = time.monotonic()
                    if now < next_at or now - started > args.duration:
                        return
                    next_at += args.sample_s
                    stats = server_stats(http)
                    stats["t_s"] = round(now - started, 1)
                    samples.append(stats)
                    if args.verbose:
                        print(json.dumps(stats), flush=True)

                result = generator.wait_result(args.duration + 120, sample)
            finally:
                relay.stop()
                generator.close()
            time.sleep(2.0)  # the closed streams' handlers finish
            after = server_stats(http)
        finally:
            http.close()
            server.stop()
    return verdict(args, idle, samples, after, result, relay, has_transcripts)


def verdict(
    args: argparse.Namespace,
    idle: dict[str, Any],
    samples: list[dict[str, Any]],
    after: dict[str, Any],
    result: dict[str, Any],
    relay: Relay,
    has_transcripts: bool,
) -> dict[str, Any]:
    steady = [s for s in samples if s["t_s"] >= args.warmup]
    checks: dict[str, bool] = {}
    where: dict[str, Any] = {}
    growth_mb = peak_growth_mb = None
    sample_growth_mb = None
    if len(steady) >= 2:
        base, last = steady[0], steady[-1]
        first_window, last_window = end_windows(steady)
        growth_mb = (median(last_window, "rss_bytes") - median(first_window, "rss_bytes")) / 1e6
        sample_growth_mb = (last["rss_bytes"] - base["rss_bytes"]) / 1e6
        peak_growth_mb = (max(s["rss_bytes"] for s in steady) - base["rss_bytes"]) / 1e6
        checks["rss growth after warm-up below bound"] = growth_mb < args.max_growth_mb
        where = {"first": memory_mb(base), "last": memory_mb(last)}
        # The transcript relay keeps up to RELAY_CONNECTIONS connections, opened as needed.
        fd_slack = SLACK + (RELAY_CONNECTIONS if has_transcripts else 0)
        checks["open fds do not grow"] = (
            median(last_window, "open_fds") <= median(first_window, "open_fds") + fd_slack
        )
        checks["tasks do not grow"] = (
            median(last_window, "tasks") <= median(first_window, "tasks") + SLACK
        )
    else:
        checks["enough samples after warm-up"] = False
    checks["every stream verified complete"] = result["streams_verified"] == args.streams
    checks["no errors"] = not result["errors"]
    checks["no nacks"] = not result["nacks"]
    checks["streams gone after close"] = after["streams"] == 0
    checks["tasks back to idle"] = after["tasks"] <= idle["tasks"] + SLACK
    checks["fds back to idle"] = after["open_fds"] <= idle["open_fds"] + SLACK
    if has_transcripts:
        checks["transcripts relayed"] = relay.sent > 0 and relay.failed == 0
    report = {
        "config": {
            "streams": args.streams,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "sample_s": args.sample_s,
            "max_growth_mb": args.max_growth_mb,
            "durability": args.durability,
            "server_env": args.server_env,
            "frames_per_s_per_stream": 1000 / FRAME_MS,
        },
        "rss_growth_after_warmup_mb": None if growth_mb is None else round(growth_mb, 2),
        "rss_growth_last_sample_mb": (
            None if sample_growth_mb is None else round(sample_growth_mb, 2)
        ),
        "rss_peak_growth_after_warmup_mb": (
            None if peak_growth_mb is None else round(peak_growth_mb, 2)
        ),
        # Where the resident memory is, at the first and last sample after warm-up.
        "memory_after_warmup_mb": where,
        "rss_mb": {
            "idle": round(idle["rss_bytes"] / 1e6, 2),
            "median_steady": round(median(steady, "rss_bytes") / 1e6, 2) if steady else None,
            "after_close": round(after["rss_bytes"] / 1e6, 2),
        },
        "transcripts": (
            {"relayed": relay.sent, "failed": relay.failed, "every_s": args.transcript_s}
            if has_transcripts
            else "the server has no transcripts endpoint: none relayed"
        ),
        "load": {
            k: result.get(k)
            for k in ("frames_sent", "frames_acked", "latency_ms", "nacks", "errors")
        },
        "idle": idle,
        "after_close": after,
        "samples": samples,
        "checks": checks,
        "passed": all(checks.values()),
    }
    return report


def end_windows(
    steady: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The samples of the first and the last minute of ``steady`` (shorter for short runs)."""
    start, end = steady[0]["t_s"], steady[-1]["t_s"]
    window = min(60.0, (end - start) / 4)
    first = [s for s in steady if s["t_s"] <= start + window]
    last = [s for s in steady if s["t_s"] >= end - window]
    return first, last


def median(samples: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(s[key] for s in samples))


def memory_mb(sample: dict[str, Any]) -> dict[str, float] | None:
    """A sample's RSS split: glibc heap in use, glibc heap free, and outside glibc's heap.

    Outside: Granian's own allocator, Python's code and the shared libraries.
    ``None`` when the server reads no glibc heap.
    """
    heap = sample.get("heap")
    if not heap:
        return None
    rss = sample["rss_bytes"]
    outside = rss - heap["arena_bytes"] - heap["mmapped_bytes"]
    return {
        "rss": round(rss / 1e6, 2),
        "heap_in_use": round((heap["in_use_bytes"] + heap["mmapped_bytes"]) / 1e6, 2),
        "heap_free": round(heap["free_bytes"] / 1e6, 2),
        "outside_heap": round(outside / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="voxgate soak test")
    parser.add_argument("--duration", type=float, default=900.0, help="seconds of streaming")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--transcript-s", type=float, default=2.0)
    parser.add_argument("--max-growth-mb", type=float, default=5.0)
    parser.add_argument("--durability", choices=("fsync", "process"), default="fsync")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--verbose", action="store_true", help="print every sample")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for the server (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not 1 <= args.streams <= 5000 or not 0 < args.duration <= 7200:
        parser.error("--streams must be 1..5000 and --duration 0..7200 s")
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    report = run(args)
    text = json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
