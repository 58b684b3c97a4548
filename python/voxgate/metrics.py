"""Prometheus metrics, served at ``GET /metrics`` (docs/operations.md lists them all).

The ingest hot path pays at most a counter increment per message or per ack
and one histogram observation per ack or commit, never anything per frame.
Values read from the ledger and the process (in-flight bytes, pressure,
memory) are sampled once a second by :func:`sample`.

With ``voxgate serve --workers N`` every worker is its own process: the CLI
then points ``PROMETHEUS_MULTIPROC_DIR`` at a directory of the data dir and
``/metrics`` answers the sum over all live workers, whichever one serves it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from voxgate._native import LedgerStats

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only double the output
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_WINDOW_BUCKETS = tuple(float(1 << n) for n in range(10, 27, 2))  # 1 KiB .. 64 MiB

# -- ingest -------------------------------------------------------------------------

FRAMES_INGESTED = Counter(
    "voxgate_frames_ingested", "Frames newly stored (acked, not duplicate)", ["transport"]
)
BYTES_INGESTED = Counter(
    "voxgate_bytes_ingested",
    "Payload bytes of frames handed to the store (new and duplicate)",
    ["transport"],
)
FRAMES_DUPLICATE = Counter(
    "voxgate_frames_duplicate",
    "Frames acked as duplicate (already stored, same CRC)",
    ["transport"],
)
FRAMES_CONFLICT = Counter(
    "voxgate_frames_conflict",
    "Frames refused as conflict (seq stored with another CRC)",
    ["transport"],
)
NACKS = Counter("voxgate_nacks", "Frames refused, by nack reason", ["transport", "reason"])
ACK_LATENCY = Histogram(
    "voxgate_ack_latency_seconds",
    "From receipt of the oldest frame an ack covers to the ack being sent",
    buckets=_LATENCY_BUCKETS,
)
ACK_WINDOW = Histogram(
    "voxgate_ack_window_bytes", "Window advertised in each ack", buckets=_WINDOW_BUCKETS
)
COMMIT_FRAMES = Histogram(
    "voxgate_commit_batch_frames", "Frames per group commit", buckets=_SIZE_BUCKETS
)
COMMIT_LATENCY = Histogram(
    "voxgate_commit_latency_seconds", "Duration of one group commit", buckets=_LATENCY_BUCKETS
)
# Label values a client could choose are mapped onto a fixed set: every value
# someone sends would otherwise add series for good (a client picks its close
# code and, in a raw request line, its HTTP method).
OTHER = "other"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The codes of RFC 6455 and the ones voxgate sends (docs/api.md); any other is "other".
CLOSE_CODES = frozenset(
    {str(c) for c in range(1000, 1016)}
    | {str(c) for c in (4000, 4400, 4401, 4403, 4404, 4408, 4409, 4410, 4429)}
)


def method_label(method: str) -> str:
    """``method`` as a label value: the standard methods as they are, anything else ``other``."""
    return method if method in HTTP_METHODS else OTHER


def close_code_label(code: object) -> str:
    """A close code as a label value: known codes as they are, anything else ``other``."""
    text = str(code)
    return text if text in CLOSE_CODES else OTHER


class _CloseCounter(Counter):
    """A counter whose ``code`` label takes only :data:`CLOSE_CODES` (else ``other``)."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if labelvalues:
            labelvalues = (close_code_label(labelvalues[0]), *labelvalues[1:])
        if "code" in labelkwargs:
            labelkwargs["code"] = close_code_label(labelkwargs["code"])
        return super().labels(*labelvalues, **labelkwargs)


STREAM_CLOSES = _CloseCounter(
    "voxgate_stream_closes",
    "WebSocket streams ended, by close code and by who closed (server or client)",
    ["code", "by"],
)
ACTIVE_STREAMS = Gauge(
    "voxgate_active_streams", "Open WebSocket streams", multiprocess_mode="livesum"
)

# -- credit and process (sampled) ------------------------------------------------------

INFLIGHT_BYTES = Gauge(
    "voxgate_inflight_bytes",
    "Payload bytes admitted and not yet acked, all streams",
    multiprocess_mode="livesum",
)
BACKPRESSURE = Gauge(
    "voxgate_backpressure",
    "1 while in-flight bytes are above the high watermark (windows shrink)",
    multiprocess_mode="livemax",
)
BACKPRESSURE_EVENTS = Counter("voxgate_backpressure_events", "Times backpressure began")
WINDOW_CONFIGURED = Gauge(
    "voxgate_window_bytes_configured", "VOXGATE_WINDOW_BYTES", multiprocess_mode="livemax"
)
MEMORY_RSS = Gauge(
    "voxgate_memory_rss_bytes", "Resident memory of the server", multiprocess_mode="livesum"
)

# -- listeners (sampled) ---------------------------------------------------------------

LISTENERS = Gauge(
    "voxgate_listeners", "Listeners connected (SSE and WebSocket)", multiprocess_mode="livesum"
)
LISTENER_FEEDS = Gauge(
    "voxgate_listener_feeds", "Sessions with a listener here", multiprocess_mode="livesum"
)
EVENTS_PUBLISHED = Counter("voxgate_events_published", "Session events handed to the event bus")
EVENTS_DROPPED = Counter(
    "voxgate_events_dropped", "Session events the Redis bus could not publish (listeners re-read)"
)

# -- webhooks (voxgate.webhooks) --------------------------------------------------------

WEBHOOKS_DELIVERED = Counter("voxgate_webhooks_delivered", "Webhook events answered with a 2xx")
WEBHOOK_ATTEMPTS_FAILED = Counter(
    "voxgate_webhook_attempts_failed",
    "Webhook delivery attempts that failed (retried or given up), by reason:"
    " 3xx, 4xx, 5xx (the answer's status class), timeout, network",
    ["reason"],
)
WEBHOOK_FAILURE_REASONS = ("3xx", "4xx", "5xx", "timeout", "network")
for _reason in WEBHOOK_FAILURE_REASONS:  # exposed at 0 from the start, like every reason
    WEBHOOK_ATTEMPTS_FAILED.labels(_reason)
WEBHOOKS_GIVEN_UP = Counter(
    "voxgate_webhooks_given_up", "Webhook events given up 24 hours after they were enqueued"
)
WEBHOOKS_PENDING = Gauge(
    "voxgate_webhooks_pending",
    "Webhook events waiting in the outbox (due, leased or backing off), all processes",
    multiprocess_mode="livemax",
)

# -- tokens, limits, HTTP ------------------------------------------------------------

TOKENS_MINTED = Counter("voxgate_tokens_minted", "Stream tokens minted")
TOKENS_CONSUMED = Counter("voxgate_tokens_consumed", "Stream tokens used up by a stream or upload")
TOKENS_REJECTED = Counter(
    "voxgate_tokens_rejected", "Stream tokens refused: unknown, used or expired"
)
RATE_LIMITED = Counter(
    "voxgate_rate_limited", "Requests or connections refused by an abuse limit", ["limit"]
)
AUTH_FAILURES = Counter(
    "voxgate_auth_failures", "API keys and tokens refused (counted per client IP for limits)"
)
# Labelled by the configured key names only (a bounded set), never by a secret.
API_KEY_REQUESTS = Counter(
    "voxgate_api_key_requests", "Requests authenticated with an API key, by key name", ["key"]
)
RATE_LIMIT_ERRORS = Counter(
    "voxgate_rate_limit_errors", "Rate-limit checks that failed (Redis unreachable: allowed)"
)
HTTP_REQUESTS = Counter(
    "voxgate_http_requests", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "voxgate_http_request_duration_seconds",
    "HTTP request duration, to the end of the response body",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)


def count_ranges(ranges: Iterable[list[int]]) -> int:
    """Seqs covered by inclusive ``[first, last]`` ranges."""
    return sum(last - first + 1 for first, last in ranges)


# Children bound once: ``labels()`` costs more than the increment itself.
TRANSPORTS = ("websocket", "http")
_INGESTED = {t: FRAMES_INGESTED.labels(t) for t in TRANSPORTS}
_DUPLICATE = {t: FRAMES_DUPLICATE.labels(t) for t in TRANSPORTS}
_CONFLICT = {t: FRAMES_CONFLICT.labels(t) for t in TRANSPORTS}
INGESTED_BYTES = {t: BYTES_INGESTED.labels(t) for t in TRANSPORTS}
_NACKS = {
    (t, r): NACKS.labels(t, r)
    for t in TRANSPORTS
    for r in ("checksum", "window", "conflict", "too_large", "sequence")
}


def record_acks(transport: str, acked: list[list[int]], duplicate: list[list[int]]) -> None:
    """Count the frames one upload answer reports as stored and as duplicate."""
    if acked:
        _INGESTED[transport].inc(count_ranges(acked))
    if duplicate:
        _DUPLICATE[transport].inc(count_ranges(duplicate))


def record_ack_counts(transport: str, acked: int, duplicate: int, window: int) -> None:
    """Count one ack's stored and duplicate frames and the window it advertised."""
    if acked:
        _INGESTED[transport].inc(acked)
    if duplicate:
        _DUPLICATE[transport].inc(duplicate)
    ACK_WINDOW.observe(window)


def record_nack(transport: str, reason: str, ranges: list[list[int]]) -> None:
    """Count the frames one upload rejection refuses."""
    record_nacks(transport, reason, count_ranges(ranges))


def record_nacks(transport: str, reason: str, count: int) -> None:
    """Count ``count`` frames refused for ``reason``."""
    _NACKS[transport, reason].inc(count)
    if reason == "conflict":
        _CONFLICT[transport].inc(count)


def exposition(multiprocess_dir: str | None) -> bytes:
    """The text exposition of every metric (summed over workers in multiprocess mode).

    ``multiprocess_dir`` is ``Settings.metrics_dir``: set, the workers' sums.
    """
    if multiprocess_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def worker_exited(multiprocess_dir: str | None) -> None:
    """Drop this process's live gauges from the multiprocess sums (``Settings.metrics_dir``)."""
    if multiprocess_dir:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def sample(
    *,
    window_bytes: int,
    ledger: Callable[[], LedgerStats],
    fanout: Callable[[], tuple[int, int]],
    bus: Callable[[], Mapping[str, int]],
    every_s: float = 1.0,
) -> None:
    """Copy ledger, fan-out and process figures into gauges every ``every_s`` until cancelled.

    ``ledger``: the credit ledger's stats; ``fanout``: (listeners, feeds) of this
    process; ``bus``: the event bus's counters (``published``, ``dropped``).
    """
    WINDOW_CONFIGURED.set(window_bytes)
    seen_events = ledger().pressure_events
    seen_bus = bus()
    while True:
        stats = ledger()
        INFLIGHT_BYTES.set(stats.inflight_bytes)
        BACKPRESSURE.set(1 if stats.pressure else 0)
        if stats.pressure_events > seen_events:
            BACKPRESSURE_EVENTS.inc(stats.pressure_events - seen_events)
            seen_events = stats.pressure_events
        MEMORY_RSS.set(_rss_bytes())
        listeners, feeds = fanout()
        LISTENERS.set(listeners)
        LISTENER_FEEDS.set(feeds)
        counts = bus()
        EVENTS_PUBLISHED.inc(counts["published"] - seen_bus["published"])
        EVENTS_DROPPED.inc(counts["dropped"] - seen_bus["dropped"])
        seen_bus = counts
        await asyncio.sleep(every_s)
