"""Group commit: frames of many streams share one store transaction (and one fsync).

Callers hand their frames to :meth:`Writer.commit` and wait, or a stream
message's :class:`~voxgate._native.Batch` to :meth:`Writer.submit` with a
callback (no task, future or object per frame). One background task
runs store commits back to back: while one runs, new submissions queue up; when it
finishes, everything queued (up to ``max_frames`` frames and ``max_bytes`` payload
bytes) goes into the next single commit. Batches grow with load and no timer
delays a lone frame.

Memory is bounded upstream: the credit ledger caps the bytes every stream may
have in flight, so callers cannot submit more than the ledger admitted. As a
last line of defence the writer refuses submissions (:class:`WriterFull`) once
the bytes it holds, queued or being committed, would exceed ``4 * max_bytes``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from voxgate import metrics
from voxgate._native import Batch
from voxgate.store.base import CommitResult, FrameIn, Outcome, Part, Progress, Store, StoreError

log = logging.getLogger("voxgate.writer")


class WriterFull(StoreError):
    """The writer already holds its hard limit of payload bytes; retry after acks drain."""


# Called once with the submitted batch and the commit's answer for it: the outcome of
# each of its frames and its session's counters (None if the session is gone), or the
# error. Plain values, not a CommitResult: one of these runs per stream per commit.
Done = Callable[[Batch, list[Outcome] | None, Progress | None, BaseException | None], None]


class _Entry:
    """One caller's frames waiting for a commit: answered through a future or a callback."""

    __slots__ = ("done", "frames", "future", "nbytes")

    def __init__(
        self, frames: Sequence[FrameIn] | Batch, nbytes: int, done: Done | None = None
    ) -> None:
        self.frames = frames  # a Batch (submit, answered through done) or frames (commit)
        self.nbytes = nbytes
        self.done = done
        self.future: asyncio.Future[CommitResult] | None = (
            None if done is not None else asyncio.get_running_loop().create_future()
        )

    def cancelled(self) -> bool:
        return self.future is not None and self.future.cancelled()

    def answer_batch(
        self, outcomes: list[Outcome] | None, progress: Progress | None, exc: BaseException | None
    ) -> None:
        done, self.done = self.done, None  # at most once
        assert done is not None
        assert isinstance(self.frames, Batch)
        try:
            done(self.frames, outcomes, progress, exc)
        except Exception:
            log.exception("commit callback failed")

    def fail(self, exc: BaseException) -> None:
        if self.done is not None:
            self.answer_batch(None, None, exc)
        else:
            self.answer(None, exc)

    def answer(self, result: CommitResult | None, exc: BaseException | None) -> None:
        future = self.future
        if future is None or future.done():
            return
        if exc is not None:
            future.set_exception(exc)
            # Mark retrieved: a caller that gave up must not cause "never retrieved" noise.
            with contextlib.suppress(BaseException):
                future.exception()
        else:
            assert result is not None
            future.set_result(result)


def _nbytes(frame: FrameIn) -> int:
    payload = frame.payload
    return payload.nbytes if isinstance(payload, memoryview) else len(payload)


class Writer:
    """Batches concurrent :meth:`commit` calls into as few store transactions as possible."""

    def __init__(self, store: Store, *, max_frames: int, max_bytes: int) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("max_frames and max_bytes must be at least 1")
        self.store = store
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.limit_bytes = 4 * max_bytes
        self._queue: collections.deque[_Entry] = collections.deque()
        self._held_bytes = 0  # queued plus being committed
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Called after each store commit with all its frames and its result (live fan-out).
        self.on_commit: Callable[[Sequence[Part], CommitResult], None] | None = None
        self.commits = 0  # store commits run
        self.frames = 0  # frames handed to the store
        self.busy_s = 0.0  # time spent waiting for store commits

    @property
    def held_bytes(self) -> int:
        """Payload bytes submitted and not yet answered."""
        return self._held_bytes

    async def start(self) -> None:
        """Start the commit task (in the running event loop)."""
        if self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="voxgate-writer")

    async def stop(self) -> None:
        """Commit everything already submitted, then stop; later commits raise StoreError."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.shield(task)
        finally:
            self._task = None

    async def commit(self, frames: Sequence[FrameIn]) -> CommitResult:
        """Store ``frames`` durably as part of a group commit; answers for these frames only.

        ``outcomes`` is parallel to ``frames``; ``progress`` covers their sessions.
        Submissions above ``max_frames`` / ``max_bytes`` are split over
        consecutive transactions. Raises :class:`WriterFull` when the writer
        already holds ``4 * max_bytes``, and :class:`StoreError` when the writer
        is not running or the store commit fails (frames of a failed commit
        may or may not be stored; resending them is safe).
        """
        if not frames:
            return CommitResult([], {})
        if self._task is None or self._stopping:
            raise StoreError("writer is not running")
        chunks = self._split(frames)
        total = sum(nbytes for _, nbytes in chunks)
        if self._held_bytes + total > self.limit_bytes:
            raise WriterFull(
                f"writer holds {self._held_bytes} payload bytes; {total} more would pass "
                f"its limit of {self.limit_bytes}"
            )
        entries = [_Entry(chunk, nbytes) for chunk, nbytes in chunks]
        self._queue.extend(entries)
        self._held_bytes += total
        self._wake.set()
        futures = [e.future for e in entries if e.future is not None]
        if len(futures) == 1:
            return await futures[0]
        results = await asyncio.gather(*futures, return_exceptions=True)
        outcomes = []
        progress: dict[str, Progress] = {}
        for result in results:
            if isinstance(result, BaseException):
                raise result
            outcomes.extend(result.outcomes)
            progress.update(result.progress)  # later chunks carry later counters
        return CommitResult(outcomes, progress)

    def submit(self, batch: Batch, nbytes: int, done: Done) -> None:
        """Queue a stream message's ``batch`` (``nbytes`` payload bytes) for a group commit.

        The callback form of :meth:`commit`, without a task or a future per
        call: ``done(batch, result, None)`` or ``done(batch, None, error)`` runs
        once, on the event loop. A batch is one message, bounded by the
        message size limit, and is committed whole. Raises :class:`WriterFull`
        or :class:`StoreError` at once, as :meth:`commit` would, and then never
        calls ``done``.
        """
        if self._task is None or self._stopping:
            raise StoreError("writer is not running")
        if self._held_bytes + nbytes > self.limit_bytes:
            raise WriterFull(
                f"writer holds {self._held_bytes} payload bytes; {nbytes} more would pass "
                f"its limit of {self.limit_bytes}"
            )
        self._queue.append(_Entry(batch, nbytes, done))
        self._held_bytes += nbytes
        self._wake.set()

    def _split(self, frames: Sequence[FrameIn]) -> list[tuple[Sequence[FrameIn], int]]:
        """Cut a submission into pieces no larger than one transaction may be."""
        sizes = [_nbytes(frame) for frame in frames]
        total = sum(sizes)
        if len(frames) <= self.max_frames and total <= self.max_bytes:
            return [(frames, total)]
        chunks: list[tuple[Sequence[FrameIn], int]] = []
        start = nbytes = 0
        for i, size in enumerate(sizes):
            if i > start and (i - start >= self.max_frames or nbytes + size > self.max_bytes):
                chunks.append((frames[start:i], nbytes))
                start, nbytes = i, 0
            nbytes += size
        chunks.append((frames[start:], nbytes))
        return chunks

    def _take_batch(self) -> list[_Entry]:
        """Queued entries for one transaction, oldest first, within the limits."""
        batch: list[_Entry] = []
        frames = nbytes = 0
        queue = self._queue
        while queue:
            entry = queue[0]
            if entry.cancelled():  # its caller gave up before it was committed
                queue.popleft()
                self._held_bytes -= entry.nbytes
                continue
            if batch and (
                frames + len(entry.frames) > self.max_frames
                or nbytes + entry.nbytes > self.max_bytes
            ):
                break
            queue.popleft()
            batch.append(entry)
            frames += len(entry.frames)
            nbytes += entry.nbytes
        return batch

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        return
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                batch = self._take_batch()
                if batch:
                    await self._commit_batch(batch)
        finally:
            # Cancelled from outside (loop shutdown): nobody may wait forever.
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._settle(left, StoreError("writer stopped"))

    async def _commit_batch(self, batch: list[_Entry]) -> None:
        frames: list[Part] = []
        nframes = 0
        for entry in batch:
            if isinstance(entry.frames, Batch):
                frames.append(entry.frames)  # the core reads its frames itself
            else:
                frames.extend(entry.frames)
            nframes += len(entry.frames)
        try:
            self.commits += 1
            self.frames += nframes
            metrics.COMMIT_FRAMES.observe(nframes)
            started = time.perf_counter()
            try:
                result = await self.store.commit(frames)
            finally:
                self.busy_s += time.perf_counter() - started
            metrics.COMMIT_LATENCY.observe(time.perf_counter() - started)
        except asyncio.CancelledError:
            self._settle(batch, StoreError("writer stopped before the commit finished"))
            raise
        except Exception as exc:
            if not isinstance(exc, StoreError):
                log.exception("store commit failed unexpectedly")
            self._settle(batch, exc)
            return
        if len(result.outcomes) != nframes:
            self._settle(batch, StoreError("store answered a different number of frames"))
            return
        start = 0
        progress = result.progress
        outcomes = result.outcomes
        for entry in batch:
            end = start + len(entry.frames)
            self._held_bytes -= entry.nbytes
            part = entry.frames
            if isinstance(part, Batch):
                # A stream's message: its slice and its session's counters, nothing built.
                entry.answer_batch(outcomes[start:end], progress.get(part.session_id), None)
            else:
                sessions = {frame.session_id for frame in part}
                theirs = {sid: p for sid, p in progress.items() if sid in sessions}
                entry.answer(CommitResult(outcomes[start:end], theirs), None)
            start = end
        if self.on_commit is not None:
            self.on_commit(frames, result)

    def _settle(self, batch: list[_Entry], exc: BaseException) -> None:
        for entry in batch:
            self._held_bytes -= entry.nbytes
            entry.fail(exc)
