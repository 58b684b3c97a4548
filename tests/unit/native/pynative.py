"""voxgate's core in pure Python: the same API and results as the Rust ``voxgate._native``.

It exists for comparisons of the building blocks (``loadtests/native_bench.py``
shows what the Rust core buys per call). It is a faithful copy (the tests check it against
the Rust module on random inputs), written the way a careful Python
implementation would be: ``struct`` for headers, slicing-by-8 tables for
CRC-32C, zlib's method for CRC combination. It is not meant for production.
"""

from __future__ import annotations

import struct
from typing import Final, TypeVar

from typing_extensions import Buffer

from voxgate import wire

HEADER_SIZE: Final[int] = 24
MAGIC: Final[bytes] = b"VF"
VERSION: Final[int] = 1
FLAG_END: Final[int] = wire.FLAG_END
FRAME_OK: Final[int] = 0
FRAME_BAD_CRC: Final[int] = 1
FRAME_TOO_LARGE: Final[int] = 2

DecodedFrame = tuple[int, int, int, int, int, int, int]

_RESERVED_FLAGS = wire.RESERVED_FLAGS
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_U8 = 0xFF
_HEADER = struct.Struct(wire.HEADER_FORMAT)
_POLY = 0x82F63B78
T = TypeVar("T")


class FrameError(ValueError):
    """Broken framing: the whole message (or body, from ``offset`` on) is rejected."""

    kind: str
    offset: int

    def __init__(self, message: str, kind: str, offset: int) -> None:
        super().__init__(message)
        self.kind = kind
        self.offset = offset


# -- buffers ------------------------------------------------------------------------


def _bytes_of(obj: Buffer) -> memoryview:
    """A flat byte view of any contiguous buffer (BufferError if it is not contiguous)."""
    if isinstance(obj, str):
        raise TypeError("a bytes-like object is required, not 'str'")
    view = memoryview(obj)
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _check_range(value: int, top: int, what: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an integer")
    if value < 0:
        raise OverflowError(f"can't convert negative int to unsigned ({what})")
    if value > top:
        raise OverflowError(f"out of range integral type conversion attempted ({what})")
    return value


# -- CRC-32C ------------------------------------------------------------------------


def _tables() -> tuple[list[int], ...]:
    first = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        first.append(crc)
    tables = [first]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ first[prev[i] & 0xFF] for i in range(256)])
    return tuple(tables)


_T = _tables()
_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


def _crc_update(crc: int, data: memoryview) -> int:
    """The CRC register (pre-inverted) after ``data``: slicing-by-8 over 64-bit words."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    n = len(data)
    whole = n - n % 8 if _LITTLE else 0
    if whole:
        for word in data[:whole].cast("Q"):
            word ^= crc
            crc = (
                t7[word & 0xFF]
                ^ t6[(word >> 8) & 0xFF]
                ^ t5[(word >> 16) & 0xFF]
                ^ t4[(word >> 24) & 0xFF]
                ^ t3[(word >> 32) & 0xFF]
                ^ t2[(word >> 40) & 0xFF]
                ^ t1[(word >> 48) & 0xFF]
                ^ t0[word >> 56]
            )
    for byte in data[whole:]:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC-32C of ``data``, continuing from ``value`` (the CRC of what came before)."""
    value = _check_range(value, _U32, "value")
    return _crc_update(value ^ _U32, _bytes_of(data)) ^ _U32


def _multmodp(a: int, b: int) -> int:
    """``a(x) * b(x) mod P(x)``, both reflected (bit 31 is x^0)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                break
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    # x^(2^k) mod P(x) for every k a u64 byte count reaches (k = 3 + bit).
    table = [1 << 30]
    for _ in range(66):
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x2n_table()


def _x2nmodp(n: int, k: int) -> int:
    p = 1 << 31
    while n:
        if n & 1:
            p = _multmodp(_X2N[k], p)
        n >>= 1
        k += 1
    return p


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32C of ``A + B`` from ``crc1 = crc32c(A)``, ``crc2 = crc32c(B)`` and ``len(B)``."""
    crc1 = _check_range(crc1, _U32, "crc1")
    crc2 = _check_range(crc2, _U32, "crc2")
    len2 = _check_range(len2, _U64, "len2")
    return _multmodp(_x2nmodp(len2, 3), crc1) ^ crc2


# -- frames -------------------------------------------------------------------------


def encode_header(seq: int, length: int, crc32c: int, pts_us: int = 0, flags: int = 0) -> bytes:
    """A 24-byte header as given, unchecked (tests use it to build bad frames)."""
    _check_range(seq, _U32, "seq")
    _check_range(length, _U32, "length")
    _check_range(crc32c, _U32, "crc32c")
    _check_range(pts_us, _U64, "pts_us")
    _check_range(flags, _U8, "flags")
    return _HEADER.pack(MAGIC, VERSION, flags, seq, pts_us, length, crc32c)


def encode_frame(seq: int, payload: Buffer, pts_us: int = 0, end: bool = False) -> bytes:
    """One frame, header and payload, with its CRC-32C computed."""
    _check_range(seq, _U32, "seq")
    _check_range(pts_us, _U64, "pts_us")
    view = _bytes_of(payload)
    if len(view) > _U32:
        raise ValueError(
            f"payload of {len(view)} bytes does not fit a frame (at most {_U32} bytes)"
        )
    crc = _crc_update(_U32, view) ^ _U32
    flags = FLAG_END if end else 0
    return _HEADER.pack(MAGIC, VERSION, flags, seq, pts_us, len(view), crc) + view.tobytes()


def _prefix_error(prefix: memoryview | bytes, offset: int) -> FrameError | None:
    """The check of the header bytes present so far, in protocol order (as the Rust core)."""
    n = len(prefix)
    if n >= 2 and bytes(prefix[:2]) != MAGIC:
        return FrameError(
            f"bad_magic: frame at byte {offset} starts with 0x{prefix[0]:02x}{prefix[1]:02x},"
            ' expected 0x5646 ("VF")',
            "bad_magic",
            offset,
        )
    if n >= 3 and prefix[2] != VERSION:
        return FrameError(
            f"bad_version: frame at byte {offset} has version {prefix[2]},"
            f" only {VERSION} is supported",
            "bad_version",
            offset,
        )
    if n >= 4 and prefix[3] & _RESERVED_FLAGS:
        return FrameError(
            f"reserved_flags: frame at byte {offset} has flags 0x{prefix[3]:02x},"
            " bits 1-7 must be 0",
            "reserved_flags",
            offset,
        )
    if n >= 20 and not int.from_bytes(prefix[16:20], "big") and not prefix[3] & FLAG_END:
        return FrameError(
            f"empty_frame: frame at byte {offset} has a zero-length payload without END",
            "empty_frame",
            offset,
        )
    return None


def _truncated(offset: int, needed: int, available: int) -> FrameError:
    return FrameError(
        f"truncated: frame at byte {offset} needs {needed} bytes, only {available} follow",
        "truncated",
        offset,
    )


def decode(message: Buffer, max_frame_bytes: int) -> list[DecodedFrame]:
    """Every frame of one WebSocket message, payloads left in place.

    Raises :class:`FrameError` on broken framing; nothing of the message counts then.
    """
    view = _bytes_of(message)
    _check_range(max_frame_bytes, _U64, "max_frame_bytes")
    size = len(view)
    if not size:
        raise _truncated(0, HEADER_SIZE, 0)
    unpack = _HEADER.unpack_from
    frames: list[DecodedFrame] = []
    off = 0
    while off < size:
        if size - off < HEADER_SIZE:
            raise _prefix_error(view[off:], off) or _truncated(off, HEADER_SIZE, size - off)
        magic, version, flags, seq, pts_us, length, crc = unpack(view, off)
        if magic != MAGIC or version != VERSION or flags & _RESERVED_FLAGS or not length:
            error = _prefix_error(view[off : off + HEADER_SIZE], off)
            if error is not None:
                raise error
        start = off + HEADER_SIZE
        if length > size - start:
            raise _truncated(off, HEADER_SIZE + length, size - off)
        if length > max_frame_bytes:
            verdict = FRAME_TOO_LARGE
        elif _crc_update(_U32, view[start : start + length]) ^ _U32 == crc:
            verdict = FRAME_OK
        else:
            verdict = FRAME_BAD_CRC
        frames.append((seq, flags, pts_us, start, length, crc, verdict))
        off = start + length
    return frames


class StreamDecoder:
    """Incremental decoder for byte streams (HTTP bodies) split anywhere.

    Buffers at most one header plus ``max_frame_bytes``; a too-large frame's
    payload is skipped as it streams past, never buffered.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self._max = _check_range(max_frame_bytes, _U64, "max_frame_bytes")
        self._header = bytearray()
        # The frame being collected: (seq, flags, pts_us, length, crc), or None for a header.
        self._frame: tuple[int, int, int, int, int] | None = None
        self._buf = bytearray()
        self._skip = 0  # > 0: skipping that many more bytes of a too-large payload
        self._consumed = 0
        self._frame_offset = 0
        self._failed: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of the partial frame held waiting for the rest of it."""
        if self._frame is None:
            return len(self._header)
        if self._skip:
            return HEADER_SIZE
        return HEADER_SIZE + len(self._buf)

    @property
    def consumed(self) -> int:
        """Total bytes fed so far."""
        return self._consumed

    def feed(self, chunk: Buffer) -> list[tuple[int, int, int, bytes | None, int, int]]:
        """Frames completed by ``chunk``: (seq, flags, pts_us, payload, crc32c, verdict)."""
        view = _bytes_of(chunk)
        if self._failed is not None:
            raise self._failed
        self._consumed += len(view)
        out: list[tuple[int, int, int, bytes | None, int, int]] = []
        try:
            self._run(view, out)
        except FrameError as error:
            self._failed = error
            if not out:
                raise
        return out

    def finish(self) -> None:
        """Declare the end of the stream; raises FrameError("truncated") if a frame is partial."""
        if self._failed is not None:
            raise self._failed
        if self._frame is None:
            if not self._header:
                return
            needed = HEADER_SIZE
        else:
            needed = HEADER_SIZE + self._frame[3]
        self._failed = _truncated(self._frame_offset, needed, self._consumed - self._frame_offset)
        raise self._failed

    def _complete(self, length: int) -> None:
        self._frame = None
        self._frame_offset += HEADER_SIZE + length

    def _start(self, header: memoryview | bytes) -> tuple[int, int, int, int, int]:
        error = _prefix_error(header, self._frame_offset)
        if error is not None:
            raise error
        _, _, flags, seq, pts_us, length, crc = _HEADER.unpack_from(header)
        return seq, flags, pts_us, length, crc

    def _run(
        self, chunk: memoryview, out: list[tuple[int, int, int, bytes | None, int, int]]
    ) -> None:
        pos = 0
        size = len(chunk)
        while pos < size:
            frame = self._frame
            if frame is None:
                if not self._header and size - pos >= HEADER_SIZE:
                    frame = self._start(chunk[pos : pos + HEADER_SIZE])
                    pos += HEADER_SIZE
                else:
                    take = min(HEADER_SIZE - len(self._header), size - pos)
                    self._header += chunk[pos : pos + take]
                    pos += take
                    if len(self._header) < HEADER_SIZE:
                        error = _prefix_error(bytes(self._header), self._frame_offset)
                        if error is not None:
                            raise error
                        continue
                    header = bytes(self._header)
                    self._header.clear()
                    frame = self._start(header)
                seq, flags, pts_us, length, crc = frame
                self._frame = frame
                if length > self._max:
                    self._skip = length
                elif size - pos >= length:
                    payload = chunk[pos : pos + length].tobytes()
                    pos += length
                    out.append((seq, flags, pts_us, payload, crc, _verdict(payload, crc)))
                    self._complete(length)
                else:
                    # Collected below as chunks arrive, growing with the data.
                    self._buf = bytearray()
            elif self._skip:
                take = min(self._skip, size - pos)
                pos += take
                self._skip -= take
                if not self._skip:
                    seq, flags, pts_us, length, crc = frame
                    out.append((seq, flags, pts_us, None, crc, FRAME_TOO_LARGE))
                    self._complete(length)
            else:
                seq, flags, pts_us, length, crc = frame
                take = min(length - len(self._buf), size - pos)
                self._buf += chunk[pos : pos + take]
                pos += take
                if len(self._buf) == length:
                    payload = bytes(self._buf)
                    self._buf = bytearray()
                    out.append((seq, flags, pts_us, payload, crc, _verdict(payload, crc)))
                    self._complete(length)

    def __repr__(self) -> str:
        return f"StreamDecoder(consumed={self._consumed}, buffered={self.buffered})"


def _verdict(payload: bytes, crc: int) -> int:
    ok = _crc_update(_U32, memoryview(payload)) ^ _U32 == crc
    return FRAME_OK if ok else FRAME_BAD_CRC


# -- the credit ledger --------------------------------------------------------------


class LedgerStats:
    """A snapshot of the ledger's counters."""

    __slots__ = (
        "admitted_bytes",
        "inflight_bytes",
        "pressure",
        "pressure_events",
        "refused",
        "streams",
    )

    inflight_bytes: int
    streams: int
    pressure: bool
    pressure_events: int
    admitted_bytes: int
    refused: int

    def __init__(
        self,
        inflight_bytes: int,
        streams: int,
        pressure: bool,
        pressure_events: int,
        admitted_bytes: int,
        refused: int,
    ) -> None:
        values = (inflight_bytes, streams, pressure, pressure_events, admitted_bytes, refused)
        for name, value in zip(self._fields(), values, strict=True):
            object.__setattr__(self, name, value)

    @staticmethod
    def _fields() -> tuple[str, ...]:
        return (
            "inflight_bytes",
            "streams",
            "pressure",
            "pressure_events",
            "admitted_bytes",
            "refused",
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"'LedgerStats' object attribute '{name}' is read-only")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LedgerStats):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"LedgerStats(inflight_bytes={self.inflight_bytes}, streams={self.streams},"
            f" pressure={self.pressure}, pressure_events={self.pressure_events},"
            f" admitted_bytes={self.admitted_bytes}, refused={self.refused})"
        )


class Ledger:
    """Credit accounting for every open stream of this process (see ``_native.Ledger``)."""

    def __init__(
        self, window_bytes: int, global_high: int, global_low: int, global_limit: int
    ) -> None:
        for name, value in (
            ("window_bytes", window_bytes),
            ("global_high", global_high),
            ("global_low", global_low),
            ("global_limit", global_limit),
        ):
            _check_range(value, _U64, name)
        if global_low > global_high:
            raise ValueError(
                f"global_low ({global_low}) must not exceed global_high ({global_high})"
            )
        if global_high > global_limit:
            raise ValueError(
                f"global_high ({global_high}) must not exceed global_limit ({global_limit})"
            )
        self._window = window_bytes
        self._high = global_high
        self._low = global_low
        self._limit = global_limit
        # handle -> [inflight, advertised]
        self._streams: dict[int, list[int]] = {}
        self._next = 1
        self._inflight = 0
        self._pressure = False
        self._pressure_events = 0
        self._admitted = 0
        self._refused = 0

    def _stream(self, handle: int) -> list[int]:
        _check_range(handle, _U64, "handle")
        stream = self._streams.get(handle)
        if stream is None:
            raise KeyError(f"unknown ledger handle {handle}: never opened or already closed")
        return stream

    def open(self) -> int:
        """Register a stream; returns its handle with the full window advertised."""
        handle = self._next
        self._next += 1
        self._streams[handle] = [0, self._window]
        return handle

    def close(self, handle: int) -> bool:
        """Forget a stream, releasing whatever it still had in flight."""
        stream = self._stream(handle)
        del self._streams[handle]
        return self._uncount(stream[0])

    def admit(self, handle: int, nbytes: int) -> bool:
        """Count ``nbytes`` in flight for the stream if its credit allows."""
        stream = self._stream(handle)
        _check_range(nbytes, _U64, "nbytes")
        if stream[0] + nbytes > stream[1] or self._inflight + nbytes > self._limit:
            self._refused += 1
            return False
        stream[0] += nbytes
        self._inflight += nbytes
        self._admitted += nbytes
        if not self._pressure and self._inflight >= self._high:
            self._pressure = True
            self._pressure_events += 1
        return True

    def release(self, handle: int, nbytes: int) -> bool:
        """Uncount acked bytes; True when this release ended a pressure period."""
        stream = self._stream(handle)
        _check_range(nbytes, _U64, "nbytes")
        freed = min(nbytes, stream[0])
        stream[0] -= freed
        return self._uncount(freed)

    def _uncount(self, freed: int) -> bool:
        self._inflight -= freed
        if self._pressure and self._inflight <= self._low:
            self._pressure = False
            return True
        return False

    def window(self, handle: int) -> int:
        """The window to advertise now, recorded as the stream's credit."""
        stream = self._stream(handle)
        stream[1] = stream[0] if self._pressure else self._window
        return stream[1]

    def inflight(self, handle: int) -> int:
        """The stream's bytes in flight."""
        return self._stream(handle)[0]

    def stats(self) -> LedgerStats:
        return LedgerStats(
            self._inflight,
            len(self._streams),
            self._pressure,
            self._pressure_events,
            self._admitted,
            self._refused,
        )
