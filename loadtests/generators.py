"""Generator processes: the Python one (``loadgen.py``), the Rust one, and several at once.

Every handle has the same life: ``wait_ready`` (streams open), ``start``, then
``wait_result`` (progress callbacks meanwhile) or, for an idle load,
``stop_idle`` first; ``close`` always. :func:`open_generator` picks the handle
for ``spec.driver`` and, with ``generators > 1``, splits the streams over that
many processes and merges their results (counts summed, latency percentiles
from the union of their histograms).

``driver="rust"`` runs ``loadgen-rs/target/release/voxgate-loadgen``, built with
``cargo build --release --manifest-path loadgen-rs/Cargo.toml`` on first use
(and again when its sources are newer than the binary). It speaks a JSON-lines
protocol on stdin/stdout (``--control``, see ``loadgen-rs/src/main.rs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from loadgen import LoadResult, LoadSpec, generator_process, histogram_percentiles

HERE = Path(__file__).resolve().parent
RUST_DIR = HERE / "loadgen-rs"
RUST_MANIFEST = RUST_DIR / "Cargo.toml"
RUST_BINARY = RUST_DIR / "target" / "release" / "voxgate-loadgen"
BUILD_TIMEOUT_S = 900.0
DRIVERS = ("picows", "client", "rust")

Progress = Callable[[dict[str, Any]], None]


class GeneratorHandle(Protocol):
    """What the benchmarks do with a generator, whichever its kind."""

    result: dict[str, Any] | None

    def wait_ready(self, timeout: float) -> None: ...
    def start(self) -> None: ...
    def stop_idle(self) -> None: ...
    def poll(self, timeout: float) -> dict[str, Any] | None: ...
    def wait_result(
        self, timeout: float, on_progress: Progress | None = None
    ) -> dict[str, Any]: ...
    def close(self) -> None: ...


def failed_result(spec: LoadSpec, error: str) -> dict[str, Any]:
    """A result that carries only ``error``."""
    result = asdict(LoadResult(spec.target, len(spec.session_ids), spec.duration_s or 0.0))
    result["errors"] = [error]
    return result


class _Handle:
    """The shared part: messages come from ``_next``; ``result`` is kept once seen."""

    spec: LoadSpec
    result: dict[str, Any] | None = None

    def _next(self, timeout: float) -> dict[str, Any]:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        """Until every stream is open; raises RuntimeError/TimeoutError if not."""
        message = self._next(timeout)
        if "result" in message:  # failed before it was ready
            self.result = message["result"]
            raise RuntimeError(f"generator failed: {self.result['errors'] if self.result else ''}")
        if "ready" not in message:
            raise RuntimeError(f"generator said {message} before ready")

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """The next progress report, the result once it came, or None after ``timeout``."""
        if self.result is not None:
            return {"result": self.result}
        try:
            message = self._next(timeout)
        except TimeoutError:
            return None
        if "result" in message:
            self.result = message["result"]
        return message

    def wait_result(self, timeout: float, on_progress: Progress | None = None) -> dict[str, Any]:
        """The result, calling ``on_progress`` on reports (and with {} every second)."""
        deadline = time.monotonic() + timeout
        while self.result is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"generator gave no result within {timeout:.0f} s")
            message = self.poll(min(left, 1.0))
            if on_progress is not None:
                on_progress(message.get("progress", {}) if message else {})
        return self.result


class Generator(_Handle):
    """The Python generator (``loadgen.generator_process``) in a process of its own."""

    def __init__(self, spec: LoadSpec) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=generator_process, args=(child, spec), daemon=True)
        self.process.start()
        child.close()
        self.spec = spec
        self.result = None

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

    def close(self) -> None:
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def rust_binary() -> Path:
    """The Rust generator, built first if it is missing or older than its sources.

    Raises RuntimeError when the build fails or cargo is missing.
    """
    sources = [RUST_MANIFEST, RUST_DIR / "Cargo.lock", *RUST_DIR.glob("src/*.rs")]
    newest = max(p.stat().st_mtime for p in sources)
    if RUST_BINARY.exists() and RUST_BINARY.stat().st_mtime >= newest:
        return RUST_BINARY
    command = ["cargo", "build", "--release", "--manifest-path", str(RUST_MANIFEST)]
    why = "first use" if not RUST_BINARY.exists() else "sources changed"
    print(f"building the Rust load generator ({why}): {' '.join(command)}", flush=True)
    try:
        subprocess.run(command, check=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"building the Rust load generator failed: {exc!r}") from exc
    return RUST_BINARY


class RustGenerator(_Handle):
    """``voxgate-loadgen --control`` as a subprocess; its stdout lines read by a thread."""

    def __init__(self, spec: LoadSpec, threads: int = 1) -> None:
        self.spec = spec
        self.result = None
        # Kept for the life of the handle (closed in close()): the error tail if it fails.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(rust_binary()), "--control", "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self._say(json.dumps(asdict(spec)))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output

    def _say(self, line: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"generator silent for {timeout:.0f} s") from None
        if line is None:
            self.lines.put(None)  # stays at the end for later reads
            code = self.process.wait(5)
            self.stderr.seek(0)
            tail = self.stderr.read()[-1500:].decode(errors="replace")
            raise RuntimeError(f"generator exited (code {code}): {tail}")
        message: dict[str, Any] = json.loads(line)
        if "result" in message:
            message["result"] = _as_load_result(self.spec, message["result"])
        return message

    def start(self) -> None:
        self._say("start")

    def stop_idle(self) -> None:
        self._say("stop")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()  # a generator still running aborts on a closed stdin
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.stderr.close()


def _as_load_result(spec: LoadSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """The Rust generator's result with exactly :class:`LoadResult`'s fields."""
    names = {f.name for f in dataclasses.fields(LoadResult)}
    base = asdict(LoadResult(spec.target, len(spec.session_ids), spec.duration_s or 0.0))
    return base | {k: v for k, v in raw.items() if k in names} | {"target": spec.target}


def split_spec(spec: LoadSpec, parts: int) -> list[LoadSpec]:
    """``spec`` with its streams cut into ``parts`` contiguous shares (fewer if few streams);
    with ``ws_bases``, share i goes to instance ``i % len(ws_bases)``."""
    n = len(spec.session_ids)
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    bases = spec.ws_bases or (spec.ws_base,)
    return [
        dataclasses.replace(
            spec,
            ws_base=bases[i % len(bases)],
            session_ids=spec.session_ids[a:b],
            tokens=spec.tokens[a:b],
        )
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def merge_results(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several generators' results over the same window.

    Counts and CPU add up; rates are total acks over the longest window; latency
    percentiles come from the summed histograms (bucket values, at most 0.5% off),
    the maximum is the largest maximum.
    """
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    for key in ("streams", "frames_sent", "frames_acked", "bytes_acked", "messages_sent"):
        out[key] = sum(r[key] for r in results)
    out["streams_verified"] = sum(r["streams_verified"] for r in results)
    out["generator_cpu_s"] = round(sum(r["generator_cpu_s"] for r in results), 3)
    out["duration_s"] = max(r["duration_s"] for r in results)
    elapsed = out["duration_s"] or 1.0
    out["frames_per_s"] = round(out["frames_acked"] / elapsed, 1)
    out["mb_per_s"] = round(out["bytes_acked"] / elapsed / 1e6, 3)
    for key in ("nacks", "closes"):
        merged: dict[str, int] = {}
        for r in results:
            for k, v in r[key].items():
                merged[k] = merged.get(k, 0) + v
        out[key] = merged
    out["errors"] = [e for r in results for e in r["errors"]][:20]
    out["per_stream_acked"] = [n for r in results for n in r["per_stream_acked"]]
    counts: dict[int, int] = {}
    for r in results:
        for key, count in r["latency_hist_us"]:
            counts[key] = counts.get(key, 0) + count
    out["latency_hist_us"] = [[k, counts[k]] for k in sorted(counts)]
    latency = histogram_percentiles(out["latency_hist_us"])
    maxima = [r["latency_ms"]["max"] for r in results if "max" in r["latency_ms"]]
    if maxima:
        latency["max"] = max(maxima)
    late = [r["latency_ms"]["late_messages"] for r in results if "late_messages" in r["latency_ms"]]
    if late:
        latency["late_messages"] = sum(late)
    lags = [
        r["latency_ms"][k] for r in results for k in ("max_send_lag_ms",) if k in r["latency_ms"]
    ]
    if lags:
        latency["max_send_lag_ms"] = max(lags)
    out["latency_ms"] = latency
    return out


class GeneratorGroup:
    """Several generators over shares of one load, driven together; one merged result."""

    def __init__(self, members: list[GeneratorHandle]) -> None:
        self.members = members
        self.result: dict[str, Any] | None = None

    def wait_ready(self, timeout: float) -> None:
        """Until every member is ready; raises as the first member that is not does."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            try:
                member.wait_ready(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, TimeoutError):
                self.result = member.result
                raise

    def start(self) -> None:
        for member in self.members:
            member.start()

    def stop_idle(self) -> None:
        for member in self.members:
            member.stop_idle()

    def wait_result(self, timeout: float, on_progress: Progress | None = None) -> dict[str, Any]:
        """Every member's result, merged; progress reports summed over the members."""
        deadline = time.monotonic() + timeout
        latest: list[dict[str, Any]] = [{} for _ in self.members]
        next_report = time.monotonic() + 1.0
        while any(m.result is None for m in self.members):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"generators gave no result within {timeout:.0f} s")
            updated = False
            for i, member in enumerate(self.members):
                if member.result is not None:
                    continue
                message = member.poll(0.05)
                if message and "progress" in message:
                    latest[i] = message["progress"]
                    updated = True
            if on_progress is not None and (updated or time.monotonic() >= next_report):
                next_report = time.monotonic() + 1.0
                summed: dict[str, Any] = {}
                for report in latest:
                    for key, value in report.items():
                        summed[key] = summed.get(key, 0) + value
                on_progress(summed)
        self.result = merge_results([m.result for m in self.members if m.result is not None])
        return self.result

    def close(self) -> None:
        for member in self.members:
            member.close()


def open_generator(spec: LoadSpec, generators: int = 1, threads: int = 1) -> GeneratorGroup:
    """Start ``generators`` processes of ``spec.driver`` sharing ``spec``'s streams.

    ``threads`` is the Rust generator's runtime threads (the Python ones use one).
    """
    if spec.driver not in DRIVERS:
        raise ValueError(f"unknown driver {spec.driver!r}: one of {', '.join(DRIVERS)}")
    members: list[GeneratorHandle] = []
    # Each instance of a cluster gets its own generator process(es).
    generators = max(generators, len(spec.ws_bases))
    try:
        for part in split_spec(spec, generators):
            members.append(
                RustGenerator(part, threads) if spec.driver == "rust" else Generator(part)
            )
    except BaseException:
        for member in members:
            member.close()
        raise
    return GeneratorGroup(members)
