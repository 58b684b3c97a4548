"""The outbox runner: claims due webhook events from the store and POSTs them, signed.

Every server process runs one (``Runtime`` starts it when ``VOXGATE_WEBHOOK_URL``
is set). Each round it claims up to ``batch`` due events with a lease (the
store guarantees that no other claim, in any process or instance, gets them
while it lasts), sends them (one session's events in order, sessions side by
side), and records each outcome: a 2xx answer removes the event; anything
else, a timeout or a network error makes it due again after an exponential
backoff with jitter (about 1 s doubling to 10 min), until 24 hours after the
event was enqueued, when it is given up (kept as ``failed``, counted). An
event whose sender dies mid-delivery is due again when its lease ends: delivery
is at least once, and receivers dedupe on the event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from voxgate import __version__
from voxgate.metrics import (
    WEBHOOK_ATTEMPTS_FAILED,
    WEBHOOKS_DELIVERED,
    WEBHOOKS_GIVEN_UP,
    WEBHOOKS_PENDING,
)
from voxgate.settings import Settings
from voxgate.store.base import OutboxEvent, Store, StoreError
from voxgate.webhooks.signing import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

log = logging.getLogger("voxgate.webhooks")

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0
GIVE_UP_AFTER_S = 24 * 3600.0
POLL_S = 1.0  # how often an idle runner looks for due events
BATCH = 32  # events claimed per round
PENDING_EVERY_S = 5.0  # how often the pending gauge is refreshed
# A session has at most this many events, sent one after the other within a claim.
_EVENTS_PER_SESSION = 5
_ERROR_CHARS = 500  # of an error kept with the event


def backoff_s(
    attempt: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay after failed attempt number ``attempt`` (1, 2, ...): doubling, capped, jittered.

    Between half and all of ``min(cap_s, base_s * 2 ** (attempt - 1))``, so that
    events that failed together (a receiver outage) do not all come back at once.
    """
    delay = min(cap_s, base_s * 2.0 ** min(max(attempt, 1) - 1, 40))
    return delay * (0.5 + rng() / 2)


class WebhookRunner:
    """Delivers the store's webhook outbox to one URL until stopped."""

    def __init__(
        self,
        store: Store,
        url: str,
        secret: str,
        *,
        timeout_s: float = 10.0,
        poll_s: float = POLL_S,
        batch: int = BATCH,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        give_up_after_s: float = GIVE_UP_AFTER_S,
    ) -> None:
        self.store = store
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.batch = batch
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.give_up_after_s = give_up_after_s
        # Long enough for every event of a claim to be tried, one session's one by one.
        self.lease_s = _EVENTS_PER_SESSION * (timeout_s + 5.0) + 30.0
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._pending_at = 0.0

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> WebhookRunner | None:
        """The runner ``settings`` ask for, or None without ``VOXGATE_WEBHOOK_URL``."""
        if not settings.webhook_url:
            return None
        return cls(
            store,
            settings.webhook_url,
            settings.webhook_secret,
            timeout_s=settings.webhook_timeout_s,
        )

    def start(self) -> None:
        httpx_log = logging.getLogger("httpx")
        if httpx_log.level == logging.NOTSET:
            # httpx logs every request with its URL at INFO; the URL may hold a credential.
            httpx_log.setLevel(logging.WARNING)
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run_loop())

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let the deliveries under way finish within ``grace_s``, then stop.

        Events still claimed when it gives up are sent again once their lease ends.
        """
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run_loop(self) -> None:
        while not self._stopping.is_set():
            claimed = 0
            try:
                claimed = await self.run_once()
                await self._refresh_pending()
            except StoreError as exc:
                log.warning("webhook outbox unavailable, trying again: %s", exc)
            except Exception:
                log.exception("webhook round failed")
            if claimed < self.batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_s)

    async def _refresh_pending(self) -> None:
        now = time.monotonic()
        if now - self._pending_at >= PENDING_EVERY_S:
            self._pending_at = now
            WEBHOOKS_PENDING.set((await self.store.event_counts())["pending"])

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s),
                follow_redirects=False,  # a redirect is a failed attempt, never followed
                headers={"User-Agent": f"voxgate-webhooks/{__version__}"},
            )
        return self._client

    async def run_once(self) -> int:
        """Claim due events and try each once; returns how many were claimed."""
        events = await self.store.claim_events(limit=self.batch, lease_s=self.lease_s)
        by_session: dict[str, list[OutboxEvent]] = {}
        for event in events:
            by_session.setdefault(event.session_id, []).append(event)
        await asyncio.gather(*(self._send_in_order(group) for group in by_session.values()))
        return len(events)

    async def _send_in_order(self, events: list[OutboxEvent]) -> None:
        for event in events:
            try:
                await self.deliver(event)
            except StoreError as exc:
                # The outcome is not recorded: the event is sent again when its lease ends.
                log.warning("webhook event %s: cannot record the outcome: %s", event.id, exc)

    async def deliver(self, event: OutboxEvent) -> bool:
        """POST one claimed event and record the outcome; True when it was delivered."""
        attempt = event.attempts + 1
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(self.secret, timestamp, event.body),
            EVENT_ID_HEADER: event.id,
            EVENT_TYPE_HEADER: event.type.value,
            ATTEMPT_HEADER: str(attempt),
        }
        try:
            async with asyncio.timeout(self.timeout_s):
                # Streamed and never read: only the status counts, however big the answer.
                async with self.client().stream(
                    "POST", self.url, content=event.body, headers=headers
                ) as response:
                    status = response.status_code
        except (TimeoutError, httpx.TimeoutException):
            return await self._failed(event, attempt, "timeout", f"no answer in {self.timeout_s}s")
        except httpx.HTTPError as exc:
            return await self._failed(event, attempt, "network", f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            await self.store.event_delivered(event.id, event.claim)
            WEBHOOKS_DELIVERED.inc()
            return True
        return await self._failed(event, attempt, f"{status // 100}xx", f"answered {status}")

    async def _failed(self, event: OutboxEvent, attempt: int, reason: str, error: str) -> bool:
        WEBHOOK_ATTEMPTS_FAILED.labels(reason).inc()
        error = error.replace("\x00", "")[:_ERROR_CHARS]  # PostgreSQL text holds no NUL
        delay = backoff_s(attempt, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s)
        age = (datetime.now(UTC) - event.created_at).total_seconds()
        if age + delay > self.give_up_after_s:
            await self.store.fail_event(event.id, event.claim, error=error)
            WEBHOOKS_GIVEN_UP.inc()
            log.warning(
                "webhook event %s (%s, session %s) given up after %d attempts: %s",
                event.id, event.type.value, event.session_id, attempt, error,
            )  # fmt: skip
            return False
        await self.store.retry_event(event.id, event.claim, delay_s=delay, error=error)
        log.info(
            "webhook event %s attempt %d failed (%s); next in %.1fs",
            event.id, attempt, error, delay,
        )  # fmt: skip
        return False
