"""G.711 telephony audio (ITU-T G.711 mu-law and A-law): decoding to 16-bit PCM and WAV headers.

Python's ``audioop`` is gone since 3.13, so the expansion is done here with two
256-entry translation tables per law (low and high byte of each 16-bit sample):
``bytes.translate`` runs in C, so decoding costs two passes over the input
whatever its length. Each input byte is one sample, so any byte range of a
G.711 stream decodes on its own (what ranged downloads rely on).
"""

from __future__ import annotations

import struct
from typing import Final

#: WAVE format tags (RFC 2361): A-law and mu-law.
WAVE_FORMAT_ALAW: Final = 6
WAVE_FORMAT_MULAW: Final = 7
#: The codecs this module decodes, with their WAVE format tag.
FORMAT_TAGS: Final[dict[str, int]] = {"alaw": WAVE_FORMAT_ALAW, "mulaw": WAVE_FORMAT_MULAW}
#: Bytes of the header :func:`wav_header` writes: RIFF, fmt (18), fact and data headers.
WAV_HEADER_BYTES: Final = 58

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def ulaw_to_linear(code: int) -> int:
    """The 16-bit sample a mu-law byte stands for (G.711 table 2a)."""
    code = ~code & 0xFF
    magnitude = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code >> 4) & 0x07)
    magnitude -= _ULAW_BIAS
    return -magnitude if code & 0x80 else magnitude


def alaw_to_linear(code: int) -> int:
    """The 16-bit sample an A-law byte stands for (G.711 table 1a)."""
    code ^= 0x55
    magnitude = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


def linear_to_ulaw(sample: int) -> int:
    """The mu-law byte for a 16-bit sample (clipped to G.711's range)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sign else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def linear_to_alaw(sample: int) -> int:
    """The A-law byte for a 16-bit sample."""
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(sample if sign else -sample - 1, 0x7FFF) >> 3
    if magnitude < 32:
        code = magnitude >> 1
    else:
        segment = magnitude.bit_length() - 5  # 1..7
        code = (segment << 4) | ((magnitude >> segment) & 0x0F)
    return (sign | code) ^ 0x55


def _tables(expand: dict[int, int]) -> tuple[bytes, bytes]:
    low = bytes(expand[code] & 0xFF for code in range(256))
    high = bytes((expand[code] >> 8) & 0xFF for code in range(256))
    return low, high


_TABLES: Final[dict[str, tuple[bytes, bytes]]] = {
    "mulaw": _tables({code: ulaw_to_linear(code) for code in range(256)}),
    "alaw": _tables({code: alaw_to_linear(code) for code in range(256)}),
}


def decode(codec: str, data: bytes) -> bytes:
    """``data`` (G.711 bytes of ``codec``, "mulaw" or "alaw") as 16-bit little-endian PCM.

    Raises KeyError for another codec.
    """
    low, high = _TABLES[codec]
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(low)
    out[1::2] = data.translate(high)
    return bytes(out)


def wav_header(codec: str, data_bytes: int, sample_rate: int, channels: int) -> bytes:
    """A 58-byte RIFF/WAVE header for ``data_bytes`` of G.711 ``codec`` audio.

    A non-PCM WAVE file carries an 18-byte ``fmt`` chunk (with ``cbSize``) and a
    ``fact`` chunk with the sample count per channel. Raises KeyError for a
    codec other than "mulaw" or "alaw".
    """
    tag = FORMAT_TAGS[codec]
    data_bytes = min(data_bytes, 0xFFFFFFFF - (WAV_HEADER_BYTES - 8))
    return struct.pack(
        "<4sI4s4sIHHIIHHH4sII4sI",
        b"RIFF",
        WAV_HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        18,
        tag,
        channels,
        sample_rate,
        sample_rate * channels,  # one byte per sample
        channels,  # block align
        8,  # bits per sample
        0,  # cbSize: no extension
        b"fact",
        4,
        data_bytes // max(channels, 1),
        b"data",
        data_bytes,
    )
