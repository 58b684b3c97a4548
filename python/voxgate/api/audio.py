"""What a session holds: the missing report and the audio download (PROTOCOL section 2.3)."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from voxgate import g711
from voxgate.api.auth import require_api_key
from voxgate.api.problems import problem_responses
from voxgate.api.sessions import owned_session, runtime_of
from voxgate.errors import ApiError
from voxgate.retention.archive import ArchiveError, ArchiveReader
from voxgate.store.base import Session, Store, Tier

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$")
# Past any byte offset a response can have: longer numbers in a Range are read as this
# (Python refuses to convert numbers of more than 4300 digits at all).
_HUGE = 1 << 63


def _offset(digits: str) -> int:
    """A Range number as an int, every number of more than 18 digits as :data:`_HUGE`."""
    return int(digits) if len(digits) <= 18 else _HUGE


WAV_HEADER_BYTES = 44


class MissingReport(msgspec.Struct):
    next_seq: int
    missing: list[list[int]]
    frames: int
    bytes: int
    ended: bool
    complete: bool


@get(
    "/v1/sessions/{session_id:str}/missing",
    guards=[require_api_key],
    tags=["sessions"],
    responses=problem_responses(401, 404, 410, 503),
)
async def missing(request: Request[Any, Any, Any], session_id: FromPath[str]) -> MissingReport:
    """The same truth as the stream's hello: what a resuming client must resend."""
    runtime = runtime_of(request)
    session = await owned_session(request, session_id)
    gaps = await runtime.store.missing(session_id)
    return MissingReport(
        next_seq=session.next_seq,
        missing=gaps,
        frames=session.frames,
        bytes=session.bytes,
        ended=session.end_seq is not None,
        complete=session.state == "complete",
    )


def wav_header(data_bytes: int, sample_rate: int, channels: int) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit little-endian PCM."""
    block_align = channels * 2
    data_bytes = min(data_bytes, 0xFFFFFFFF - 36)
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        16,
        b"data",
        data_bytes,
    )


def parse_range(value: str | None, total: int) -> tuple[int, int] | None:
    """The inclusive byte range a single-range ``Range`` header asks for, or None for all.

    Raises ApiError 416 when the range cannot be satisfied.
    """
    if not value:
        return None
    match = _RANGE.match(value.strip())
    if match is None:  # several ranges or another unit: RFC 9110 lets us send it all
        return None
    first_s, last_s = match.groups()
    if not first_s and not last_s:
        return None
    if not first_s:
        first, last = max(total - _offset(last_s), 0), total - 1
    else:
        first = _offset(first_s)
        last = min(_offset(last_s), total - 1) if last_s else total - 1
    if first >= total or last < first:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"range {value} outside 0-{total - 1}",
            headers={"Content-Range": f"bytes */{total}"},
        )
    return first, last


async def _payload_bytes(
    store: Store, session_id: str, runs: list[tuple[int, int, int]], first: int, last: int
) -> AsyncIterator[bytes]:
    """Bytes ``first..last`` (inclusive) of the payloads of ``runs`` (a snapshot of
    :meth:`Store.payload_runs`) concatenated in seq order. Frames stored after the
    snapshot (a resend filling a gap) are left out: the body keeps the size it was
    given."""
    position = 0
    wanted: list[tuple[int, int]] = []  # (first_seq, last_seq) of the runs the bytes touch
    skip = 0
    for run_first, run_last, nbytes in runs:
        end = position + nbytes
        if end > first and nbytes:
            if not wanted:
                skip = first - position
            wanted.append((run_first, run_last))
        position = end
        if position > last:
            break
    if not wanted:
        return
    remaining = last - first + 1
    at = 0  # the run of ``wanted`` the next payload should lie in
    async for seq, payload in store.read_payloads(session_id, wanted[0][0], wanted[-1][1]):
        while at < len(wanted) and seq > wanted[at][1]:
            at += 1
        if at == len(wanted):
            break
        if seq < wanted[at][0]:
            continue  # stored after the snapshot, in a gap it had
        if skip >= len(payload):
            skip -= len(payload)
            continue
        piece = payload[skip : skip + remaining]
        skip = 0
        remaining -= len(piece)
        if piece:
            yield piece
        if remaining <= 0:
            break


def refuse_cold(session: Session) -> None:
    """410 for a cold session: its audio is gone for good."""
    if session.tier is Tier.COLD:
        raise ApiError(
            410,
            "audio_expired",
            f"session {session.id} is in the cold tier: its audio expired under the retention"
            " policy; its metadata and transcripts remain",
        )


class ArchivedAudio:
    """``audio.bin`` of a warm session's archive, read a block at a time off the event loop."""

    def __init__(self, reader: ArchiveReader, offset: int, size: int) -> None:
        self._reader = reader
        self._offset = offset
        self.size = size

    @classmethod
    async def open(cls, runtime: Runtime, session_id: str) -> ArchivedAudio:
        """Raises :class:`ArchiveError` when the session has no readable archive."""
        record = await runtime.store.archive_record(session_id)
        if record is None:
            raise ArchiveError(f"session {session_id} is warm but has no archive record")
        path = runtime.retention.archive_file(record)

        def open_reader() -> ArchivedAudio:
            reader = ArchiveReader(path)
            try:
                offset, size = reader.audio_span()
            except BaseException:
                reader.close()
                raise
            return cls(reader, offset, size)

        return await asyncio.to_thread(open_reader)

    async def read(self, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes ``first..last`` (inclusive) of the audio; closes the archive when done."""
        try:
            pieces = self._reader.read(self._offset + first, last - first + 1)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                yield piece
        finally:
            self._reader.close()


@get(
    "/v1/sessions/{session_id:str}/audio",
    guards=[require_api_key],
    tags=["sessions"],
    responses=problem_responses(400, 401, 404, 409, 410, 416, 422, 503),
)
async def audio(
    request: Request[Any, Any, Any],
    session_id: FromPath[str],
    format: FromQuery[Literal["raw", "wav"] | None] = None,
    encoding: FromQuery[Literal["pcm_s16le"] | None] = None,
    allow_gaps: FromQuery[bool] = False,
) -> Response[Any]:
    """Stored payloads in seq order, as raw bytes or WAV; honours a single ``Range``.

    ``format=wav`` serves ``pcm_s16le`` sessions as PCM WAV and ``mulaw`` / ``alaw``
    sessions as WAV with format tag 7 / 6; ``encoding=pcm_s16le`` decodes G.711
    sessions to 16-bit PCM (raw or WAV). Other codecs: 422.
    """
    runtime = runtime_of(request)
    store = runtime.store
    session = await owned_session(request, session_id)
    if format not in (None, "raw", "wav"):
        raise ApiError(422, "bad_format", "format must be raw or wav")
    codec = session.codec or ""
    decode = encoding == "pcm_s16le" and codec in g711.FORMAT_TAGS
    if encoding == "pcm_s16le" and not decode and codec != "pcm_s16le":
        raise ApiError(
            422, "cannot_decode", f"encoding=pcm_s16le decodes mulaw and alaw sessions, not {codec}"
        )
    refuse_cold(session)
    if not allow_gaps:
        gaps = await store.missing(session_id)
        if gaps:
            raise ApiError(
                409,
                "gaps",
                "the session has gaps; pass allow_gaps=true to download anyway",
                extra={"missing": gaps},
            )
    archived: ArchivedAudio | None = None
    runs: list[tuple[int, int, int]] = []
    if session.tier is Tier.WARM:
        archived = await ArchivedAudio.open(runtime, session_id)
        data_total = archived.size
    else:
        # One snapshot of the stored runs sizes the body, even while frames keep arriving.
        runs = await store.payload_runs(session_id)
        data_total = sum(nbytes for _, _, nbytes in runs)
    # Decoded G.711 is two output bytes per stored byte; the body maps ranges back.
    scale = 2 if decode else 1
    header = b""
    media_type = "application/octet-stream"
    if format == "wav":
        channels = session.channels or 1
        if codec == "pcm_s16le" or decode:
            rate = session.sample_rate or (8000 if decode else 16000)
            header = wav_header(scale * data_total, rate, channels)
        elif codec in g711.FORMAT_TAGS:
            header = g711.wav_header(codec, data_total, session.sample_rate or 8000, channels)
        else:
            raise ApiError(422, "not_pcm", "format=wav needs a pcm_s16le, mulaw or alaw session")
        media_type = "audio/wav"
    data_total *= scale
    total = len(header) + data_total
    wanted = parse_range(request.headers.get("range"), total) if total else None
    first, last = wanted if wanted is not None else (0, total - 1)

    async def stored(data_first: int, data_last: int) -> AsyncIterator[bytes]:
        if archived is not None:
            async for piece in archived.read(data_first, data_last):
                yield piece
        elif data_last >= data_first:
            async for piece in _payload_bytes(store, session_id, runs, data_first, data_last):
                yield piece

    async def body() -> AsyncIterator[bytes]:
        if first < len(header):
            yield header[first : last + 1]
        data_first = max(first - len(header), 0)
        data_last = last - len(header)
        if data_last < data_first:
            return
        if not decode:
            async for piece in stored(data_first, data_last):
                yield piece
            return
        # Each stored byte is one sample, two output bytes: decode the stored bytes the
        # range touches, then trim the half sample at either end.
        skip = data_first % 2
        remaining = data_last - data_first + 1
        async for piece in stored(data_first // 2, data_last // 2):
            pcm = g711.decode(codec, piece)[skip : skip + remaining]
            skip = 0
            remaining -= len(pcm)
            if pcm:
                yield pcm

    headers = {"Accept-Ranges": "bytes", "Content-Length": str(max(last - first + 1, 0))}
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{total}"
    return Stream(body(), status_code=status, media_type=media_type, headers=headers)
