"""The pure-Python core gives exactly what the Rust core gives, on random inputs.

The pure-Python core (``tests/unit/native/pynative.py``) is a benchmark baseline;
it is only a fair one if it does the same work with the same results, errors included.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unit.native import pynative as _pynative
from voxgate import _native

MAX = 1 << 20
u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, (1 << 64) - 1)


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """What a call gives: its value, or its error's type name, message, kind and offset."""
    try:
        return "ok", call()
    except Exception as exc:
        detail = (getattr(exc, "kind", None), getattr(exc, "offset", None))
        return type(exc).__name__, (str(exc), *detail)


def _same(call: Callable[[Any], Any]) -> Any:
    rust, python = _outcome(lambda: call(_native)), _outcome(lambda: call(_pynative))
    assert python == rust
    return rust


def test_public_names_match() -> None:
    # The stream core (one call per message) and the store's parts (the commit plan,
    # blocks) have no twin: the twin serves benchmarks of the per-frame building
    # blocks only. The commit plan is held to SessionTally's rules instead
    # (test_commit_plan.py), the blocks to the store suite.
    public = {name for name in dir(_native) if not name.startswith("_")}
    store_parts = {"CommitPlan", "BlockError", "block_header", "read_block", "scan_blocks"}
    store_parts |= {"salvage_block"}
    assert public - {"StreamCore", "Batch", *store_parts} <= set(dir(_pynative))
    for name in ("HEADER_SIZE", "MAGIC", "VERSION", "FLAG_END", "FRAME_OK", "FRAME_BAD_CRC"):
        assert getattr(_pynative, name) == getattr(_native, name)
    assert _pynative.FRAME_TOO_LARGE == _native.FRAME_TOO_LARGE
    assert issubclass(_pynative.FrameError, ValueError)


@given(data=st.binary(max_size=300), value=u32)
def test_crc32c(data: bytes, value: int) -> None:
    _same(lambda m: m.crc32c(data, value))


def test_crc32c_check_value_and_buffers() -> None:
    assert _pynative.crc32c(b"123456789") == 0xE3069283
    data = os.urandom(100_003)
    for buffer in (
        data,
        bytearray(data),
        memoryview(data)[7:],
        memoryview(data)[:100_000].cast("H"),
    ):
        _same(lambda m, b=buffer: m.crc32c(b))  # type: ignore[misc]
    _same(lambda m: m.crc32c(memoryview(data)[::2]))  # not contiguous
    _same(lambda m: m.crc32c("text"))


@given(crc1=u32, crc2=u32, len2=u64)
def test_crc32c_combine(crc1: int, crc2: int, len2: int) -> None:
    _same(lambda m: m.crc32c_combine(crc1, crc2, len2))


@given(seq=u32, length=u32, crc=u32, pts=u64, flags=st.integers(0, 255))
def test_encode_header(seq: int, length: int, crc: int, pts: int, flags: int) -> None:
    _same(lambda m: m.encode_header(seq, length, crc, pts, flags))


@given(seq=u32, payload=st.binary(max_size=200), pts=u64, end=st.booleans())
def test_encode_frame(seq: int, payload: bytes, pts: int, end: bool) -> None:
    _same(lambda m: m.encode_frame(seq, payload, pts, end))


def test_encode_out_of_range_and_wrong_types() -> None:
    for call in (
        lambda m: m.encode_frame(-1, b"x"),
        lambda m: m.encode_frame(1 << 32, b"x"),
        lambda m: m.encode_frame(0, b"x", 1 << 64),
        lambda m: m.encode_frame(0, "x"),
        lambda m: m.encode_header(0, 0, 0, 0, 256),
        lambda m: m.crc32c(b"x", -1),
        lambda m: m.crc32c(b"x", 1 << 32),
        lambda m: m.crc32c_combine(0, 0, -1),
    ):
        rust, python = _outcome(lambda c=call: c(_native)), _outcome(lambda c=call: c(_pynative))  # type: ignore[misc]
        assert python[0] == rust[0]  # same exception type; pyo3 words its messages its own way


# Messages: good frames, then any of a few kinds of damage.
_frame = st.tuples(u32, st.binary(max_size=80), u64, st.booleans())


def _damage(message: bytes, where: int, how: int, byte: int) -> bytes:
    if not message:
        return message
    where %= len(message) + 1
    if how == 0:
        return message[:where]  # cut short
    if how == 1:
        return message + bytes([byte]) * (where % 30)  # trailing junk
    if how == 2 and where < len(message):
        return message[:where] + bytes([byte]) + message[where + 1 :]  # one byte changed
    return message


@settings(max_examples=400)
@given(
    frames=st.lists(_frame, max_size=6),
    damage=st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.integers(0, 255)),
    max_frame=st.sampled_from([0, 1, 16, 40, MAX]),
)
def test_decode(
    frames: list[tuple[int, bytes, int, bool]],
    damage: tuple[int, int, int],
    max_frame: int,
) -> None:
    message = b"".join(_native.encode_frame(*frame) for frame in frames)
    message = _damage(message, *damage)
    _same(lambda m: m.decode(message, max_frame))
    _same(lambda m: m.decode(memoryview(message), max_frame))


def test_decode_every_header_error() -> None:
    good = _native.encode_frame(3, b"abcd")
    cases = [
        b"",
        b"V",
        b"XF" + good[2:],
        good[:2] + b"\x02" + good[3:],
        good[:3] + b"\x02" + good[4:],
        _native.encode_header(0, 0, 0),
        good[:23],
        good[:-1],
        good + _native.encode_header(1, 10, 0),
    ]
    for message in cases:
        _same(lambda m, msg=message: m.decode(msg, MAX))  # type: ignore[misc]
    _same(lambda m: m.decode("text", MAX))


@settings(max_examples=300)
@given(
    frames=st.lists(_frame, max_size=6),
    damage=st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.integers(0, 255)),
    cuts=st.lists(st.integers(0, 1000), max_size=8),
    max_frame=st.sampled_from([1, 16, 40, MAX]),
)
def test_stream_decoder(
    frames: list[tuple[int, bytes, int, bool]],
    damage: tuple[int, int, int],
    cuts: list[int],
    max_frame: int,
) -> None:
    stream = _damage(b"".join(_native.encode_frame(*frame) for frame in frames), *damage)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    decoders = {m: m.StreamDecoder(max_frame) for m in (_native, _pynative)}

    def step(module: Any, action: Callable[[Any], Any]) -> tuple[str, Any, int, int]:
        decoder = decoders[module]
        kind, value = _outcome(lambda: action(decoder))
        return kind, value, decoder.buffered, decoder.consumed

    for chunk in [*chunks, b""]:
        rust = step(_native, lambda d, c=chunk: d.feed(c))  # type: ignore[misc]
        assert step(_pynative, lambda d, c=chunk: d.feed(c)) == rust  # type: ignore[misc]
    rust = step(_native, lambda d: d.finish())
    assert step(_pynative, lambda d: d.finish()) == rust


# The ledger: random sequences of operations give the same answers and stats.
_op = st.tuples(
    st.sampled_from(["open", "close", "admit", "release", "window", "inflight", "stats"]),
    st.integers(0, 5),
    st.integers(0, 400),
)


@settings(max_examples=300)
@given(
    limits=st.tuples(*(st.integers(0, 500) for _ in range(4))),
    ops=st.lists(_op, max_size=60),
)
def test_ledger(limits: tuple[int, int, int, int], ops: list[tuple[str, int, int]]) -> None:
    window, high, low, limit = limits
    made = _same(lambda m: (m.Ledger(window, high, low, limit), None)[1])
    if made[0] != "ok":
        return
    ledgers = {m: m.Ledger(window, high, low, limit) for m in (_native, _pynative)}
    for name, handle, nbytes in ops:

        def run(module: Any, name: str = name, handle: int = handle, nbytes: int = nbytes) -> Any:
            ledger = ledgers[module]
            if name == "open":
                return ledger.open()
            if name == "stats":
                s = ledger.stats()
                return (
                    s.inflight_bytes,
                    s.streams,
                    s.pressure,
                    s.pressure_events,
                    s.admitted_bytes,
                    s.refused,
                )
            if name in ("admit", "release"):
                return getattr(ledger, name)(handle, nbytes)
            return getattr(ledger, name)(handle)

        assert _outcome(lambda r=run: r(_pynative)) == _outcome(lambda r=run: r(_native))  # type: ignore[misc]


def test_ledger_stats_behave_alike() -> None:
    for module in (_native, _pynative):
        stats = module.Ledger(1, 2, 1, 3).stats()
        with pytest.raises(AttributeError):
            stats.refused = 5
        assert stats == module.Ledger(1, 2, 1, 3).stats()
    assert repr(_pynative.Ledger(1, 2, 1, 3).stats()) == repr(_native.Ledger(1, 2, 1, 3).stats())
