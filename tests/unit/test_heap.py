"""Freed heap memory goes back to the kernel after a burst (glibc)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from voxgate.heap import HeapTrimmer

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")

# In a fresh interpreter: hold 64 MiB of 3,200-byte payloads (five 640-byte frames, as
# a real-time stream sends them), free all but every 16th, so the free memory sits in
# holes that glibc does not return by itself; then let the trimmer look twice.
_BURST = textwrap.dedent(
    """
    import asyncio, json
    from voxgate.heap import HeapTrimmer

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    async def main() -> None:
        trimmer = HeapTrimmer(interval_s=1.0)
        held = [bytes([i % 251]) * 3200 for i in range(20_000)]
        kept = held[::16]
        del held
        before = rss()
        first = await trimmer.trim_if_worth()
        after = rss()
        second = await trimmer.trim_if_worth()
        print(json.dumps({"before": before, "after": after, "first": first,
                          "second": second, "kept": len(kept)}))

    asyncio.run(main())
    """
)


def test_a_burst_of_freed_payloads_leaves_resident_memory() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _BURST], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    result = json.loads(out)
    assert result["first"], "60 MiB sat free and nothing was trimmed"
    released = result["before"] - result["after"]
    assert released > 32 << 20, f"only {released / 2**20:.1f} MiB of RSS went back"
    assert not result["second"], "trimmed again with nothing left to give back"


def test_interval_zero_switches_it_off_but_usage_still_reads() -> None:
    assert HeapTrimmer(0).glibc is None
    assert HeapTrimmer(10).glibc is not None
    assert HeapTrimmer(0).usage() is not None


def test_usage_shows_a_burst_in_use_then_free() -> None:
    trimmer = HeapTrimmer(0)
    start = trimmer.usage()
    assert start is not None
    held = [bytes([i % 251]) * 3200 for i in range(10_000)]  # 32 MB, below mmap size
    holding = trimmer.usage()
    assert holding is not None
    assert holding["in_use_bytes"] - start["in_use_bytes"] > 30_000_000
    kept = held[::16]
    del held
    freed = trimmer.usage()
    assert freed is not None
    assert holding["in_use_bytes"] - freed["in_use_bytes"] > 28_000_000
    # Freed between the kept ones: glibc keeps it, as free bytes of its arena.
    assert freed["free_bytes"] - holding["free_bytes"] > 28_000_000
    assert len(kept) == 625
