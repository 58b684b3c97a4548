"""What kind of audio a file holds, for ``voxgate stream``: codec, rate and where the samples are.

Raw telephony files are known by their suffix (``.ulaw``/``.mulaw``/``.ul``/``.mu``:
8 kHz mono mu-law; ``.alaw``/``.al``: A-law). A WAV file is read for its ``fmt ``
and ``data`` chunks: format tag 1 with 16 bits is ``pcm_s16le``, tag 7 ``mulaw``,
tag 6 ``alaw`` (also inside WAVE_FORMAT_EXTENSIBLE); only the ``data`` chunk is
streamed. Any other file is streamed as it is, with no codec claimed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from voxgate.errors import VoxgateError

_RAW_SUFFIXES = {
    ".ulaw": "mulaw",
    ".mulaw": "mulaw",
    ".ul": "mulaw",
    ".mu": "mulaw",
    ".alaw": "alaw",
    ".al": "alaw",
}
_WAV_TAGS = {1: "pcm_s16le", 6: "alaw", 7: "mulaw"}
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# Chunks read before giving up on finding ``data`` (a WAV has a handful).
_MAX_CHUNKS = 64
# Frames of 20 ms: what telephony and the browser SDK send.
FRAME_MS = 20


class AudioFileError(VoxgateError, ValueError):
    """A file that claims to be WAV but cannot be read as one."""


@dataclass(frozen=True, slots=True)
class AudioFile:
    """Where a file's audio is and what it is; ``codec`` None for bytes of unknown kind."""

    codec: str | None
    sample_rate: int | None
    channels: int | None
    offset: int  # first byte of the audio in the file
    length: int  # bytes of audio

    @property
    def bytes_per_second(self) -> float | None:
        if self.codec is None or not self.sample_rate or not self.channels:
            return None
        width = 2 if self.codec == "pcm_s16le" else 1
        return float(self.sample_rate * self.channels * width)

    @property
    def frame_bytes(self) -> int | None:
        """Bytes of ``FRAME_MS`` of audio, whole samples; None when the kind is unknown."""
        rate = self.bytes_per_second
        if rate is None:
            return None
        width = (2 if self.codec == "pcm_s16le" else 1) * (self.channels or 1)
        return max(int(rate * FRAME_MS / 1000) // width * width, width)


def probe(path: str | Path) -> AudioFile:
    """What ``path`` holds; raises :class:`AudioFileError` for a damaged WAV file and
    ``OSError`` when it cannot be read."""
    path = Path(path)
    size = path.stat().st_size
    codec = _RAW_SUFFIXES.get(path.suffix.lower())
    if codec is not None:
        return AudioFile(codec, 8000, 1, 0, size)
    with path.open("rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return AudioFile(None, None, None, 0, size)
        fmt: bytes | None = None
        offset = 12
        for _ in range(_MAX_CHUNKS):
            handle.seek(offset)
            header = handle.read(8)
            if len(header) < 8:
                break
            name, length = struct.unpack("<4sI", header)
            if name == b"fmt ":
                fmt = handle.read(min(length, 64))
            elif name == b"data":
                if fmt is None:
                    raise AudioFileError(f"{path}: WAV data chunk before its fmt chunk")
                found = _wav(fmt, offset + 8, min(length, size - offset - 8), path)
                # Some other WAV (float, 24-bit, ...): the file's bytes as they are.
                return found or AudioFile(None, None, None, 0, size)
            offset += 8 + length + (length & 1)
    raise AudioFileError(f"{path}: WAV file without a data chunk")


def _wav(fmt: bytes, offset: int, length: int, path: Path) -> AudioFile | None:
    if len(fmt) < 16:
        raise AudioFileError(f"{path}: WAV fmt chunk of {len(fmt)} bytes")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first bytes of the SubFormat GUID
    codec = _WAV_TAGS.get(tag)
    if codec is None or (codec == "pcm_s16le" and bits != 16) or channels < 1 or rate < 1:
        return None
    return AudioFile(codec, rate, channels, offset, length)
