"""Native microbenchmarks: CRC-32C and header decoding, from 64 B to 1 MiB, as Python sees them.

    python loadtests/native_bench.py [--seconds 0.3] [--json native.json]

CRC-32C: ``voxgate._native.crc32c`` against the ``crc32c`` and ``google-crc32c``
packages, zlib's CRC-32 (another polynomial: the speed a stdlib call reaches)
and voxgate's pure-Python fallback (small sizes only). Decoding: one message of
one frame per size, ``_native.decode`` (header parse plus CRC check) against
``struct`` unpacking the header alone, and against ``struct`` plus the ``crc32c``
package (what a Python server would do). Each figure is the best of 5 timed
loops of about ``--seconds``; printed in GB/s and calls (frames) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import crc32c as crc32c_pkg
import google_crc32c

from voxgate import _native

# The pure-Python copy of the core lives with the tests that check it against Rust.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import unit.native.pynative as _pynative

SIZES = [64, 640, 4096, 65536, 1 << 20]
HEADER = struct.Struct(">2sBBIQII")


def best_rate(call: Callable[[], object], seconds: float) -> float:
    """Calls per second: the best of 5 loops of about ``seconds`` each."""
    n = 1
    while True:  # calibrate the loop count
        start = time.perf_counter()
        for _ in range(n):
            call()
        took = time.perf_counter() - start
        if took >= seconds / 10:
            break
        n *= 4
    loops = max(1, int(n * seconds / max(took, 1e-9)))
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        best = max(best, loops / (time.perf_counter() - start))
    return best


def crc_cases(data: bytes) -> dict[str, Callable[[], object]]:
    cases: dict[str, Callable[[], object]] = {
        "voxgate (Rust)": lambda: _native.crc32c(data),
        "crc32c pkg": lambda: crc32c_pkg.crc32c(data),
        "google-crc32c": lambda: google_crc32c.value(data),
        "zlib.crc32 (CRC-32)": lambda: zlib.crc32(data),
    }
    if len(data) <= 4096:
        cases["voxgate pure Python"] = lambda: _pynative.crc32c(data)
    return cases


def struct_decode(message: bytes) -> list[tuple[int, int]]:
    out = []
    offset = 0
    while offset < len(message):
        _, _, _flags, seq, _, length, _crc = HEADER.unpack_from(message, offset)
        out.append((seq, length))
        offset += 24 + length
    return out


def struct_crc_decode(message: bytes) -> list[tuple[int, bool]]:
    out = []
    view = memoryview(message)
    offset = 0
    while offset < len(message):
        _, _, _flags, seq, _, length, crc = HEADER.unpack_from(message, offset)
        start = offset + 24
        out.append((seq, crc32c_pkg.crc32c(view[start : start + length]) == crc))
        offset = start + length
    return out


def decode_cases(message: bytes) -> dict[str, Callable[[], object]]:
    cases: dict[str, Callable[[], object]] = {
        "_native.decode (parse+CRC)": lambda: _native.decode(message, 1 << 21),
        "struct header only": lambda: struct_decode(message),
        "struct + crc32c pkg": lambda: struct_crc_decode(message),
    }
    if len(message) <= 4096 + 24:
        cases["_pynative.decode"] = lambda: _pynative.decode(message, 1 << 21)
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args(argv)
    report: dict[str, dict[str, dict[str, float]]] = {"crc32c": {}, "decode": {}}
    print(f"{'CRC':<28}" + "".join(f"{_size(s):>22}" for s in SIZES))
    rows: dict[str, list[str]] = {}
    for size in SIZES:
        data = os.urandom(size)
        for name, call in crc_cases(data).items():
            rate = best_rate(call, args.seconds)
            report["crc32c"].setdefault(name, {})[str(size)] = rate
            rows.setdefault(name, [""] * len(SIZES))[SIZES.index(size)] = _cell(rate, size)
    for name, cells in rows.items():
        print(f"{name:<28}" + "".join(f"{c:>22}" for c in cells))
    print(f"\n{'decode, 1 frame/message':<28}" + "".join(f"{_size(s):>22}" for s in SIZES))
    rows = {}
    for size in SIZES:
        message = _native.encode_frame(7, os.urandom(size))
        for name, call in decode_cases(message).items():
            rate = best_rate(call, args.seconds)
            report["decode"].setdefault(name, {})[str(size)] = rate
            rows.setdefault(name, [""] * len(SIZES))[SIZES.index(size)] = _cell(rate, size)
    for name, cells in rows.items():
        print(f"{name:<28}" + "".join(f"{c:>22}" for c in cells))
    print("\ncells: GB/s of payload (calls or frames per second)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _size(n: int) -> str:
    return (
        f"{n // 1024} KiB" if n >= 1024 and n < 1 << 20 else ("1 MiB" if n == 1 << 20 else f"{n} B")
    )


def _cell(rate: float, size: int) -> str:
    per_s = f"{rate / 1e6:.2f} M/s" if rate >= 1e6 else f"{rate / 1e3:.1f} k/s"
    return f"{rate * size / 1e9:.2f} ({per_s})"


if __name__ == "__main__":
    raise SystemExit(main())
