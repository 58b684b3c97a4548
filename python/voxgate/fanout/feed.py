"""One session's live state in one process, and the listeners it feeds.

A feed exists while the session has at least one listener here. It keeps what
is known to be stored (``next_seq`` and the gaps below it, as the stream's
``hello`` reports them) by merging every progress message and every store
read: the stored set only grows, so merging is order-free and a message seen
twice changes nothing. From each merge it derives the events listeners get:
``progress`` when something new is stored, ``state`` on ``ended``,
``complete`` and ``deleted``.

When messages may have been lost (the bus says so, or a message reports more
stored frames than the feed can account for) the feed re-reads the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from voxgate.fanout.bus import EventBus
from voxgate.fanout.events import (
    DELETED_OUT,
    MAX_MISSING_RANGES,
    PROGRESS,
    STATE,
    Out,
    event_out,
    transcript_out,
)
from voxgate.ranges import complement, count, subtract, union
from voxgate.store.base import SessionState, Store, StoreError


class Subscriber(Protocol):
    """What a feed needs of each listener on it (:class:`~voxgate.fanout.listener.Listener`)."""

    def offer(self, out: Out) -> None:
        """Take one event; never blocks."""

    def resync(self) -> None:
        """Events may have been lost: catch up from the store."""


log = logging.getLogger("voxgate.fanout")

_TRANSCRIPT_PAGE = 500
_RETRY_SYNC_S = 1.0


class Feed:
    """The session's tracker and its local listeners."""

    def __init__(self, store: Store, bus: EventBus, session_id: str) -> None:
        self.store = store
        self.bus = bus
        self.session_id = session_id
        self.listeners: set[Subscriber] = set()
        # Known stored: every seq below next_seq except those in missing.
        self.next_seq = 0
        self.missing: list[list[int]] = []
        self.frames = 0
        self.bytes = 0
        self.end_seq: int | None = None
        self.complete = False
        self.stream_crc32c: int | None = None
        self.window: int | None = None
        self.deleted = False
        self.transcript_mark = 0  # highest transcript id seen
        self.ready = asyncio.Event()
        self.error: BaseException | None = None
        self._opening: asyncio.Task[None] | None = None
        self._syncing: asyncio.Task[None] | None = None
        self._sync_again = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Subscribe, then read the store (in that order: nothing falls between)."""
        self._opening = asyncio.create_task(self._open(), name=f"voxgate-feed-{self.session_id}")

    async def _open(self) -> None:
        try:
            await self.bus.subscribe(self.session_id)
            await self._sync(initial=True)
        except Exception as exc:  # BusError, StoreError: the joining listeners get it
            self.error = exc
        self.ready.set()

    def close(self) -> None:
        self._closed = True
        for task in (self._opening, self._syncing):
            if task is not None and not task.done():
                task.cancel()
        self.ready.set()

    # -- what listeners see --------------------------------------------------------------

    @property
    def audio_edge(self) -> int:
        """Every seq below this is stored: audio flows up to it, in order."""
        return self.missing[0][0] if self.missing else self.next_seq

    @property
    def state(self) -> str:
        if self.deleted:
            return SessionState.DELETED.value
        if self.complete:
            return SessionState.COMPLETE.value
        return SessionState.OPEN.value if self.end_seq is None else SessionState.ENDED.value

    def progress_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "next_seq": self.next_seq,
            "frames": self.frames,
            "bytes": self.bytes,
            "missing": self.missing[:MAX_MISSING_RANGES],
            "ended": self.end_seq is not None,
            "complete": self.complete,
            "window_bytes": self.window,
        }
        if len(self.missing) > MAX_MISSING_RANGES:
            fields["missing_truncated"] = True
        return fields

    def _dispatch(self, out: Out) -> None:
        for listener in self.listeners:
            listener.offer(out)

    # -- bus messages ------------------------------------------------------------------

    def receive(self, message: dict[str, Any]) -> None:
        kind = message.get("k")
        if kind == "p":
            self._merge(
                message["acked"],
                frames=message["frames"],
                nbytes=message["bytes"],
                end_seq=message["end_seq"],
                complete=message["complete"],
                stream_crc32c=message["stream_crc32c"],
                window=message["window"],
            )
        elif kind == "t":
            transcript = message["transcript"]
            self.transcript_mark = max(self.transcript_mark, int(transcript["id"]))
            self._dispatch(transcript_out(transcript))
        elif kind == "s":
            self._mark_deleted()
        elif kind == "r":
            self.request_sync()

    def _merge(
        self,
        stored: list[list[int]],
        *,
        frames: int,
        nbytes: int,
        end_seq: int | None,
        complete: bool,
        stream_crc32c: int | None,
        window: int | None = None,
    ) -> None:
        if self.deleted:
            return
        if len(stored) == 1 and stored[0][0] == self.next_seq and not self.missing:
            acked = stored  # the usual case: frames right after the ones known, no gaps
            self.next_seq = stored[0][1] + 1
            known_count = self.next_seq
        else:
            known = complement(self.missing, self.next_seq)
            acked = subtract(stored, known)
            if acked:
                known = union(known, acked)
                self.next_seq = max(self.next_seq, known[-1][1] + 1)
                self.missing = complement(known, self.next_seq)
            known_count = count(known)
        changed = bool(acked)
        if frames > self.frames:
            self.frames, self.bytes = frames, nbytes
            changed = True
        if window is not None and window != self.window:
            self.window = window
        ended = end_seq is not None and self.end_seq is None
        if ended:
            self.end_seq = end_seq
        completed = complete and not self.complete
        if completed:
            self.complete = True
            self.stream_crc32c = stream_crc32c
        if self.frames > known_count:
            self.request_sync()  # acks of some commit never reached us
        if not self.ready.is_set():
            return  # listeners start from the snapshot in their hello
        if changed:
            self._dispatch(event_out(PROGRESS, acked=acked, **self.progress_fields()))
        if completed:
            self._dispatch(
                event_out(
                    STATE,
                    state=SessionState.COMPLETE.value,
                    last_seq=self.end_seq,
                    frames=self.frames,
                    bytes=self.bytes,
                    stream_crc32c=self.stream_crc32c,
                )
            )
        elif ended:
            self._dispatch(event_out(STATE, state=SessionState.ENDED.value, end_seq=self.end_seq))

    def _mark_deleted(self) -> None:
        if self.deleted:
            return
        self.deleted = True
        self._dispatch(DELETED_OUT)

    # -- store reads -------------------------------------------------------------------

    def request_sync(self) -> None:
        """Re-read the store soon (at most one read at a time per feed)."""
        if self._closed or self.deleted:
            return
        if self._syncing is not None and not self._syncing.done():
            self._sync_again = True
            return
        if self._opening is not None and not self._opening.done():
            self._sync_again = True  # the opening read runs after this message: read again
        self._syncing = asyncio.create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        if self._opening is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._opening)
        while not self._closed:
            self._sync_again = False
            try:
                await self._sync(initial=False)
            except StoreError as exc:
                log.warning("feed %s: cannot read the store: %s", self.session_id, exc)
                await asyncio.sleep(_RETRY_SYNC_S)
                self._sync_again = True
            if not self._sync_again:
                return

    async def _sync(self, *, initial: bool) -> None:
        store = self.store
        snapshot = await store.listen_snapshot(self.session_id)
        session = snapshot.session
        if session is None or session.state is SessionState.DELETED:
            self._mark_deleted()
            return
        self._merge(
            complement(snapshot.missing, session.next_seq),
            frames=session.frames,
            nbytes=session.bytes,
            end_seq=session.end_seq,
            complete=session.state is SessionState.COMPLETE,
            stream_crc32c=session.stream_crc32c,
        )
        if initial or snapshot.last_transcript_id <= self.transcript_mark:
            self.transcript_mark = max(self.transcript_mark, snapshot.last_transcript_id)
            return
        while True:
            page = await store.list_transcripts(
                self.session_id, after=self.transcript_mark, limit=_TRANSCRIPT_PAGE
            )
            for transcript in page:
                self.transcript_mark = max(self.transcript_mark, transcript.id)
                self._dispatch(transcript_out(transcript))
            if len(page) < _TRANSCRIPT_PAGE:
                return
