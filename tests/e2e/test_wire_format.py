"""The frame layout the end-to-end tests build on is PROTOCOL section 1, byte for byte."""

from __future__ import annotations

import struct

from e2e.wire import HEADER, raw_frame
from voxgate._native import crc32c, encode_frame, encode_header


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283


def test_encode_frame_matches_the_protocol_table() -> None:
    payload = b"\x01\x02hello audio"
    encoded = encode_frame(0x01020304, payload, pts_us=0x0102030405060708, end=True)
    assert len(encoded) == 24 + len(payload)
    assert encoded[0:2] == b"VF"
    assert encoded[2] == 1
    assert encoded[3] == 0x01
    assert struct.unpack(">I", encoded[4:8])[0] == 0x01020304
    assert struct.unpack(">Q", encoded[8:16])[0] == 0x0102030405060708
    assert struct.unpack(">I", encoded[16:20])[0] == len(payload)
    assert struct.unpack(">I", encoded[20:24])[0] == crc32c(payload)
    assert encoded[24:] == payload
    assert encoded == raw_frame(0x01020304, payload, flags=1, pts_us=0x0102030405060708)


def test_encode_frame_without_end_has_zero_flags() -> None:
    encoded = encode_frame(7, b"abc")
    assert HEADER.unpack(encoded[:24]) == (b"VF", 1, 0, 7, 0, 3, crc32c(b"abc"))


def test_encode_header_writes_fields_unchecked() -> None:
    header = encode_header(5, 1000, 0xDEADBEEF, pts_us=9, flags=0x80)
    assert HEADER.unpack(header) == (b"VF", 1, 0x80, 5, 9, 1000, 0xDEADBEEF)
