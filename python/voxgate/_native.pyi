"""voxgate's Rust core: frame codec, CRC-32C and the credit ledger (PROTOCOL sections 1 and 4)."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol, TypeVar, final

from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

__all__ = [
    "FLAG_END",
    "FRAME_BAD_CRC",
    "FRAME_OK",
    "FRAME_TOO_LARGE",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION",
    "Batch",
    "BlockError",
    "CommitPlan",
    "DecodedFrame",
    "FrameError",
    "Ledger",
    "LedgerStats",
    "StreamCore",
    "StreamDecoder",
    "block_header",
    "crc32c",
    "crc32c_combine",
    "decode",
    "encode_frame",
    "encode_header",
    "read_block",
    "salvage_block",
    "scan_blocks",
]

HEADER_SIZE: Final[int]  # 24
MAGIC: Final[bytes]  # b"VF"
VERSION: Final[int]  # 1
FLAG_END: Final[int]  # 0x01

# Per-frame verdicts in decode results.
FRAME_OK: Final[int]  # 0: well framed, CRC matches
FRAME_BAD_CRC: Final[int]  # 1: well framed, CRC mismatch -> nack "checksum"
# 2: well framed, length > max_frame_bytes -> nack "too_large" (CRC not checked)
FRAME_TOO_LARGE: Final[int]

# One decoded frame: (seq, flags, pts_us, payload_offset, payload_length, crc32c, verdict).
# payload_offset indexes into the decoded message; crc32c is the header's value.
DecodedFrame = tuple[int, int, int, int, int, int, int]

class FrameError(ValueError):
    """Broken framing: the whole message (or body, from ``offset`` on) is rejected.

    ``kind`` is one of "bad_magic", "bad_version", "reserved_flags",
    "truncated" (a frame runs past the end) or "empty_frame" (zero length without END).
    ``offset`` is the byte offset of the offending frame's header.
    """

    kind: str
    offset: int

class BlockError(ValueError):
    """Stored bytes that are not the block the index names: torn, corrupt or misplaced."""

def block_header(session_id: str, first_seq: int, count: int, records_len: int) -> bytes:
    """The header of a block of ``count`` frames of ``session_id`` from ``first_seq``
    whose records take ``records_len`` bytes.

    A block (``rust/block.rs``) is how stored frames lie on disk: this header,
    then each frame's record (its 24-byte wire header and payload).
    """

def read_block(
    data: Buffer, *, verify: bool
) -> tuple[str, list[tuple[int, int, int, int, int, int]]]:
    """(session_id, records) of the whole block ``data``; a record is (seq, flags,
    pts_us, length, crc32c, payload offset in ``data``). With ``verify`` every payload
    is checked against its CRC-32C. Raises BlockError."""

def salvage_block(data: Buffer) -> tuple[str, list[tuple[int, int, int, int, int, int]]]:
    """(session_id, records) of the intact frames of a damaged block whose header holds:
    every record that reads and matches its CRC-32C, up to the first record whose header
    does not read. Raises BlockError when the block header itself does not hold."""

def scan_blocks(
    data: Buffer, base: int
) -> tuple[
    list[tuple[str, int, int, int, int, int, int, int | None]],
    list[tuple[int, int, str]],
    int,
    str | None,
]:
    """What a walk from block to block over ``data`` (a segment's bytes from offset
    ``base``) found, never looking inside a payload: every whole, valid block as
    (session_id, first_seq, last_seq, offset, length, payload_bytes, crc32c, end_seq);
    damaged stretches with valid blocks after them as
    (offset, length, reason) for blocks whose header holds and whose records do not; the
    offset where the walk stopped (at a header that does not hold), and why (None: at
    the end of ``data``). Erased (zeroed) stretches are stepped over."""

def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``value`` (the CRC of what came before)."""

def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32C of ``A + B`` from ``crc1 = crc32c(A)``, ``crc2 = crc32c(B)`` and ``len(B)``."""

def encode_frame(seq: int, payload: Buffer, pts_us: int = 0, end: bool = False) -> bytes:
    """One frame, header and payload, with its CRC-32C computed."""

def encode_header(seq: int, length: int, crc32c: int, pts_us: int = 0, flags: int = 0) -> bytes:
    """A 24-byte header as given, unchecked (tests use it to build bad frames)."""

def decode(message: Buffer, max_frame_bytes: int) -> list[DecodedFrame]:
    """Every frame of one WebSocket message, payloads left in place.

    Raises :class:`FrameError` on broken framing; nothing of the message counts then.
    """

@final  # pyo3 classes cannot be subclassed
class StreamDecoder:
    """Incremental decoder for byte streams (HTTP bodies) split anywhere.

    Buffers at most one header plus ``max_frame_bytes``; a too-large frame's
    payload is skipped as it streams past, never buffered.
    """

    def __new__(cls, max_frame_bytes: int) -> StreamDecoder: ...
    def feed(self, chunk: Buffer) -> list[tuple[int, int, int, bytes | None, int, int]]:
        """Frames completed by ``chunk``: (seq, flags, pts_us, payload, crc32c, verdict).

        ``payload`` is None for FRAME_TOO_LARGE. Raises :class:`FrameError` on
        broken framing; the decoder is then unusable. If ``chunk`` completed
        frames before the broken one, they are returned first and the error is
        raised by the next ``feed`` or ``finish``: the frames handed out are
        exactly those before ``FrameError.offset``, however the body was split.
        """

    def finish(self) -> None:
        """Declare the end of the stream; raises FrameError("truncated") if a frame is partial."""

    @property
    def buffered(self) -> int:
        """Bytes of the partial frame held waiting for the rest of it (header
        included; a too-large frame's skipped payload is not held)."""

    @property
    def consumed(self) -> int:
        """Total bytes fed so far."""

@final  # pyo3 classes cannot be subclassed
class LedgerStats:
    inflight_bytes: int  # admitted and not yet released, all streams
    streams: int
    pressure: bool  # between the high watermark and the return to the low one
    pressure_events: int  # times pressure began
    admitted_bytes: int  # total ever admitted
    refused: int  # admits refused

@final  # pyo3 classes cannot be subclassed
class Ledger:
    """Credit accounting for every open stream of this process.

    Each stream has an advertised window (the credit the client was last told).
    ``admit`` succeeds while the stream's in-flight bytes stay within it and the
    global in-flight bytes stay within ``global_limit``. ``window`` computes and
    records the next advertisement: ``window_bytes`` normally; under pressure
    (global in-flight reached ``global_high`` and not yet back to
    ``global_low``) no new credit, i.e. the stream's current in-flight bytes.
    """

    def __new__(
        cls, window_bytes: int, global_high: int, global_low: int, global_limit: int
    ) -> Ledger:
        """Raises ValueError unless ``global_low <= global_high <= global_limit``.

        Methods taking a ``handle`` raise KeyError for one not open.
        """

    def open(self) -> int:
        """Register a stream; returns its handle with the full window advertised."""

    def close(self, handle: int) -> bool:
        """Forget a stream, releasing whatever it still had in flight.

        True when that ended a pressure period, as for :meth:`release`.
        """

    def admit(self, handle: int, nbytes: int) -> bool:
        """Count ``nbytes`` in flight for the stream if its credit allows."""

    def release(self, handle: int, nbytes: int) -> bool:
        """Uncount acked bytes; True when this release ended a pressure period."""

    def window(self, handle: int) -> int:
        """The window to advertise now, recorded as the stream's credit."""

    def inflight(self, handle: int) -> int:
        """The stream's bytes in flight."""

    def stats(self) -> LedgerStats: ...

# A frame as CommitPlan reads it (voxgate.store.base.FrameIn fits).
class _CommitFrame(Protocol):
    @property
    def session_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def pts_us(self) -> int: ...
    @property
    def crc32c(self) -> int: ...
    @property
    def payload(self) -> bytes | memoryview: ...

_T = TypeVar("_T")

@final  # pyo3 classes cannot be subclassed
class CommitPlan:
    """The per-frame work of one store commit: the commit rules, for both stores.

    Outcomes are numbered as ``voxgate.store.base.Outcome``: 0 stored,
    1 duplicate, 2 conflict, 3 sequence, 4 gone (session not in ``sessions``).
    Use: ``lookups`` (then ``known_block`` with each stored block holding one of
    those seqs, or ``known`` per frame), ``judge``, ``advance`` (then ``extend``
    with the stored extents of each session it names), ``finish``, ``progress``.
    """

    def __new__(
        cls, parts: Iterable[_CommitFrame | Batch], sessions: Iterable[Sequence[Any]]
    ) -> CommitPlan:
        """``parts``: single frames and Batches (each counts as its frames), in commit
        order. ``sessions``: rows of (id, next_seq, frames, bytes, end_seq, stream_crc32c,
        prefix_seq, prefix_crc32c) as stored before the commit."""

    def lookups(self) -> list[tuple[str, list[int]]]:
        """(session_id, seqs) of frames below their session's next_seq: maybe stored."""

    def known(self, session_id: str, seq: int, crc32c: int, length: int, flags: int) -> None:
        """The frame stored at ``seq`` by an earlier commit. KeyError for a session not given."""

    def known_block(self, session_id: str, data: Buffer) -> None:
        """Every frame of the stored block ``data`` (all its bytes) becomes known.
        BlockError if it is not a whole block of ``session_id``."""

    def judge(
        self, offset: int
    ) -> tuple[list[tuple[str, int, int, int, int, int, int]], list[bytes | memoryview], int]:
        """Judge every frame and lay the stored ones out as blocks from ``offset``.

        Returns (extents, buffers, end offset): one extent per block, as
        (session_id, first_seq, last_seq, offset, length, payload_bytes,
        crc32c); the buffers, written back to back from ``offset``, are the
        blocks (header, then each frame's record as it arrived).
        """

    def outcomes(self, members: Sequence[_T]) -> list[_T]:
        """Each frame's outcome (after ``judge``) as ``members[outcome]``."""

    def advance(self) -> list[tuple[str, int]]:
        """Extend every changed session's prefix over this commit's frames.

        Returns (session_id, prefix_seq) of the sessions whose prefix may extend
        over frames stored earlier: feed those to ``extend`` in seq order.
        """

    def extend(self, session_id: str, rows: Iterable[tuple[int, int, int, int]]) -> None:
        """Take stored extents (first_seq, last_seq, crc32c, payload_bytes), in seq order,
        into the prefix until the first gap."""

    def finish(self, now: int) -> bytes:
        """JSON array of ``[state, next_seq, frames, bytes, end_seq, stream_crc32c,
        prefix_seq, prefix_crc32c, now, session_id]`` per changed session (a complete
        one gets its stream CRC)."""

    def progress_by_session(
        self, make: Callable[[int, int, int, int | None, bool, int | None], _T]
    ) -> dict[str, _T]:
        """``{session_id: make(next_seq, frames, bytes, end_seq, complete, stream_crc32c)}``."""

    def progress(self) -> list[tuple[str, int, int, int, int | None, bool, int | None]]:
        """(session_id, next_seq, frames, bytes, end_seq, complete, stream_crc32c) per session."""

@final  # pyo3 classes cannot be subclassed
class Batch:
    """The frames of one stream message that go to the store, in message order,
    as positions in the message (no Python object per frame)."""

    @property
    def session_id(self) -> str: ...
    @property
    def message(self) -> bytes:
        """The message the payloads live in."""
    @property
    def nbytes(self) -> int:
        """Payload bytes of all frames."""
    def __len__(self) -> int: ...
    def seqs(self) -> list[int]:
        """The seqs, in message order."""
    def frames(self) -> list[tuple[int, int, int, int, memoryview]]:
        """Every frame as (seq, flags, pts_us, crc32c, payload view into the message)."""

@final  # pyo3 classes cannot be subclassed
class StreamCore:
    """One WebSocket stream's per-message work: decode, CRC, the checks against
    its session (stored END, look-ahead past next_seq), ledger admission, and
    the acks and nacks it owes, as ready-to-send JSON text.

    Nack reasons: checksum, window, conflict, too_large, sequence.
    """

    def __new__(
        cls,
        ledger: Ledger,
        handle: int,
        session_id: str,
        *,
        max_frame_bytes: int,
        max_seq_ahead: int,
        next_seq: int,
        end_seq: int | None = None,
    ) -> StreamCore: ...
    def accept(self, message: bytes, closing: bool) -> Batch | None:
        """Judge every frame of ``message``: the frames to store (None if none);
        refused ones wait for ``take_nacks``. A ``closing`` stream admits nothing.
        Raises FrameError on broken framing: nothing of the message counts then."""
    def record(self, batch: Batch, outcomes: Sequence[int]) -> None:
        """The store's outcome per frame of ``batch`` (CommitPlan numbering).
        ValueError when the counts differ."""
    def progress(self, next_seq: int, end_seq: int | None = None) -> None:
        """The session's counters after a commit: limits follow; a stored END stays."""
    @property
    def next_seq(self) -> int: ...
    @property
    def end_seq(self) -> int | None: ...
    @property
    def gone(self) -> bool:
        """True once a commit found the session deleted or archived."""
    @property
    def has_acks(self) -> bool: ...
    @property
    def pending_rejections(self) -> int:
        """Refused seqs not yet answered with a nack."""
    def take_nacks(self) -> list[tuple[str, int, str]]:
        """The nacks owed: (reason, frames refused, JSON text) per reason."""
    def take_ack(self, window_bytes: int) -> tuple[int, int, str]:
        """The ack owed, advertising ``window_bytes``: (acked, duplicate, JSON text)."""
