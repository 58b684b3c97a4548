"""Storage and retention figures as Prometheus gauges (the default registry).

The figures are the store's, not this process's, so every worker of every
instance reports the same values; :func:`refresh` reads them from the store.
"""

from __future__ import annotations

from prometheus_client import Gauge

from voxgate.store.base import RetentionRun, Store, Tier, TierStats

STORAGE_SESSIONS = Gauge(
    "voxgate_storage_sessions",
    "Sessions in each retention tier (deleted sessions excluded)",
    ["tier"],
    multiprocess_mode="mostrecent",
)
STORAGE_BYTES = Gauge(
    "voxgate_storage_bytes",
    "Bytes each tier occupies: hot payloads in the store, warm archive files, cold 0",
    ["tier"],
    multiprocess_mode="mostrecent",
)
STORAGE_AUDIO_BYTES = Gauge(
    "voxgate_storage_audio_bytes",
    "Payload bytes of the sessions in each tier, as streamed",
    ["tier"],
    multiprocess_mode="mostrecent",
)
STORAGE_OLDEST = Gauge(
    "voxgate_storage_oldest_session_created_seconds",
    "Creation time (Unix seconds) of each tier's oldest session; 0 when the tier is empty",
    ["tier"],
    multiprocess_mode="mostrecent",
)
RETENTION_LAST_RUN = Gauge(
    "voxgate_retention_last_run_finished_seconds",
    "When the last retention run finished (Unix seconds); 0 before the first",
    multiprocess_mode="mostrecent",
)
RETENTION_LAST_RUN_OK = Gauge(
    "voxgate_retention_last_run_ok",
    "1 when the last retention run moved every session it should, else 0",
    multiprocess_mode="mostrecent",
)
RETENTION_LAST_RUN_SESSIONS = Gauge(
    "voxgate_retention_last_run_sessions",
    "Sessions the last retention run handled, by result",
    ["result"],
    multiprocess_mode="mostrecent",
)
RESULTS = ("archived", "reused", "expired", "discarded", "failed")


def publish(stats: dict[Tier, TierStats], last_run: RetentionRun | None) -> None:
    """Set every gauge from the store's figures."""
    for tier in Tier:
        figures = stats.get(tier, TierStats())
        STORAGE_SESSIONS.labels(tier.value).set(figures.sessions)
        STORAGE_BYTES.labels(tier.value).set(figures.bytes)
        STORAGE_AUDIO_BYTES.labels(tier.value).set(figures.audio_bytes)
        oldest = figures.oldest.created_at.timestamp() if figures.oldest is not None else 0
        STORAGE_OLDEST.labels(tier.value).set(oldest)
    if last_run is None:
        RETENTION_LAST_RUN.set(0)
        RETENTION_LAST_RUN_OK.set(0)
        for result in RESULTS:
            RETENTION_LAST_RUN_SESSIONS.labels(result).set(0)
        return
    RETENTION_LAST_RUN.set(last_run.finished_at.timestamp())
    RETENTION_LAST_RUN_OK.set(1 if last_run.outcome == "ok" else 0)
    for result in RESULTS:
        RETENTION_LAST_RUN_SESSIONS.labels(result).set(getattr(last_run, result))


async def refresh(store: Store) -> tuple[dict[Tier, TierStats], RetentionRun | None]:
    """Read the figures from ``store``, publish them, and return them."""
    stats = await store.storage_stats()
    last_run = await store.last_retention_run()
    publish(stats, last_run)
    return stats, last_run
