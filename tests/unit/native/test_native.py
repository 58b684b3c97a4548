"""The native core as Python sees it: framing, stream decoding, CRC-32C and the ledger."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxgate import _native
from voxgate._native import (
    FLAG_END,
    FRAME_BAD_CRC,
    FRAME_OK,
    FRAME_TOO_LARGE,
    HEADER_SIZE,
    DecodedFrame,
    FrameError,
    Ledger,
    StreamDecoder,
    crc32c,
    crc32c_combine,
    decode,
    encode_frame,
    encode_header,
)

MAX = 1 << 20

# (seq, flags, pts_us, payload or None, crc32c, verdict): what a frame is, however decoded.
Seen = tuple[int, int, int, bytes | None, int, int]


def _slow_crc32c(data: bytes, value: int = 0) -> int:
    """Bitwise CRC-32C, the reference the fast one must match."""
    crc = value ^ 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def _rejected(message: bytes, max_frame_bytes: int = MAX) -> FrameError:
    with pytest.raises(FrameError) as caught:
        decode(message, max_frame_bytes)
    return caught.value


def _one_shot(stream: bytes, max_frame_bytes: int) -> list[Seen]:
    view = memoryview(stream)
    return [
        (
            seq,
            flags,
            pts,
            None if verdict == FRAME_TOO_LARGE else bytes(view[off : off + length]),
            crc,
            verdict,
        )
        for seq, flags, pts, off, length, crc, verdict in decode(stream, max_frame_bytes)
    ]


def _streamed(chunks: list[bytes], max_frame_bytes: int) -> list[Seen]:
    decoder = StreamDecoder(max_frame_bytes)
    seen: list[Seen] = []
    for chunk in chunks:
        seen.extend(decoder.feed(chunk))
        assert decoder.buffered <= HEADER_SIZE + max_frame_bytes
    decoder.finish()
    assert decoder.consumed == sum(len(c) for c in chunks)
    assert decoder.buffered == 0
    return seen


# Constants and encoding


def test_constants_match_the_protocol() -> None:
    assert (HEADER_SIZE, _native.MAGIC, _native.VERSION, FLAG_END) == (24, b"VF", 1, 1)
    assert (FRAME_OK, FRAME_BAD_CRC, FRAME_TOO_LARGE) == (0, 1, 2)
    assert issubclass(FrameError, ValueError)


def test_encode_frame_layout() -> None:
    frame = encode_frame(7, b"abc", pts_us=1_000_000, end=True)
    magic, version, flags, seq, pts, length, crc = struct.unpack(">2sBBIQII", frame[:24])
    assert (magic, version, flags, seq, pts, length) == (b"VF", 1, FLAG_END, 7, 1_000_000, 3)
    assert crc == crc32c(b"abc")
    assert frame[24:] == b"abc"


def test_encode_header_is_unchecked() -> None:
    header = encode_header(1, 0, 0xDEADBEEF, pts_us=5, flags=0xFE)
    assert header == struct.pack(">2sBBIQII", b"VF", 1, 0xFE, 1, 5, 0, 0xDEADBEEF)


def test_encode_frame_accepts_any_buffer() -> None:
    want = encode_frame(1, b"payload")
    assert encode_frame(1, bytearray(b"payload")) == want
    assert encode_frame(1, memoryview(b"xpayloadx")[1:-1]) == want


# One-shot decoding


def test_decode_round_trip_with_offsets_into_a_memoryview() -> None:
    payloads = [b"first", bytes(range(256)) * 3, b""]
    message = bytearray(
        encode_frame(10, payloads[0], pts_us=0)
        + encode_frame(11, payloads[1], pts_us=20_000)
        + encode_frame(12, payloads[2], pts_us=40_000, end=True)
    )
    view = memoryview(message)
    frames = decode(view, MAX)
    assert [f[0] for f in frames] == [10, 11, 12]
    assert [f[1] for f in frames] == [0, 0, FLAG_END]
    assert [f[2] for f in frames] == [0, 20_000, 40_000]
    for (_, _, _, off, length, crc, verdict), payload in zip(frames, payloads, strict=True):
        assert bytes(view[off : off + length]) == payload
        assert crc == crc32c(payload)
        assert verdict == FRAME_OK


def test_decode_frame_tuple_shape() -> None:
    frame: DecodedFrame = decode(encode_frame(3, b"xy", pts_us=9), MAX)[0]
    assert frame == (3, 0, 9, 24, 2, crc32c(b"xy"), FRAME_OK)


def test_bad_crc_is_a_verdict() -> None:
    frame = bytearray(encode_frame(0, b"audio"))
    frame[-1] ^= 0x01
    message = bytes(frame) + encode_frame(1, b"fine")
    assert [f[6] for f in decode(message, MAX)] == [FRAME_BAD_CRC, FRAME_OK]


def test_too_large_is_a_verdict_for_that_frame_alone() -> None:
    big = encode_header(0, 11, 0) + b"x" * 11  # wrong CRC too: not even checked
    message = encode_frame(1, b"a" * 10) + big + encode_frame(2, b"b")
    frames = decode(message, 10)
    assert [(f[0], f[4], f[6]) for f in frames] == [
        (1, 10, FRAME_OK),
        (0, 11, FRAME_TOO_LARGE),
        (2, 1, FRAME_OK),
    ]


def test_empty_end_frame_is_well_formed() -> None:
    assert decode(encode_frame(5, b"", end=True), 0) == [(5, FLAG_END, 0, 24, 0, 0, FRAME_OK)]


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        (b"XF" + encode_frame(0, b"x")[2:], "bad_magic"),
        (encode_frame(0, b"x")[:2] + b"\x02" + encode_frame(0, b"x")[3:], "bad_version"),
        (encode_header(0, 1, 0, flags=0x02) + b"x", "reserved_flags"),
        (encode_header(0, 1, 0, flags=0x80) + b"x", "reserved_flags"),
        (encode_header(0, 0, 0), "empty_frame"),
        (encode_frame(0, b"x")[:10], "truncated"),
        (encode_frame(0, b"0123456789")[:-1], "truncated"),
        (encode_header(0, 100, 0) + b"x" * 50, "truncated"),
    ],
)
def test_malformed_frame_after_a_good_one(bad: bytes, kind: str) -> None:
    good = encode_frame(0, b"good frame")
    error = _rejected(good + bad, max_frame_bytes=20)
    assert error.kind == kind
    assert error.offset == len(good)
    assert kind in str(error)
    assert f"byte {len(good)}" in str(error)


def test_empty_message_is_truncated() -> None:
    error = _rejected(b"")
    assert (error.kind, error.offset) == ("truncated", 0)


def test_checks_run_in_protocol_order() -> None:
    header = bytearray(encode_header(0, 0, 0, flags=0x80))
    header[0], header[2] = 0, 9
    assert _rejected(bytes(header)).kind == "bad_magic"
    header[0] = 0x56
    assert _rejected(bytes(header)).kind == "bad_version"
    header[2] = 1
    assert _rejected(bytes(header)).kind == "reserved_flags"
    header[3] = 0
    assert _rejected(bytes(header)).kind == "empty_frame"


def test_decode_large_message() -> None:
    payload = random.Random(1).randbytes(300_000)
    message = encode_frame(0, payload) + encode_frame(1, payload[:1000], end=True)
    frames = decode(message, 1 << 19)
    assert [(f[0], f[4], f[6]) for f in frames] == [(0, 300_000, FRAME_OK), (1, 1000, FRAME_OK)]


def test_decode_rejects_what_is_not_a_buffer() -> None:
    with pytest.raises(TypeError):
        decode("text", MAX)  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        decode(memoryview(encode_frame(0, b"abcd") * 2)[::2], MAX)


# Incremental decoding


def test_stream_decoder_reassembles_split_frames() -> None:
    stream = encode_frame(0, b"aaaa", pts_us=1) + encode_frame(1, b"bbbbbb", pts_us=2, end=True)
    decoder = StreamDecoder(100)
    assert decoder.feed(stream[:30]) == [(0, 0, 1, b"aaaa", crc32c(b"aaaa"), FRAME_OK)]
    assert decoder.buffered == 2
    assert decoder.feed(bytearray(stream[30:52])) == []
    assert decoder.buffered == 24
    assert decoder.feed(memoryview(stream)[52:]) == [
        (1, FLAG_END, 2, b"bbbbbb", crc32c(b"bbbbbb"), FRAME_OK)
    ]
    assert (decoder.buffered, decoder.consumed) == (0, len(stream))
    decoder.finish()


def test_stream_decoder_skips_too_large_payloads() -> None:
    stream = encode_frame(0, b"z" * 10_000) + encode_frame(1, b"ok")
    decoder = StreamDecoder(100)
    seen = []
    for start in range(0, len(stream), 64):
        seen.extend(decoder.feed(stream[start : start + 64]))
        assert decoder.buffered <= HEADER_SIZE + 100
    decoder.finish()
    assert seen == [
        (0, 0, 0, None, crc32c(b"z" * 10_000), FRAME_TOO_LARGE),
        (1, 0, 0, b"ok", crc32c(b"ok"), FRAME_OK),
    ]


def test_stream_decoder_finish_reports_a_partial_frame() -> None:
    good = encode_frame(0, b"x")
    decoder = StreamDecoder(100)
    decoder.feed(good + encode_frame(1, b"0123456789")[:-3])
    with pytest.raises(FrameError) as caught:
        decoder.finish()
    assert (caught.value.kind, caught.value.offset) == ("truncated", len(good))


def test_stream_decoder_stays_failed() -> None:
    decoder = StreamDecoder(100)
    with pytest.raises(FrameError) as first:
        decoder.feed(b"XX")
    assert (first.value.kind, first.value.offset) == ("bad_magic", 0)
    with pytest.raises(FrameError) as again:
        decoder.feed(encode_frame(0, b"fine"))
    assert again.value.kind == "bad_magic"
    with pytest.raises(FrameError):
        decoder.finish()


def test_stream_decoder_hands_out_frames_before_the_error() -> None:
    good = encode_frame(0, b"good")
    decoder = StreamDecoder(100)
    assert [f[0] for f in decoder.feed(good + b"VF\x07")] == [0]
    with pytest.raises(FrameError) as caught:
        decoder.finish()
    assert (caught.value.kind, caught.value.offset) == ("bad_version", len(good))


frame_specs = st.lists(
    st.tuples(
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**64 - 1),
        st.binary(max_size=300),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)


def _build(specs: list[tuple[int, int, bytes, bool, bool]]) -> bytes:
    out = bytearray()
    for seq, pts, payload, end, corrupt in specs:
        frame = bytearray(encode_frame(seq, payload, pts_us=pts, end=end or not payload))
        if corrupt:
            frame[20] ^= 0xFF
        out += frame
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(
    specs=frame_specs,
    max_frame_bytes=st.integers(0, 320),
    cuts=st.lists(st.integers(0, 2000), max_size=30),
)
def test_stream_decoder_equals_decode_for_any_split(
    specs: list[tuple[int, int, bytes, bool, bool]], max_frame_bytes: int, cuts: list[int]
) -> None:
    stream = _build(specs)
    points = sorted(min(c, len(stream)) for c in cuts)
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _streamed(chunks, max_frame_bytes) == _one_shot(stream, max_frame_bytes)


@settings(max_examples=50, deadline=None)
@given(specs=frame_specs, max_frame_bytes=st.integers(0, 320))
def test_stream_decoder_equals_decode_at_every_single_split(
    specs: list[tuple[int, int, bytes, bool, bool]], max_frame_bytes: int
) -> None:
    stream = _build(specs)
    want = _one_shot(stream, max_frame_bytes)
    for cut in range(len(stream) + 1):
        assert _streamed([stream[:cut], stream[cut:]], max_frame_bytes) == want


# CRC-32C


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_crc32c_matches_reference_for_random_data() -> None:
    rng = random.Random(7)
    for length in [*range(70), 255, 256, 1000, 4097]:
        data = rng.randbytes(length)
        assert crc32c(data) == _slow_crc32c(data), length


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2000), value=st.integers(0, 2**32 - 1))
def test_crc32c_continues_like_the_reference(data: bytes, value: int) -> None:
    assert crc32c(data, value) == _slow_crc32c(data, value)


def test_crc32c_continues_across_pieces_and_buffers() -> None:
    data = random.Random(3).randbytes(200_000)
    running = 0
    for start in range(0, len(data), 70_001):
        running = crc32c(memoryview(data)[start : start + 70_001], running)
    assert running == crc32c(bytearray(data))


def test_crc32c_combine() -> None:
    rng = random.Random(11)
    data = rng.randbytes(5000)
    whole = crc32c(data)
    for split in [0, 1, 2, 4999, 5000, *(rng.randrange(5001) for _ in range(200))]:
        a, b = data[:split], data[split:]
        assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == whole, split
    assert crc32c_combine(0x12345678, 0, 0) == 0x12345678


@settings(max_examples=200, deadline=None)
@given(a=st.binary(max_size=500), b=st.binary(max_size=500))
def test_crc32c_combine_equals_concatenation(a: bytes, b: bytes) -> None:
    assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b)


@pytest.mark.parametrize(
    ("crc1", "crc2", "len2", "whole"),
    [
        # A = b"hello world, some prefix", B = len2 bytes of 0x07, computed independently.
        (0x2C2FC5E9, 0xA5BF3350, 1_073_741_827, 0xF5EEA4F8),
        (0x2C2FC5E9, 0x5FC6DA7C, 4_294_967_296, 0x5C5340BB),
        (0x2C2FC5E9, 0x45D48E06, 8_589_946_937, 0x685632FA),
    ],
)
def test_crc32c_combine_beyond_32_bit_lengths(crc1: int, crc2: int, len2: int, whole: int) -> None:
    assert crc32c(b"hello world, some prefix") == crc1
    assert crc32c_combine(crc1, crc2, len2) == whole


def test_stream_crc_from_per_frame_crcs() -> None:
    payloads = [random.Random(n).randbytes(n * 37) for n in range(20)]
    stream_crc = 0
    for payload in payloads:
        stream_crc = crc32c_combine(stream_crc, crc32c(payload), len(payload))
    assert stream_crc == crc32c(b"".join(payloads))


# Ledger


def test_ledger_admits_within_the_window() -> None:
    ledger = Ledger(100, 250, 100, 300)
    handle = ledger.open()
    assert ledger.window(handle) == 100
    assert ledger.admit(handle, 60)
    assert ledger.admit(handle, 40)
    assert not ledger.admit(handle, 1)
    assert ledger.inflight(handle) == 100
    assert not ledger.release(handle, 30)
    assert ledger.admit(handle, 30)
    stats = ledger.stats()
    assert (stats.inflight_bytes, stats.admitted_bytes, stats.refused, stats.streams) == (
        100,
        130,
        1,
        1,
    )


def test_ledger_global_limit() -> None:
    ledger = Ledger(100, 150, 50, 150)
    a, b = ledger.open(), ledger.open()
    assert ledger.admit(a, 100)
    assert not ledger.admit(b, 60)
    assert ledger.admit(b, 50)


def test_ledger_pressure_hysteresis() -> None:
    ledger = Ledger(100, 250, 100, 300)
    a, b, c = ledger.open(), ledger.open(), ledger.open()
    assert ledger.admit(a, 100)
    assert ledger.admit(b, 100)
    assert not ledger.stats().pressure
    assert ledger.admit(c, 50)  # 250 in flight: the high watermark
    stats = ledger.stats()
    assert stats.pressure
    assert stats.pressure_events == 1
    # No new credit under pressure: the window is what the stream has in flight.
    assert ledger.window(c) == 50
    assert not ledger.admit(c, 1)
    newcomer = ledger.open()
    assert ledger.window(newcomer) == 0
    assert not ledger.release(a, 100)  # 150: still above the low watermark
    assert ledger.window(a) == 0
    assert not ledger.release(b, 49)  # 101
    assert ledger.release(b, 1)  # 100: pressure ends, reported once
    assert not ledger.release(c, 1)
    assert not ledger.stats().pressure
    assert ledger.window(newcomer) == 100
    assert ledger.stats().pressure_events == 1


def test_ledger_release_saturates_and_close_releases() -> None:
    ledger = Ledger(100, 150, 50, 300)
    a, b = ledger.open(), ledger.open()
    assert ledger.admit(a, 100)
    assert ledger.admit(b, 60)
    assert ledger.stats().pressure
    assert not ledger.release(b, 1000)
    assert ledger.inflight(b) == 0
    assert ledger.stats().inflight_bytes == 100
    assert ledger.close(a)  # frees 100: back to 0, pressure over
    stats = ledger.stats()
    assert (stats.inflight_bytes, stats.streams, stats.pressure) == (0, 1, False)


def test_ledger_unknown_handle() -> None:
    ledger = Ledger(100, 150, 50, 300)
    handle = ledger.open()
    ledger.close(handle)
    calls: list[Callable[[], object]] = [
        lambda: ledger.admit(handle, 1),
        lambda: ledger.release(handle, 1),
        lambda: ledger.window(handle),
        lambda: ledger.inflight(handle),
        lambda: ledger.close(handle),
    ]
    for call in calls:
        with pytest.raises(KeyError, match="unknown ledger handle"):
            call()


def test_ledger_rejects_unordered_watermarks() -> None:
    with pytest.raises(ValueError, match="global_low"):
        Ledger(100, 50, 60, 300)
    with pytest.raises(ValueError, match="global_limit"):
        Ledger(100, 400, 60, 300)


def test_ledger_stats_are_frozen() -> None:
    stats = Ledger(1, 2, 1, 3).stats()
    with pytest.raises(AttributeError):
        stats.refused = 5
    assert "LedgerStats(" in repr(stats)
