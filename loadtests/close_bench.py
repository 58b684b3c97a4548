"""Close codes a still-sending client receives, and how long a SIGTERM takes.

    python loadtests/close_bench.py [--runs 20] [--frame-bytes 1500]

A client streams frames as fast as its window allows; then either

- ``shutdown``: the server gets SIGTERM (one fresh server per run), or
- ``takeover``: a newer connection opens on the same session (one server),

and the close code the first client receives is counted. The server should
close with 1001 and 4409; 1006 means the close frame never reached the client.
For shutdowns it also prints the time from SIGTERM to the process's exit.
Real server processes on 127.0.0.1, started through the test harness.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from e2e.wire import Api, Sender, Stream, api_for, payload_for, wait_for_acks  # noqa: E402
from servers import start_server  # noqa: E402

FRAMES = 100_000


async def start_streaming(api: Api, frame_bytes: int) -> tuple[Stream, asyncio.Task[None]]:
    sid = await api.new_session()
    stream = await api.stream(sid)
    assert stream.hello is not None
    sender = Sender(stream, functools.partial(payload_for, sid, size=frame_bytes))
    task = asyncio.create_task(sender.run(range(FRAMES), end_seq=None))
    await wait_for_acks(sender, task, 300)
    return stream, task


async def shutdowns(runs: int, frame_bytes: int) -> tuple[collections.Counter[int], list[float]]:
    codes: collections.Counter[int] = collections.Counter()
    seconds: list[float] = []
    for _ in range(runs):
        server = start_server(Path(tempfile.mkdtemp(prefix="voxgate-close-")))
        async with api_for(server) as api:
            stream, task = await start_streaming(api, frame_bytes)
            start = time.monotonic()
            await asyncio.to_thread(server.stop)
            seconds.append(time.monotonic() - start)
            await asyncio.wait_for(task, 30)
            codes[int(stream.ws.close_code or 0)] += 1
    return codes, seconds


async def takeovers(runs: int, frame_bytes: int) -> collections.Counter[int]:
    codes: collections.Counter[int] = collections.Counter()
    with start_server(Path(tempfile.mkdtemp(prefix="voxgate-close-"))) as server:
        async with api_for(server) as api:
            for _ in range(runs):
                stream, task = await start_streaming(api, frame_bytes)
                sid = stream.hello["session_id"] if stream.hello else ""
                newer = await api.stream(sid)
                await asyncio.wait_for(task, 30)
                codes[int(stream.ws.close_code or 0)] += 1
                await newer.close()
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--frame-bytes", type=int, default=1500)
    args = parser.parse_args()
    codes, seconds = asyncio.run(shutdowns(args.runs, args.frame_bytes))
    print(f"shutdown x{args.runs}: close codes {dict(sorted(codes.items()))}")
    print(
        f"  SIGTERM to exit: median {statistics.median(seconds):.2f} s,"
        f" min {min(seconds):.2f} s, max {max(seconds):.2f} s"
    )
    taken = asyncio.run(takeovers(args.runs, args.frame_bytes))
    print(f"takeover x{args.runs}: close codes {dict(sorted(taken.items()))}")


if __name__ == "__main__":
    main()
