"""Retention benchmark: archive, verify and range-read throughput of the embedded store.

    python loadtests/archive_bench.py --sessions 8 --megabytes 16 --audio pcm

Fills a temporary embedded store with ``sessions`` ended sessions of
``megabytes`` MiB each (640-byte frames: 20 ms of 16 kHz 16-bit mono), then
times one retention run (write every archive, fsync, read it back and verify
every CRC, drop the hot frames and erase their bytes), a verification of every
archive alone, and random 64 KiB range reads of the warm audio. ``--audio pcm``
is a sine tone with noise (compresses a little, like speech), ``random`` does
not compress at all (like Opus). Prints throughput and the compression ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

from voxgate._native import FLAG_END, crc32c
from voxgate.retention.archive import ArchiveReader, verify_archive
from voxgate.retention.runner import Retention
from voxgate.settings import Settings
from voxgate.store.base import FrameIn
from voxgate.store.sqlite import SqliteStore

FRAME_BYTES = 640


def pcm_frame(seq: int, rng: random.Random) -> bytes:
    samples = FRAME_BYTES // 2
    return struct.pack(
        f"<{samples}h",
        *(
            int(8000 * math.sin(2 * math.pi * 440 * (seq * samples + i) / 16000))
            + rng.randint(-300, 300)
            for i in range(samples)
        ),
    )


async def fill(store: SqliteStore, sessions: int, frames: int, audio: str) -> int:
    rng = random.Random(7)
    total = 0
    for _ in range(sessions):
        session = await store.create_session(
            codec="pcm_s16le", sample_rate=16000, channels=1, metadata={}
        )
        batch: list[FrameIn] = []
        for seq in range(frames):
            payload = pcm_frame(seq, rng) if audio == "pcm" else os.urandom(FRAME_BYTES)
            flags = FLAG_END if seq == frames - 1 else 0
            batch.append(FrameIn(session.id, seq, flags, seq * 20_000, crc32c(payload), payload))
            if len(batch) == 4096:
                await store.commit(batch)
                batch = []
        if batch:
            await store.commit(batch)
        total += frames * FRAME_BYTES
    return total


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--megabytes", type=float, default=16.0, help="MiB of audio per session")
    parser.add_argument("--audio", choices=("pcm", "random"), default="pcm")
    parser.add_argument("--reads", type=int, default=200, help="random 64 KiB range reads")
    args = parser.parse_args()
    frames = max(1, int(args.megabytes * 1024 * 1024 / FRAME_BYTES))

    with tempfile.TemporaryDirectory(prefix="voxgate-archive-bench-") as root:
        data_dir = Path(root) / "data"
        settings = Settings(
            data_dir=str(data_dir),
            archive_dir=str(Path(root) / "archive"),
            retention_hot_days=0,
            retention_idle_hours=0,
        )
        store = SqliteStore(data_dir, durability="fsync")
        await store.open()
        try:
            audio_bytes = await fill(store, args.sessions, frames, args.audio)
            started = time.perf_counter()
            run = await Retention(store, settings).run()
            run_s = time.perf_counter() - started
        finally:
            await store.close()
        if run is None or run.archived != args.sessions:
            raise SystemExit(f"the retention run did not archive every session: {run}")
        archives = sorted((Path(root) / "archive").rglob("*.tar.zst"))

        started = time.perf_counter()
        for path in archives:
            verify_archive(path)
        verify_s = time.perf_counter() - started

        rng = random.Random(11)
        started = time.perf_counter()
        for _ in range(args.reads):
            with ArchiveReader(rng.choice(archives)) as reader:
                offset, size = reader.audio_span()
                first = rng.randrange(max(size - 65536, 1))
                reader.read_exact(offset + first, min(65536, size))
        read_s = time.perf_counter() - started

    mib = audio_bytes / (1024 * 1024)
    print(f"audio: {args.sessions} sessions x {args.megabytes:g} MiB {args.audio} ({mib:.1f} MiB)")
    print(f"retention run (write + fsync + verify + erase): {run_s:.2f} s, {mib / run_s:.1f} MiB/s")
    print(f"verify alone: {verify_s:.2f} s, {mib / verify_s:.1f} MiB/s")
    print(
        f"range reads (64 KiB, archive opened each time): {args.reads / read_s:.0f}/s,"
        f" {1000 * read_s / args.reads:.2f} ms each"
    )
    print(
        f"archive bytes: {run.bytes_archived} ({run.bytes_archived / audio_bytes:.3f} of the audio)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
