"""Session archives: one seekable, verifiable ``.tar.zst`` file per session.

An archive is a plain tar (``tar --zstd -xf`` unpacks it) of three members:

    manifest.json   format and version, the session, counts, CRCs, the gaps
    frames.jsonl    one line per stored frame: ``[seq, flags, pts_us, length, crc32c]``
    audio.bin       every payload, concatenated in seq order

The tar stream is cut into blocks of ``BLOCK_BYTES``, each compressed as its
own zstd frame with a content checksum, followed by a skippable frame holding
the seek table of the zstd seekable format. Tools that do not know the table
skip it; :class:`ArchiveReader` uses it to decompress only the blocks a byte
range of ``audio.bin`` covers.

``manifest.json`` holds ``payload_crc32c``, the CRC-32C of ``audio.bin``, and,
for complete sessions, ``stream_crc32c`` (PROTOCOL section 3), which then
equals it. :func:`verify_archive` checks every frame's CRC, those two, the zstd
checksums and the seek table.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import struct
import tarfile
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import msgspec
import zstandard

from voxgate.core import native
from voxgate.errors import VoxgateError
from voxgate.store.base import FrameEntry, Session, Store

crc32c, crc32c_combine = native.crc32c, native.crc32c_combine

FORMAT = "voxgate-session-archive"
VERSION = 1
SUFFIX = ".tar.zst"
MEDIA_TYPE = "application/zstd"
MANIFEST = "manifest.json"
FRAMES = "frames.jsonl"
AUDIO = "audio.bin"
FRAME_FIELDS = ("seq", "flags", "pts_us", "length", "crc32c")

# Uncompressed tar bytes per zstd frame: a range read decompresses at most this much
# beyond what it returns; audio hardly compresses, so larger blocks would gain little.
BLOCK_BYTES = 256 * 1024
LEVEL = 3
_TAR_BLOCK = 512
_CACHED_BLOCKS = 4
_SPANS_KEPT = 1024
_SPANS: dict[tuple[str, int, int, int], tuple[int, int]] = {}
_SKIPPABLE_MAGIC = 0x184D2A5E
_SEEKABLE_MAGIC = 0x8F92EAB1
_FOOTER = struct.Struct("<IBI")  # number of frames, descriptor, seekable magic
_ENTRY = struct.Struct("<II")  # compressed size, decompressed size


class ArchiveError(VoxgateError):
    """An archive is missing, unreadable, or does not hold what it should."""


class Manifest(msgspec.Struct, kw_only=True):
    """``manifest.json``: what the archive holds and how to check it."""

    format: str
    version: int
    created_at: datetime
    session: dict[str, Any]  # the session as the API showed it when archived
    frames: int
    audio_bytes: int
    payload_crc32c: int
    stream_crc32c: int | None  # the session's, when complete; equals payload_crc32c then
    missing: list[list[int]]  # gaps below the highest stored seq
    frame_fields: list[str]
    members: list[str]


class ArchiveSummary(msgspec.Struct, kw_only=True):
    """What :func:`verify_archive` found in a sound archive."""

    manifest: Manifest
    bytes: int  # archive file size


# -- writing -----------------------------------------------------------------------


class ArchiveEncoder:
    """Turns tar bytes into independent zstd frames plus the seek table; no I/O."""

    def __init__(self, level: int = LEVEL) -> None:
        self._compressor = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
        self._buffer = bytearray()
        self._table: list[tuple[int, int]] = []

    @property
    def pending(self) -> int:
        """Bytes fed and not compressed yet."""
        return len(self._buffer)

    def feed(self, data: bytes | memoryview) -> bytes:
        """Take ``data``; return the compressed frames of every block now full."""
        self._buffer += data
        out = []
        while len(self._buffer) >= BLOCK_BYTES:
            out.append(self._frame(bytes(self._buffer[:BLOCK_BYTES])))
            del self._buffer[:BLOCK_BYTES]
        return b"".join(out)

    def finish(self) -> bytes:
        """The last frame and the seek table."""
        out = self._frame(bytes(self._buffer)) if self._buffer else b""
        self._buffer.clear()
        table = b"".join(_ENTRY.pack(c, d) for c, d in self._table)
        table += _FOOTER.pack(len(self._table), 0, _SEEKABLE_MAGIC)
        return out + struct.pack("<II", _SKIPPABLE_MAGIC, len(table)) + table

    def _frame(self, block: bytes) -> bytes:
        frame = self._compressor.compress(block)
        self._table.append((len(frame), len(block)))
        return frame


def _member_header(name: str, size: int, mtime: datetime) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime.timestamp())
    info.mode = 0o640
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padding(size: int) -> bytes:
    return bytes(-size % _TAR_BLOCK)


def gaps_of(index: Sequence[FrameEntry]) -> list[list[int]]:
    """Inclusive ``[first, last]`` runs of seqs missing below the highest indexed seq."""
    gaps = []
    expected = 0
    for entry in index:
        if entry.seq > expected:
            gaps.append([expected, entry.seq - 1])
        expected = entry.seq + 1
    return gaps


def payload_crc(index: Sequence[FrameEntry]) -> int:
    """CRC-32C of the indexed payloads concatenated in seq order, from their own CRCs."""
    crc = 0
    for entry in index:
        if entry.length:
            crc = crc32c_combine(crc, entry.crc32c, entry.length)
    return crc


def build_manifest(session: Session, index: Sequence[FrameEntry], now: datetime) -> Manifest:
    shown = msgspec.to_builtins(session)
    shown.pop("tier", None)
    return Manifest(
        format=FORMAT,
        version=VERSION,
        created_at=now,
        session=shown,
        frames=len(index),
        audio_bytes=sum(entry.length for entry in index),
        payload_crc32c=payload_crc(index),
        stream_crc32c=session.stream_crc32c if session.state == "complete" else None,
        missing=gaps_of(index),
        frame_fields=list(FRAME_FIELDS),
        members=[MANIFEST, FRAMES, AUDIO],
    )


async def indexed_payloads(
    store: Store, session_id: str, index: Sequence[FrameEntry]
) -> AsyncIterator[bytes]:
    """The payloads of exactly the frames in ``index``, in order, each checked against its CRC.

    Frames stored since the index was taken (into gaps) are skipped; a frame
    of the index that is no longer stored raises :class:`ArchiveError`.
    """
    if not index:
        return
    entries = iter(index)
    expected: FrameEntry | None = next(entries)
    async for seq, payload in store.read_payloads(session_id, index[0].seq, index[-1].seq):
        if expected is None:
            break
        if seq < expected.seq:
            continue
        if seq > expected.seq:
            break
        if len(payload) != expected.length or crc32c(payload) != expected.crc32c:
            raise ArchiveError(f"{session_id} seq {seq}: payload does not match its index entry")
        yield payload
        expected = next(entries, None)
    if expected is not None:
        raise ArchiveError(f"{session_id} seq {expected.seq} is no longer stored")


async def archive_stream(
    session: Session,
    index: Sequence[FrameEntry],
    payloads: AsyncIterator[bytes],
    *,
    now: datetime | None = None,
    level: int = LEVEL,
) -> AsyncIterator[bytes]:
    """The compressed archive of ``session`` as chunks, in bounded memory.

    ``payloads`` yields the payload of each ``index`` entry in order (see
    :func:`indexed_payloads`). Compression runs off the event loop.
    """
    now = now or datetime.now(UTC)
    manifest = msgspec.json.encode(build_manifest(session, index, now))
    lines = b"".join(
        b"[%d,%d,%d,%d,%d]\n" % (e.seq, e.flags, e.pts_us, e.length, e.crc32c) for e in index
    )
    audio_bytes = sum(entry.length for entry in index)
    encoder = ArchiveEncoder(level)
    head = _member_header(MANIFEST, len(manifest), now) + manifest + _padding(len(manifest))
    head += _member_header(FRAMES, len(lines), now) + lines + _padding(len(lines))
    head += _member_header(AUDIO, audio_bytes, now)
    pending = [head]
    size = len(head)
    written = 0
    async for payload in payloads:
        pending.append(payload)
        size += len(payload)
        written += len(payload)
        if size >= BLOCK_BYTES:
            # Whole blocks are compressed off the event loop, a few payloads at a time.
            data = b"".join(pending)
            pending.clear()
            size = 0
            if out := await asyncio.to_thread(encoder.feed, data):
                yield out
    if written != audio_bytes:
        raise ArchiveError(f"{session.id}: {written} payload bytes, the index says {audio_bytes}")
    pending.append(_padding(audio_bytes) + bytes(2 * _TAR_BLOCK))
    data = b"".join(pending)
    yield await asyncio.to_thread(lambda: encoder.feed(data) + encoder.finish())


def archive_relpath(session: Session) -> str:
    """Where under the archive dir a session's archive goes: by creation day, then id."""
    day = session.created_at.astimezone(UTC)
    return f"{day:%Y/%m/%d}/{session.id}{SUFFIX}"


# -- reading -----------------------------------------------------------------------


class ArchiveReader:
    """Random access to an archive's uncompressed tar stream through its seek table."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise ArchiveError(f"cannot open archive {self.path}: {exc}") from exc
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._frames = self._seek_table()
        except BaseException:
            self._file.close()
            raise
        self._decompressor = zstandard.ZstdDecompressor()
        self._cache: dict[int, bytes] = {}  # a few recently decompressed blocks

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _seek_table(self) -> list[tuple[int, int, int, int]]:
        """Every frame as (compressed offset, compressed size, tar offset, tar size)."""
        if self.size < 8 + _FOOTER.size:
            raise ArchiveError(f"{self.path} is too short to be an archive")
        self._file.seek(self.size - _FOOTER.size)
        count, descriptor, magic = _FOOTER.unpack(self._file.read(_FOOTER.size))
        entry_size = _ENTRY.size + (4 if descriptor & 0x80 else 0)
        table_size = count * entry_size + _FOOTER.size
        if magic != _SEEKABLE_MAGIC or table_size + 8 > self.size:
            raise ArchiveError(f"{self.path} has no seek table: not a voxgate archive")
        start = self.size - table_size - 8
        self._file.seek(start)
        skip_magic, skip_size = struct.unpack("<II", self._file.read(8))
        if skip_magic != _SKIPPABLE_MAGIC or skip_size != table_size:
            raise ArchiveError(f"{self.path}: damaged seek table")
        raw = self._file.read(table_size - _FOOTER.size)
        frames = []
        c_offset = d_offset = 0
        for i in range(count):
            c_size, d_size = _ENTRY.unpack_from(raw, i * entry_size)
            frames.append((c_offset, c_size, d_offset, d_size))
            c_offset += c_size
            d_offset += d_size
        if c_offset != start:
            raise ArchiveError(f"{self.path}: seek table does not match the file size")
        return frames

    @property
    def tar_size(self) -> int:
        if not self._frames:
            return 0
        last = self._frames[-1]
        return last[2] + last[3]

    def frame(self, i: int) -> bytes:
        """Frame ``i`` decompressed, its size and zstd checksum checked."""
        cached = self._cache.get(i)
        if cached is not None:
            return cached
        c_offset, c_size, _, d_size = self._frames[i]
        self._file.seek(c_offset)
        compressed = self._file.read(c_size)
        try:
            data = self._decompressor.decompress(compressed, max_output_size=d_size)
        except zstandard.ZstdError as exc:
            raise ArchiveError(f"{self.path}: block {i} is corrupt: {exc}") from exc
        if len(compressed) != c_size or len(data) != d_size:
            raise ArchiveError(f"{self.path}: block {i} has the wrong size")
        if len(self._cache) >= _CACHED_BLOCKS:
            del self._cache[next(iter(self._cache))]
        self._cache[i] = data
        return data

    def _frame_at(self, offset: int) -> int:
        lo, hi = 0, len(self._frames) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._frames[mid][2] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """Tar bytes ``offset .. offset + length - 1``, a block at a time."""
        if length <= 0:
            return
        if offset < 0 or offset + length > self.tar_size:
            raise ArchiveError(f"{self.path}: read past the end of the archive")
        i = self._frame_at(offset)
        while length > 0:
            data = self.frame(i)
            start = offset - self._frames[i][2]
            piece = data[start : start + length]
            yield piece
            offset += len(piece)
            length -= len(piece)
            i += 1

    def read_exact(self, offset: int, length: int) -> bytes:
        return b"".join(self.read(offset, length))

    def members(self) -> dict[str, tuple[int, int]]:
        """Each member's name -> (offset of its data in the tar stream, size)."""
        found: dict[str, tuple[int, int]] = {}
        offset = 0
        while offset + _TAR_BLOCK <= self.tar_size:
            block = self.read_exact(offset, _TAR_BLOCK)
            if block == bytes(_TAR_BLOCK):
                break
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
            except tarfile.TarError as exc:
                raise ArchiveError(f"{self.path}: bad tar header at {offset}: {exc}") from exc
            found[info.name] = (offset + _TAR_BLOCK, info.size)
            offset += _TAR_BLOCK + info.size + (-info.size % _TAR_BLOCK)
        return found

    def audio_span(self) -> tuple[int, int]:
        """Where ``audio.bin`` lies in the tar stream: (offset, size)."""
        # Archives never change in place: remember spans by file identity.
        stat = os.fstat(self._file.fileno())
        key = (str(self.path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        span = _SPANS.get(key)
        if span is None:
            span = self.members().get(AUDIO)
            if span is None:
                raise ArchiveError(f"{self.path} holds no {AUDIO}")
            if len(_SPANS) >= _SPANS_KEPT:
                del _SPANS[next(iter(_SPANS))]
            _SPANS[key] = span
        return span

    def manifest(self) -> Manifest:
        span = self.members().get(MANIFEST)
        if span is None:
            raise ArchiveError(f"{self.path} holds no {MANIFEST}")
        try:
            return msgspec.json.decode(self.read_exact(*span), type=Manifest)
        except msgspec.ValidationError as exc:
            raise ArchiveError(f"{self.path}: bad manifest: {exc}") from exc


class _TarStream(io.RawIOBase):
    """The whole uncompressed tar stream of an archive, as a sequential file."""

    def __init__(self, reader: ArchiveReader) -> None:
        self._reader = reader
        self._frame = 0
        self._data = b""
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._at >= len(self._data):
            if self._frame >= len(self._reader._frames):
                return 0
            self._data, self._at = self._reader.frame(self._frame), 0
            self._frame += 1
        n = min(len(view), len(self._data) - self._at)
        view[:n] = self._data[self._at : self._at + n]
        self._at += n
        return n


def verify_archive(
    path: str | Path,
    *,
    session_id: str | None = None,
    index: Sequence[FrameEntry] | None = None,
) -> ArchiveSummary:
    """Read the whole archive back and check it; raises :class:`ArchiveError` when unsound.

    Checks the seek table and every block's zstd checksum, the tar members and
    their order, the manifest, every frame's CRC-32C against ``frames.jsonl``,
    ``payload_crc32c`` and ``stream_crc32c``. With ``session_id`` and ``index``,
    the archive must be of that session and hold exactly those frames.
    """
    with ArchiveReader(path) as reader:
        raw = io.BufferedReader(_TarStream(reader), buffer_size=BLOCK_BYTES)
        try:
            with tarfile.open(fileobj=raw, mode="r|") as tar:
                return _verify_members(reader, tar, session_id, index)
        except tarfile.TarError as exc:
            raise ArchiveError(f"{path}: bad tar stream: {exc}") from exc


def _verify_members(
    reader: ArchiveReader,
    tar: tarfile.TarFile,
    session_id: str | None,
    index: Sequence[FrameEntry] | None,
) -> ArchiveSummary:
    path = reader.path
    members = iter(tar)

    def member(name: str) -> tuple[tarfile.TarInfo, IO[bytes]]:
        info = next(members, None)
        if info is None or info.name != name or not info.isfile():
            raise ArchiveError(f"{path}: expected member {name}, found {info and info.name}")
        stream = tar.extractfile(info)
        assert stream is not None
        return info, stream

    _, stream = member(MANIFEST)
    try:
        manifest = msgspec.json.decode(stream.read(), type=Manifest)
    except msgspec.ValidationError as exc:
        raise ArchiveError(f"{path}: bad manifest: {exc}") from exc
    if manifest.format != FORMAT or manifest.version != VERSION:
        raise ArchiveError(f"{path}: not a {FORMAT} version {VERSION}")
    if session_id is not None and manifest.session.get("id") != session_id:
        raise ArchiveError(f"{path} is the archive of {manifest.session.get('id')}")

    _, stream = member(FRAMES)
    entries: list[tuple[int, int, int, int, int]] = []
    decoder = msgspec.json.Decoder(tuple[int, int, int, int, int])
    try:
        for line in stream:
            entries.append(decoder.decode(line))
    except msgspec.ValidationError as exc:
        raise ArchiveError(f"{path}: bad line in {FRAMES}: {exc}") from exc
    if len(entries) != manifest.frames:
        raise ArchiveError(f"{path}: {len(entries)} frames listed, manifest says {manifest.frames}")
    if any(b[0] <= a[0] for a, b in itertools.pairwise(entries)):
        raise ArchiveError(f"{path}: {FRAMES} is not in strictly increasing seq order")
    if index is not None and [tuple(e) for e in entries] != [
        (e.seq, e.flags, e.pts_us, e.length, e.crc32c) for e in index
    ]:
        raise ArchiveError(f"{path}: frames differ from the store's index")

    info, stream = member(AUDIO)
    if info.size != manifest.audio_bytes or info.size != sum(e[3] for e in entries):
        raise ArchiveError(
            f"{path}: {AUDIO} has {info.size} bytes, expected {manifest.audio_bytes}"
        )
    total = 0
    for seq, _, _, length, crc in entries:
        payload = stream.read(length)
        if len(payload) != length:
            raise ArchiveError(f"{path}: {AUDIO} ends inside frame {seq}")
        if crc32c(payload) != crc:
            raise ArchiveError(f"{path}: frame {seq} fails its CRC-32C")
        if length:
            total = crc32c_combine(total, crc, length)
    if total != manifest.payload_crc32c:
        raise ArchiveError(
            f"{path}: payload CRC-32C {total:#010x} != {manifest.payload_crc32c:#010x}"
        )
    if manifest.stream_crc32c is not None and manifest.stream_crc32c != total:
        raise ArchiveError(
            f"{path}: stream CRC-32C {manifest.stream_crc32c:#010x} != {total:#010x}"
        )
    if gaps_of([FrameEntry(e[0], 0, 0, 0, 0) for e in entries]) != manifest.missing:
        raise ArchiveError(f"{path}: the manifest's gaps do not match {FRAMES}")
    if next(members, None) is not None:
        raise ArchiveError(f"{path}: unexpected member after {AUDIO}")
    return ArchiveSummary(manifest=manifest, bytes=reader.size)
