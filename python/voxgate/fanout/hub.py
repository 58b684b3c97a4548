"""The hub: this process's feeds and listeners, and the publishing side of the bus.

Publishing is cheap and off the ingest path: the writer calls :meth:`Hub.committed`
after each store commit (after durability), which only keeps a reference; one
callback, after the woken streams sent their acks, turns everything committed
meanwhile into at most one progress message per session. Without Redis and
without a local listener of a session, nothing is built for it at all.

Receiving: the bus delivers messages of the sessions this process subscribed
to; the hub hands each to the session's feed. A feed is created by the first
listener of a session and dropped, with its bus subscription, when the last
one leaves: nothing per session outlives its listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import orjson

from voxgate._native import Batch
from voxgate.fanout.bus import EventBus
from voxgate.fanout.events import DELETED_MESSAGE, End, progress_message, transcript_message
from voxgate.fanout.feed import Feed
from voxgate.fanout.listener import Listener
from voxgate.ranges import to_ranges
from voxgate.settings import Settings
from voxgate.store.base import CommitResult, Outcome, Part, Progress, Store, Transcript

log = logging.getLogger("voxgate.fanout")

# Store re-read interval of every feed when several workers share a data dir without Redis.
_WORKERS_POLL_S = 0.25


class Hub:
    """Feeds by session, the listeners on them, and the bus between instances."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        bus: EventBus,
        window_of: Callable[[str], int | None],
    ) -> None:
        """``bus``: a :class:`LocalBus` within one process, a :class:`RedisBus` across
        processes. ``window_of(session_id)``: the credit window the session's open
        stream in this process last advertised, None without one (progress events
        carry it)."""
        self.settings = settings
        self.store = store
        self.window_of = window_of
        self.bus = bus
        self.feeds: dict[str, Feed] = {}
        self.listeners: set[Listener] = set()
        self._committed: list[tuple[Sequence[Part], CommitResult]] = []
        self._flush: asyncio.Handle | None = None
        poll = settings.listen_poll_s
        if not poll and settings.serve_workers > 1 and not bus.broadcast:
            poll = _WORKERS_POLL_S  # other workers' commits reach us only through the store
        self.poll_s = poll
        self._poller: asyncio.Task[None] | None = None
        self._emptied = asyncio.Event()
        self._emptied.set()

    async def start(self) -> None:
        await self.bus.start(self._deliver, self._resync)
        if self.poll_s:
            self._poller = asyncio.create_task(self._poll(), name="voxgate-feed-poll")

    async def stop(self, grace_s: float) -> None:
        """End every listener with 1001, wait up to ``grace_s`` for them, close the bus."""
        self.close_listeners()
        if self.listeners:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace_s):
                    await self._emptied.wait()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for feed in list(self.feeds.values()):
            self._drop(feed)
        await self.bus.stop()

    def close_listeners(self) -> None:
        """Ask every listener to end with 1001 (going away)."""
        for listener in self.listeners:
            listener.finish(End(1001, "going_away", "server shutting down"))

    def stats(self) -> dict[str, object]:
        return {
            "listeners": len(self.listeners),
            "feeds": len(self.feeds),
            "bus": {"kind": "redis" if self.bus.broadcast else "local", **self.bus.stats()},
        }

    # -- publishing --------------------------------------------------------------------

    def committed(self, frames: Sequence[Part], result: CommitResult) -> None:
        """The writer's hook after each store commit: remember it, publish on the next turn."""
        if not self.bus.broadcast and not self.feeds:
            return
        self._committed.append((frames, result))
        if self._flush is None:
            # Two hops: the streams woken by this commit send their acks first.
            loop = asyncio.get_running_loop()
            self._flush = loop.call_soon(loop.call_soon, self._publish_committed)

    def _publish_committed(self) -> None:
        self._flush = None
        committed, self._committed = self._committed, []
        broadcast = self.bus.broadcast
        stored: dict[str, list[int]] = {}
        latest: dict[str, Progress] = {}
        for frames, result in committed:
            wanted = [sid for sid in result.progress if broadcast or sid in self.feeds]
            if not wanted:
                continue
            for sid in wanted:
                latest[sid] = result.progress[sid]  # commits come in order: the last one wins
                stored.setdefault(sid, [])
            outcomes = iter(result.outcomes)
            for part in frames:
                # A Batch is one session's frames: look its list up once, seqs from the core.
                if isinstance(part, Batch):
                    seqs = stored.get(part.session_id)
                    for seq, outcome in zip(part.seqs(), outcomes, strict=False):
                        if seqs is not None and outcome is Outcome.STORED:
                            seqs.append(seq)
                    continue
                outcome = next(outcomes)
                if outcome is Outcome.STORED:
                    seqs = stored.get(part.session_id)
                    if seqs is not None:
                        seqs.append(part.seq)
        for sid, seqs in stored.items():
            if seqs:  # only duplicates: nothing new to tell
                window = self.window_of(sid)
                self.bus.publish(sid, progress_message(to_ranges(seqs), latest[sid], window))

    def transcript_added(self, transcript: Transcript) -> None:
        if self.bus.broadcast or transcript.session_id in self.feeds:
            self.bus.publish(transcript.session_id, transcript_message(transcript))

    def session_deleted(self, session_id: str) -> None:
        if self.bus.broadcast or session_id in self.feeds:
            self.bus.publish(session_id, DELETED_MESSAGE)

    # -- receiving ---------------------------------------------------------------------

    def _deliver(self, session_id: str, message: bytes) -> None:
        feed = self.feeds.get(session_id)
        if feed is not None:
            feed.receive(orjson.loads(message))

    def _resync(self, session_ids: Sequence[str] | None) -> None:
        ids = list(self.feeds) if session_ids is None else session_ids
        for session_id in ids:
            feed = self.feeds.get(session_id)
            if feed is not None:
                feed.request_sync()
                for listener in feed.listeners:
                    listener.resync()  # transcripts may have been lost too

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            for feed in list(self.feeds.values()):
                if feed.ready.is_set():
                    feed.request_sync()

    # -- listeners ---------------------------------------------------------------------

    def new_listener(
        self, session_id: str, *, audio: bool, from_seq: int, last_event_id: int
    ) -> Listener:
        """A listener of ``session_id`` reading this hub's store, with the settings' buffers;
        :meth:`join` attaches it."""
        return Listener(
            self.store,
            session_id,
            audio=audio,
            from_seq=from_seq,
            last_event_id=last_event_id,
            buffer_events=self.settings.listen_buffer_events,
            max_lag_frames=self.settings.listen_max_lag_frames,
        )

    async def join(self, listener: Listener) -> Feed:
        """Attach ``listener`` to its session's feed, creating and opening it if needed.

        Returns once the feed is subscribed and has read the store; raises
        :class:`~voxgate.fanout.bus.BusError` or
        :class:`~voxgate.store.base.StoreError` when it cannot be.
        """
        feed = self.feeds.get(listener.session_id)
        if feed is None:
            feed = Feed(self.store, self.bus, listener.session_id)
            self.feeds[listener.session_id] = feed
            feed.open()
        feed.listeners.add(listener)
        listener.feed = feed
        self.listeners.add(listener)
        self._emptied.clear()
        try:
            await feed.ready.wait()
            if feed.error is not None:
                raise feed.error
        except BaseException:
            self.leave(listener)
            raise
        return feed

    def leave(self, listener: Listener) -> None:
        """Detach ``listener``; the last one to leave drops its feed and bus subscription."""
        self.listeners.discard(listener)
        if not self.listeners:
            self._emptied.set()
        feed = listener.feed
        if feed is None:
            return
        listener.feed = None
        feed.listeners.discard(listener)
        if not feed.listeners:
            self._drop(feed)
        elif feed.error is not None and self.feeds.get(feed.session_id) is feed:
            self._drop(feed)  # a failed feed is not reused: the next listener tries again

    def _drop(self, feed: Feed) -> None:
        feed.close()
        if self.feeds.get(feed.session_id) is feed:
            del self.feeds[feed.session_id]
            self.bus.unsubscribe(feed.session_id)
