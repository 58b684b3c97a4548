"""Stream takeovers announced across instances through Redis pub/sub.

When a connection claims a session's stream (the store bumps its generation),
its instance publishes ``"<session id> <generation>"`` on one channel that
every instance subscribes to; an instance holding an older connection for that
session closes it with 4409 at once. One channel serves all sessions, so
nothing is created per session.

Pub/sub is only the fast path: a message published while an instance is
disconnected is lost, and the store poll of :class:`StreamRegistry` still
catches every takeover a fraction of a second later. Redis being down
therefore never stops a takeover, it only makes it slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis

from voxgate.redis_client import REDIS_ERRORS, keep_connected

log = logging.getLogger("voxgate.stream")

CHANNEL = "voxgate:streams:claimed"

# How long one wait for a message lasts; between waits redis-py health-checks the connection.
_LISTEN_WAIT_S = 1.0
# Reconnecting after Redis went away: exponential backoff between these bounds.
_RECONNECT_MIN_S = 0.1
_RECONNECT_MAX_S = 5.0
# At most one warning this often while publishing fails (Redis down): no log flood.
_WARN_EVERY_S = 10.0


def encode_claim(session_id: str, generation: int) -> str:
    return f"{session_id} {generation}"


def decode_claim(data: bytes | str) -> tuple[str, int] | None:
    """``(session id, generation)`` from a channel message, None when it is not one."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    session_id, _, generation = text.partition(" ")
    if not session_id or not generation.isdigit():
        return None
    return session_id, int(generation)


class ClaimChannel:
    """Publishes this instance's stream claims and hears every instance's.

    ``on_claim(session_id, generation)`` runs on the event loop for each claim
    heard (this instance's own included; an equal generation changes nothing).
    """

    def __init__(self, client: Redis, on_claim: Callable[[str, int], None]) -> None:
        self._redis = client
        self._on_claim = on_claim
        self._listener: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._last_warning = 0.0
        self.subscribed = False

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    def announce(self, session_id: str, generation: int) -> None:
        """Publish a claim without making the caller wait (best effort)."""
        task = asyncio.create_task(self._publish(encode_claim(session_id, generation)))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, message: str) -> None:
        try:
            await self._redis.publish(CHANNEL, message)
        except REDIS_ERRORS as exc:
            now = time.monotonic()
            if now - self._last_warning >= _WARN_EVERY_S:
                self._last_warning = now
                log.warning("cannot announce a stream takeover (the store poll will): %s", exc)

    async def _listen(self) -> None:
        await keep_connected(
            self._subscription,
            self._lost,
            name="stream takeover channel",
            min_delay_s=_RECONNECT_MIN_S,
            max_delay_s=_RECONNECT_MAX_S,
        )

    async def _subscription(self, connected: Callable[[], None]) -> None:
        """One connection to the channel: hear claims until it fails."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL)
            if not self.subscribed:
                log.info("listening for stream takeovers on Redis channel %s", CHANNEL)
            self.subscribed = True
            connected()
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_LISTEN_WAIT_S
                )
                if message is None or message.get("type") != "message":
                    continue
                claim = decode_claim(message["data"])
                if claim is not None:
                    self._on_claim(*claim)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()

    def _lost(self, exc: BaseException) -> None:
        if self.subscribed:
            log.warning("lost the Redis takeover channel, reconnecting: %s", exc)
        self.subscribed = False

    async def close(self) -> None:
        """Stop listening and wait for announcements still being published."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self.subscribed = False
        if self._publishing:
            await asyncio.wait(list(self._publishing), timeout=2.0)
