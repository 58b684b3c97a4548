"""One connected listener: its bounded buffer, its resume points, and what it is sent next.

The transport (SSE or WebSocket) iterates :meth:`Listener.run` and sends what
it yields. The feed offers events with :meth:`Listener.offer`, which never
blocks and never grows the buffer without bound (docs/api.md "Slow listeners"):

- progress events: at most ``PROGRESS_BUFFER`` queued; a newer one drops the
  oldest (every progress event carries absolute counters, so the latest is
  enough); the next one delivered says how many were dropped.
- transcripts: at most ``listen_buffer_events`` queued; past that the queue's
  transcripts are dropped and the listener re-reads them from the store, in
  id order, from the last one it was sent.
- audio: never queued. The listener reads frames from the store, in seq order
  up to the feed's gap-free edge; one more than ``listen_max_lag_frames``
  behind the live edge ends it with ``slow_consumer`` and its resume point.

Transcripts go out in id order without repeats: ids at or below the last one
sent are dropped; a jump ahead means some were lost or reordered on the way,
and the store (where they are committed before being published) fills it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

from voxgate import _native
from voxgate._native import HEADER_SIZE
from voxgate.fanout.events import (
    AUDIO,
    DELETED_OUT,
    HELLO,
    KEEPALIVE_OUT,
    PONG,
    PROGRESS,
    TRANSCRIPT,
    End,
    Out,
    event_out,
    transcript_out,
    with_dropped,
)
from voxgate.store.base import SessionState, Store

if TYPE_CHECKING:
    from voxgate.fanout.feed import Feed

PROGRESS_BUFFER = 32
_TRANSCRIPT_PAGE = 200
# Audio is read from the store in batches and sent in messages of about this size.
_AUDIO_READ_FRAMES = 256
_AUDIO_READ_BYTES = 256 * 1024
_AUDIO_MESSAGE_BYTES = 64 * 1024
_KEEPALIVE_S = 15.0


class Listener:
    """A listener of one session: SSE (``audio`` False) or WebSocket."""

    def __init__(
        self,
        store: Store,
        session_id: str,
        *,
        audio: bool,
        from_seq: int,
        last_event_id: int,
        buffer_events: int,
        max_lag_frames: int,
    ) -> None:
        """``buffer_events`` and ``max_lag_frames``: ``VOXGATE_LISTEN_BUFFER_EVENTS``
        and ``VOXGATE_LISTEN_MAX_LAG_FRAMES`` (see :class:`~voxgate.settings.Settings`)."""
        self.store = store
        self.session_id = session_id
        self.audio = audio
        self.cursor = from_seq  # next audio seq to send
        self.last_id = last_event_id  # last transcript id sent
        self.feed: Feed | None = None
        self._queue: collections.deque[Out] = collections.deque()
        self._progress = 0  # progress events in the queue
        self._events = 0  # other events in the queue
        self._limit = buffer_events
        self._max_lag = max_lag_frames
        self.dropped = 0  # progress events dropped since one was last sent
        self.dropped_total = 0
        self.rereads = 0  # times the queue overflowed and transcripts were re-read
        self.behind = True  # transcripts must be (re-)read from the store
        self.start_edge = 0  # the audio edge when the listener started
        self._pongs: list[object] = []
        self.end: End | None = None
        self.wake = asyncio.Event()

    # -- from the feed and the transport (never block) -----------------------------------

    def resync(self) -> None:
        """Events may have been lost on the way: re-read transcripts from the store."""
        self.behind = True
        self.wake.set()

    def offer(self, out: Out) -> None:
        if self.end is not None:
            return
        if out.kind == PROGRESS:
            if self._progress >= PROGRESS_BUFFER:
                for i, queued in enumerate(self._queue):
                    if queued.kind == PROGRESS:
                        del self._queue[i]
                        break
                self._progress -= 1
                self.dropped += 1
                self.dropped_total += 1
            self._progress += 1
        else:
            if out.kind == TRANSCRIPT and self._events >= self._limit:
                # Too far behind: forget queued transcripts, read them from the store later.
                kept = [q for q in self._queue if q.kind != TRANSCRIPT]
                self._queue = collections.deque(kept)
                self._events = len(kept) - self._progress
                self.behind = True
                self.rereads += 1
            self._events += 1
        self._queue.append(out)
        self.wake.set()

    def pong(self, t: object) -> None:
        self._pongs.append(t)
        self.wake.set()

    def finish(self, end: End) -> None:
        """End the listener with ``end`` (first one wins)."""
        if self.end is None:
            self.end = end
        self.wake.set()

    def _take(self) -> Out:
        out = self._queue.popleft()
        if out.kind == PROGRESS:
            self._progress -= 1
        else:
            self._events -= 1
        return out

    # -- what to send next -------------------------------------------------------------

    async def run(self) -> AsyncGenerator[Out | End, None]:
        """Everything to send, in order, ending with an :class:`End` (or when the peer left)."""
        feed = self.feed
        assert feed is not None
        # The hello snapshot covers every progress and state event queued so far.
        self._queue = collections.deque(q for q in self._queue if q.kind == TRANSCRIPT)
        self._progress, self._events = 0, len(self._queue)
        self.start_edge = feed.audio_edge
        deleted = feed.deleted  # the hello says so; a later deletion comes as an event
        yield event_out(
            HELLO,
            session_id=self.session_id,
            state=feed.state,
            last_event_id=self.last_id,
            audio=self.audio,
            from_seq=self.cursor if self.audio else None,
            end_seq=feed.end_seq,
            stream_crc32c=feed.stream_crc32c,
            **feed.progress_fields(),
        )
        if deleted:
            self.finish(End(4410, "gone", "session deleted"))
        if self.last_id >= feed.transcript_mark:
            self.behind = False  # nothing stored after it; what comes next comes live
        while True:
            if self.end is not None:
                yield self.end
                return
            while self._pongs:
                yield event_out(PONG, t=self._pongs.pop(0))
            if self.behind:
                async for out in self._catch_up():
                    yield out
                continue
            sent = False
            while self._queue and self.end is None:
                out = self._take()
                if out.kind == TRANSCRIPT:
                    assert out.event_id is not None
                    if out.event_id <= self.last_id:
                        continue
                    if out.event_id > self.last_id + 1:
                        self.behind = True  # lost or reordered on the way: the store has it
                        break
                    self.last_id = out.event_id
                elif out.kind == PROGRESS and self.dropped:
                    out = with_dropped(out, self.dropped)
                    self.dropped = 0
                elif out == DELETED_OUT:
                    self.finish(End(4410, "gone", "session deleted"))
                sent = True
                yield out
            if sent or self.behind or self.end is not None:
                continue
            if self.audio and self.cursor < feed.audio_edge:
                async for item in self._audio(feed):
                    yield item
                continue
            self.wake.clear()
            if self._queue or self._pongs or self.end is not None:
                continue
            if self.audio and self.cursor < feed.audio_edge:
                continue
            try:
                async with asyncio.timeout(_KEEPALIVE_S):
                    await self.wake.wait()
            except TimeoutError:
                yield KEEPALIVE_OUT

    async def _catch_up(self) -> AsyncIterator[Out]:
        """Transcripts after the last one sent, from the store, until none are left."""
        store = self.store
        while self.end is None:
            self.behind = False  # from here on, queued transcripts are complete again
            page = await store.list_transcripts(
                self.session_id, after=self.last_id, limit=_TRANSCRIPT_PAGE
            )
            for transcript in page:
                self.last_id = transcript.id
                yield transcript_out(transcript)
            if len(page) < _TRANSCRIPT_PAGE and not self.behind:
                return

    async def _audio(self, feed: Feed) -> AsyncIterator[Out | End]:
        """One batch of audio from the cursor toward the edge, in messages of whole frames."""
        edge = feed.audio_edge
        lag = edge - max(self.cursor, self.start_edge)
        if lag > self._max_lag:
            self.finish(
                End(
                    4429,
                    "slow_consumer",
                    f"listener fell {lag} frames behind the live edge; resume with"
                    f" from_seq={self.cursor}&last_event_id={self.last_id}",
                    {"from_seq": self.cursor, "last_event_id": self.last_id},
                )
            )
            return
        frames = await self.store.read_frames(
            self.session_id,
            self.cursor,
            edge - 1,
            max_frames=_AUDIO_READ_FRAMES,
            max_bytes=_AUDIO_READ_BYTES,
        )
        parts: list[bytes] = []
        size = 0
        encode_header = _native.encode_header
        for frame in frames:
            if frame.seq != self.cursor:
                # The feed thought this seq stored; it is not (yet): ask the store again.
                feed.request_sync()
                break
            length = len(frame.payload)
            if parts and size + HEADER_SIZE + length > _AUDIO_MESSAGE_BYTES:
                yield Out(AUDIO, b"".join(parts))
                parts, size = [], 0
            # The store checked the payload against this CRC as it read it.
            parts.append(encode_header(frame.seq, length, frame.crc32c, frame.pts_us, frame.flags))
            parts.append(frame.payload)
            size += HEADER_SIZE + length
            self.cursor = frame.seq + 1
        if parts:
            yield Out(AUDIO, b"".join(parts))
        elif not frames:
            # Deleted meanwhile, or the feed is ahead of what this store sees.
            if feed.state != SessionState.DELETED.value:
                feed.request_sync()
            self.wake.clear()
            await asyncio.sleep(0.05)
