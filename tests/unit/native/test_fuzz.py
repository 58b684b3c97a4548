"""Hypothesis against the Python-facing decoders, with PROTOCOL section 1 written out in Python
as the oracle: damaged and arbitrary input decodes exactly as the reference says, raises
only FrameError, and never takes the interpreter down."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voxgate._native import (
    FRAME_BAD_CRC,
    FRAME_OK,
    FRAME_TOO_LARGE,
    FrameError,
    StreamDecoder,
    crc32c,
    decode,
    encode_frame,
)
from voxgate.wire import HEADER_FORMAT

HEADER = struct.Struct(HEADER_FORMAT)

# (seq, flags, pts_us, payload or None, crc, verdict) per frame, or the error (kind, offset).
Frames = list[tuple[int, int, int, bytes | None, int, int]]
Outcome = tuple[Frames, tuple[str, int] | None]


def reference(data: bytes, max_frame: int, *, stream: bool = False) -> Outcome:
    """PROTOCOL section 1, checks in its order; ``stream``: an empty input is fine."""
    frames: Frames = []
    offset = 0
    if not data and not stream:
        return frames, ("truncated", 0)
    while offset < len(data):
        head = data[offset : offset + 24]
        if len(head) >= 2 and head[:2] != b"VF":
            return frames, ("bad_magic", offset)
        if len(head) >= 3 and head[2] != 1:
            return frames, ("bad_version", offset)
        if len(head) >= 4 and head[3] & 0xFE:
            return frames, ("reserved_flags", offset)
        if len(head) >= 20 and head[16:20] == b"\0\0\0\0" and not head[3] & 1:
            return frames, ("empty_frame", offset)
        if len(head) < 24:
            return frames, ("truncated", offset)
        _, _, flags, seq, pts, length, crc = HEADER.unpack(head)
        end = offset + 24 + length
        if end > len(data):
            return frames, ("truncated", offset)
        payload = data[offset + 24 : end]
        if length > max_frame:
            frames.append((seq, flags, pts, None, crc, FRAME_TOO_LARGE))
        else:
            verdict = FRAME_OK if crc32c(payload) == crc else FRAME_BAD_CRC
            frames.append((seq, flags, pts, payload, crc, verdict))
        offset = end
    return frames, None


def one_shot(data: bytes | bytearray | memoryview, max_frame: int) -> Outcome:
    raw = bytes(data)
    try:
        decoded = decode(data, max_frame)
    except FrameError as exc:
        return [], (exc.kind, exc.offset)
    frames: Frames = []
    for seq, flags, pts, offset, length, crc, verdict in decoded:
        payload = None if verdict == FRAME_TOO_LARGE else raw[offset : offset + length]
        frames.append((seq, flags, pts, payload, crc, verdict))
    return frames, None


def streamed(data: bytes, max_frame: int, cuts: list[int]) -> Outcome:
    decoder = StreamDecoder(max_frame)
    points = sorted(min(c, len(data)) for c in cuts)
    frames: Frames = []
    try:
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            for seq, flags, pts, payload, crc, verdict in decoder.feed(memoryview(data)[a:b]):
                frames.append((seq, flags, pts, payload, crc, verdict))
        decoder.finish()
    except FrameError as exc:
        return frames, (exc.kind, exc.offset)
    return frames, None


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """Valid frames damaged the way networks and hostile clients do, or arbitrary bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=400))
    specs = draw(
        st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=200), st.booleans()),
            max_size=6,
        )
    )
    data = bytearray()
    for seq, payload, end in specs:
        data += encode_frame(seq, payload, pts_us=seq, end=end or not payload)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["set", "insert", "remove", "length", "truncate"]))
        if kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=30))
        elif kind == "remove":
            del data[at : at + draw(st.integers(1, 30))]
        elif kind == "length" and len(data) >= 24:
            start = draw(st.integers(0, len(data) - 24))
            value = draw(st.sampled_from([0, 1, 23, 2**31, 2**32 - 1, 2**32 - 24]))
            data[start + 16 : start + 20] = value.to_bytes(4, "big")
        else:
            del data[at:]
    return bytes(data)


max_frames = st.sampled_from([0, 1, 64, 200, 2**32 - 1, 2**64 - 1])
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=damaged(), max_frame=max_frames)
def test_decode_is_the_protocol_for_any_input(data: bytes, max_frame: int) -> None:
    frames, error = reference(data, max_frame)
    want: Outcome = ([], error) if error else (frames, None)  # a broken message counts for nothing
    assert one_shot(data, max_frame) == want
    assert one_shot(bytearray(data), max_frame) == want
    padded = b"##" + data + b"##"
    assert one_shot(memoryview(padded)[2:-2], max_frame) == want


@FUZZ
@given(data=damaged(), max_frame=max_frames, cuts=st.lists(st.integers(0, 500), max_size=12))
def test_stream_decoder_is_the_protocol_for_any_input_and_split(
    data: bytes, max_frame: int, cuts: list[int]
) -> None:
    assert streamed(data, max_frame, cuts) == reference(data, max_frame, stream=True)


def test_error_attributes_name_kind_and_offset() -> None:
    with pytest.raises(FrameError) as caught:
        decode(encode_frame(0, b"x") + b"VG", 100)
    assert (caught.value.kind, caught.value.offset) == ("bad_magic", 25)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("bad", [-1, 2**64, "10", None, 1.5])
def test_bad_limits_are_python_errors_not_crashes(bad: object) -> None:
    with pytest.raises((TypeError, OverflowError)):
        decode(encode_frame(0, b"x"), bad)  # type: ignore[arg-type]
    with pytest.raises((TypeError, OverflowError)):
        StreamDecoder(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["text", 12, None, [1, 2], memoryview(b"abcd")[::2]])
def test_non_buffers_and_strided_buffers_are_refused(bad: object) -> None:
    with pytest.raises((TypeError, BufferError, ValueError)):
        decode(bad, 100)  # type: ignore[arg-type]
    with pytest.raises((TypeError, BufferError, ValueError)):
        StreamDecoder(100).feed(bad)  # type: ignore[arg-type]
