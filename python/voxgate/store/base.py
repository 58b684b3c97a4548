"""The ``Store`` protocol: what the ingest path and the API need from persistence.

The embedded store (SQLite plus segment files) and the PostgreSQL store both
implement it; tests run the same suite against each.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

import msgspec

from voxgate._native import Batch
from voxgate.errors import VoxgateError


class Tier(enum.StrEnum):
    """Where a session's audio lives (voxgate.retention moves sessions down, never up)."""

    HOT = "hot"  # frames in the store
    WARM = "warm"  # one verified archive file; no frames in the store
    COLD = "cold"  # metadata (and transcripts) only: the audio expired


class SessionState(enum.StrEnum):
    OPEN = "open"  # accepting frames, END not stored yet
    ENDED = "ended"  # END frame stored, gaps remain below it
    COMPLETE = "complete"  # every seq from 0 to END is stored
    DELETED = "deleted"  # payloads removed; only a tombstone remains


class Session(msgspec.Struct, kw_only=True):
    """A session as the API shows it."""

    id: str
    state: SessionState
    created_at: datetime
    updated_at: datetime
    codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    next_seq: int = 0  # one past the highest stored seq
    frames: int = 0  # stored frames
    bytes: int = 0  # stored payload bytes
    end_seq: int | None = None  # seq of the stored END frame
    stream_crc32c: int | None = None  # CRC-32C of all payloads in seq order, once complete
    tier: Tier = Tier.HOT  # where its audio lives (retention)
    # The name of the API key that created it (voxgate.apikeys); None for sessions
    # from before keys had names, which only admin keys see.
    tenant: str | None = None


class FrameIn(msgspec.Struct, array_like=True, gc=False):
    """One verified frame to store. ``payload`` may be a memoryview into the message.

    Not tracked by the cycle collector (it holds no containers): thousands are in
    flight under load, and scanning them made every collection slow.
    """

    session_id: str
    seq: int
    flags: int
    pts_us: int
    crc32c: int
    payload: bytes | memoryview


# What a commit takes: single frames (HTTP uploads), or Batches, the frames of one
# WebSocket message as the Rust core decoded them (no Python object per frame).
Part = FrameIn | Batch


def frames_of(parts: Sequence[Part]) -> list[FrameIn]:
    """Every frame of ``parts`` as a FrameIn, in commit order (payloads stay views)."""
    out: list[FrameIn] = []
    for part in parts:
        if isinstance(part, Batch):
            sid = part.session_id
            out.extend(
                FrameIn(sid, seq, flags, pts_us, crc, payload)
                for seq, flags, pts_us, crc, payload in part.frames()
            )
        else:
            out.append(part)
    return out


class Outcome(enum.IntEnum):
    STORED = 0  # newly durable: ack
    DUPLICATE = 1  # already stored with the same CRC (and length and flags): ack as duplicate
    CONFLICT = 2  # already stored with another CRC, length or END flag: nack "conflict"
    SEQUENCE = 3  # after the stored END (or an END below stored frames): nack "sequence"
    GONE = 4  # session unknown or deleted: the stream closes 4410


class Progress(msgspec.Struct, gc=False):
    """A session's counters right after a commit (made per session per commit: positional
    construction and no cycle tracking keep that cheap)."""

    next_seq: int
    frames: int
    bytes: int
    end_seq: int | None
    complete: bool
    stream_crc32c: int | None


class CommitResult(msgspec.Struct):
    """``outcomes[i]`` answers ``frames[i]``; ``progress`` covers every session touched."""

    outcomes: list[Outcome]
    progress: dict[str, Progress]


class FrameEntry(msgspec.Struct, array_like=True):
    """One stored frame's index entry."""

    seq: int
    flags: int
    pts_us: int
    length: int
    crc32c: int


class StoreError(VoxgateError):
    """The store cannot serve right now (I/O error, database down)."""


class Store(Protocol):
    """Durable sessions and frames. Every method may raise :class:`StoreError`."""

    async def open(self) -> None:
        """Create or migrate what is missing and get ready to serve."""

    async def close(self) -> None:
        """Flush and release files and connections."""

    async def create_session(
        self,
        *,
        codec: str | None,
        sample_rate: int | None,
        channels: int | None,
        metadata: dict[str, Any],
        tenant: str | None = None,
    ) -> Session:
        """Create an open session with a new time-ordered id, owned by ``tenant``."""

    async def get_session(self, session_id: str) -> Session | None:
        """The session, a DELETED tombstone, or None when the id was never created."""

    async def list_sessions(
        self, *, limit: int, after: str | None, tenant: str | None = None
    ) -> list[Session]:
        """Up to ``limit`` sessions (tombstones excluded) with ids greater than ``after``, by id.

        With ``tenant``, only the sessions that tenant owns.
        """

    async def delete_session(self, session_id: str) -> bool:
        """Remove every frame and payload byte of the session, leaving a tombstone.

        The tombstone keeps id, codec, sample rate, channels and timestamps;
        metadata and counters are cleared. Returns False when the session does
        not exist or is already deleted.
        """

    async def missing(self, session_id: str) -> list[list[int]]:
        """Inclusive ``[first, last]`` gaps below the session's ``next_seq`` ([] if unknown)."""

    async def commit(self, frames: Sequence[Part]) -> CommitResult:
        """Store ``frames`` (from any number of sessions) in one transaction.

        ``outcomes`` answers every frame in order, a Batch counting as its frames.

        Durable per the configured durability before it returns: with ``fsync``
        payloads and index survive power loss, with ``process`` a killed process.
        A seq already stored is never overwritten (DUPLICATE or CONFLICT); the
        same seq twice in one batch is answered as if the batch came in order.
        Unknown sessions get GONE and no ``progress`` entry.
        When a session's last gap closes, it becomes COMPLETE and its
        ``stream_crc32c`` is computed in the same transaction.
        """

    async def frame_index(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> list[FrameEntry]:
        """Index entries of stored frames with ``first_seq <= seq <= last_seq``, by seq."""

    async def payload_runs(self, session_id: str) -> list[tuple[int, int, int]]:
        """(first_seq, last_seq, payload bytes) of each stored run of consecutive frames
        (a block), in seq order: how much audio is stored and where its bytes lie,
        without reading it. Frames stored later add runs; a run never changes."""

    def read_payloads(
        self, session_id: str, first_seq: int = 0, last_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(seq, payload)`` of stored frames in seq order, in bounded memory."""

    async def claim_stream(self, session_id: str) -> int:
        """Take over the session's stream: bump and return its stream generation.

        A connection holding an older generation is superseded (close 4409),
        whichever process or instance holds it. Raises :class:`StoreError` for
        a session that was never created.
        """

    async def stream_generations(self, session_ids: Sequence[str]) -> dict[str, int]:
        """Current stream generation of each given session (missing ids are left out)."""

    # -- retention ------------------------------------------------------------------
    # Tiers, archive bookkeeping, storage figures and retention run records, used by
    # voxgate.retention. A move is begun (the session stops taking frames), then
    # finished (frames dropped, payload bytes erased) or cancelled; a move left
    # begun by a killed runner is listed again with ``resumed=True``.

    async def retention_moves(
        self, *, hot_before: datetime, warm_before: datetime, idle_before: datetime
    ) -> list[TierMove]:
        """Sessions to move now, oldest activity first, begun-but-unfinished moves first.

        A hot session moves when its last activity is before ``hot_before`` and it
        is ended, complete, or open without activity since ``idle_before``: to
        cold when that activity is also before ``warm_before``, else to warm. A
        warm session moves to cold when its last activity is before ``warm_before``.
        Deleted sessions never move.
        """

    async def begin_move(self, session_id: str, target: Tier, seen_activity: datetime) -> bool:
        """Mark the move and stop the session taking frames (commits answer GONE).

        Only when the session is live, has no move under way and its last
        activity is still ``seen_activity``; returns whether the move began.
        """

    async def cancel_move(self, session_id: str) -> None:
        """Forget a begun move: the session takes frames again if it is hot."""

    async def finish_archive(self, session_id: str, archive: ArchiveRecord) -> bool:
        """Complete a begun move to warm: record ``archive``, keep the gaps, drop the frames.

        Payload bytes are erased like :meth:`delete_session` erases them. Returns
        False (changing nothing) when no move to warm is under way, e.g. because
        the session was deleted meanwhile.
        """

    async def finish_cold(self, session_id: str) -> bool:
        """Complete a begun move to cold: drop any frames; metadata and counters stay.

        An archive record stays until :meth:`forget_archive`, so the file is
        removed even after a crash. False when no move to cold is under way.
        """

    async def archive_record(self, session_id: str) -> ArchiveRecord | None:
        """The archive the session's record names (warm, or cold/deleted awaiting removal)."""

    async def archives_to_discard(self) -> list[tuple[str, ArchiveRecord]]:
        """Archives of cold or deleted sessions whose files are still to be removed."""

    async def forget_archive(self, session_id: str) -> None:
        """Clear the session's archive record once its file is gone."""

    async def storage_stats(self) -> dict[Tier, TierStats]:
        """Sessions and bytes per tier (deleted sessions excluded), every tier present."""

    async def record_retention_run(self, run: RetentionRun) -> RetentionRun:
        """Persist a finished run; returns it with its ``id``."""

    async def last_retention_run(self) -> RetentionRun | None:
        """The most recently finished run, or None before the first."""

    def retention_lock(self) -> AbstractAsyncContextManager[bool]:
        """Hold the one retention runner lock of this store's deployment while inside.

        Yields False at once (without waiting) when another runner holds it,
        in this or any other process or instance. Released when the holder dies.
        """

    # -- transcripts and listeners -------------------------------------------------
    # Live transcripts (docs/api.md "Transcripts") and the reads listeners catch up
    # with. Kept in one block; every backend implements all of it.

    async def add_transcript(self, session_id: str, entry: TranscriptIn) -> TranscriptResult:
        """Append ``entry`` to the session's transcript log, in one transaction.

        Its key is ``(role, seq)`` when ``seq`` is given, otherwise the role's
        open utterance (its newest unkeyed interim). A stored interim of the
        same key is superseded: removed, and named in the new entry's
        ``supersedes``. A stored final closes its key: a final with the same
        text is DUPLICATE, with another text CONFLICT, an interim STALE (all
        three store nothing and return the stored final). Unknown or deleted
        sessions get GONE. Ids are per session, start at 1 and only grow.
        """

    async def list_transcripts(
        self, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Transcript]:
        """Up to ``limit`` stored transcripts with ids greater than ``after``, by id."""

    async def last_transcript_id(self, session_id: str) -> int:
        """The highest transcript id the session ever used (0 when none or unknown)."""

    async def listen_snapshot(self, session_id: str) -> ListenSnapshot:
        """The session, its gaps and its last transcript id, as of one moment."""

    async def read_frames(
        self, session_id: str, first_seq: int, last_seq: int, *, max_frames: int, max_bytes: int
    ) -> list[StoredFrame]:
        """Stored frames with ``first_seq <= seq <= last_seq`` by seq, with their payloads.

        Stops after ``max_frames`` frames or once ``max_bytes`` payload bytes
        are reached (always at least one frame when there is one). Meant for
        listeners: it must not hold up commits more than a plain read does.
        A frame deleted while it is read ends the list early.
        """

    # -- webhook outbox --------------------------------------------------------------
    # Events for voxgate.webhooks (docs/clients.md "Webhooks"). A store opened with
    # ``events=True`` enqueues one event per session transition in the transaction
    # that makes the transition: END stored (``session.ended``), last gap closed
    # (``session.completed``), moved to warm (``session.archived``) or cold
    # (``session.expired``), deleted (``session.deleted``). Senders claim due events
    # with a lease, so several processes and instances never send one claim at once.

    async def enqueue_event(self, session_id: str, kind: EventType) -> bool:
        """Enqueue ``kind`` for the session as it is now, in a transaction of its own.

        For transitions made outside the store; the store's own transitions
        enqueue themselves. False when the session does not exist or the event
        (its id is fixed by session and kind) was enqueued before.
        """

    async def claim_events(self, *, limit: int, lease_s: float) -> list[OutboxEvent]:
        """Up to ``limit`` due pending events, oldest first, leased for ``lease_s`` seconds.

        Until the lease ends no other claim returns them; an event whose claimer
        died becomes due again when its lease ends.
        """

    async def event_delivered(self, event_id: str, claim: str) -> bool:
        """Remove a delivered event; False (changing nothing) when ``claim`` no longer holds it."""

    async def retry_event(self, event_id: str, claim: str, *, delay_s: float, error: str) -> bool:
        """Count a failed attempt and make the event due again in ``delay_s`` seconds.

        False (changing nothing) when ``claim`` no longer holds it.
        """

    async def fail_event(self, event_id: str, claim: str, *, error: str) -> bool:
        """Count a failed attempt and give the event up: it stays, ``failed``, never sent again.

        False (changing nothing) when ``claim`` no longer holds it.
        """

    async def event_counts(self) -> dict[str, int]:
        """Events per status: ``pending`` (to send, leased or not) and ``failed``."""


# -- retention ------------------------------------------------------------------


class ArchiveRecord(msgspec.Struct, kw_only=True):
    """A warm session's archive file, as verified before its frames were dropped."""

    path: str  # relative to the archive dir
    bytes: int  # size of the archive file
    payload_crc32c: int  # CRC-32C of every payload in seq order
    created_at: datetime


class TierMove(msgspec.Struct, kw_only=True):
    """One session the retention runner should move."""

    session_id: str
    tier: Tier  # where it is now
    target: Tier  # where it goes
    last_activity_at: datetime
    resumed: bool = False  # begun by an earlier run that did not finish


class OldestSession(msgspec.Struct, kw_only=True):
    id: str
    created_at: datetime
    last_activity_at: datetime


class TierStats(msgspec.Struct, kw_only=True):
    """One tier's figures: ``bytes`` is what it occupies, ``audio_bytes`` the payloads it covers."""

    sessions: int = 0
    bytes: int = 0  # hot: payload bytes in the store; warm: archive files; cold: 0
    audio_bytes: int = 0
    oldest: OldestSession | None = None  # by creation


class RetentionRun(msgspec.Struct, kw_only=True):
    """What one retention run did."""

    started_at: datetime
    finished_at: datetime
    outcome: str  # "ok": every move done; "partial": some failed; "failed": none could be made
    archived: int = 0  # hot -> warm, archive written now
    reused: int = 0  # hot -> warm, a verified archive left by a killed run was kept
    expired: int = 0  # -> cold
    discarded: int = 0  # archive files of cold or deleted sessions removed
    failed: int = 0
    bytes_archived: int = 0  # archive file bytes written or kept
    errors: list[str] = msgspec.field(default_factory=list)  # "<session id>: <reason>", capped
    dry_run: bool = False
    id: int | None = None


# -- transcripts and listeners -------------------------------------------------------
# Types of the methods in the block of the same name at the end of ``Store``.

TimestampValue = int | float | str


class TranscriptIn(msgspec.Struct, kw_only=True):
    """A transcript as a client posts it; ``timestamp`` is the client's, kept as given."""

    role: str
    text: str
    is_final: bool
    timestamp: TimestampValue
    seq: int | None = None  # the client's utterance number: the supersession key with role


class Transcript(msgspec.Struct, kw_only=True):
    """A stored transcript entry."""

    id: int  # position in the session's transcript log: 1, 2, 3, ... (superseded ids vanish)
    session_id: str
    role: str
    text: str
    is_final: bool
    timestamp: TimestampValue
    seq: int | None = None
    supersedes: int | None = None  # id of the interim this entry replaced
    received_at: datetime


class TranscriptOutcome(enum.IntEnum):
    STORED = 0  # appended (and any interim of the same key superseded)
    DUPLICATE = 1  # the key's final is stored with the same text: nothing stored
    STALE = 2  # an interim for a key whose final is stored: nothing stored
    CONFLICT = 3  # a final for a key whose final is stored with another text: nothing stored
    GONE = 4  # session unknown or deleted


class TranscriptResult(msgspec.Struct):
    """What ``add_transcript`` did; ``transcript`` is the new entry, or the stored final."""

    outcome: TranscriptOutcome
    transcript: Transcript | None


def after_final(entry: TranscriptIn, stored: Transcript) -> TranscriptResult:
    """What adding ``entry`` does when its key's final, ``stored``, is stored already:
    nothing is stored; the answer says whether it repeats, comes late or contradicts it."""
    if not entry.is_final:
        outcome = TranscriptOutcome.STALE
    elif entry.text == stored.text:
        outcome = TranscriptOutcome.DUPLICATE
    else:
        outcome = TranscriptOutcome.CONFLICT
    return TranscriptResult(outcome, stored)


class ListenSnapshot(msgspec.Struct):
    """Where a session stands for a new listener: read in one consistent snapshot."""

    session: Session | None  # None: never created
    missing: list[list[int]]  # as ``Store.missing``
    last_transcript_id: int  # as ``Store.last_transcript_id``


class EventType(enum.StrEnum):
    """What a webhook event reports (``type`` in its body)."""

    ENDED = "session.ended"  # the END frame is stored (gaps may remain below it)
    COMPLETED = "session.completed"  # every seq up to END is stored
    ARCHIVED = "session.archived"  # moved to warm: audio in a verified archive
    EXPIRED = "session.expired"  # moved to cold: audio gone, metadata kept
    DELETED = "session.deleted"  # deleted through the API: only a tombstone remains


class OutboxEvent(msgspec.Struct, kw_only=True):
    """One claimed webhook event, as a sender delivers it."""

    id: str  # the event id: the same on every attempt, receivers dedupe on it
    type: EventType
    session_id: str
    body: bytes  # the JSON body, fixed when the event was enqueued
    created_at: datetime
    attempts: int  # failed attempts so far
    claim: str  # this claim's token: pass it back to mark the outcome


class StoredFrame(msgspec.Struct, array_like=True):
    """A stored frame with its payload, as listeners receive it."""

    seq: int
    flags: int
    pts_us: int
    crc32c: int
    payload: bytes
