"""Process statistics for operators and the soak test: memory, descriptors, tasks, streams."""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

from litestar import Request, get

from voxgate.api.auth import require_admin
from voxgate.api.problems import problem_responses
from voxgate.api.sessions import runtime_of


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


@get(
    "/v1/stats",
    guards=[require_admin],  # the whole process: admin keys only
    tags=["health"],
    responses=problem_responses(401, 403),
)
async def stats(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """This worker process's resident memory, open fds, tasks, streams and listeners.

    With ``--workers N`` each request is answered by whichever worker takes it.
    """
    runtime = runtime_of(request)
    ledger = runtime.ledger.stats()
    return {
        "pid": os.getpid(),
        "rss_bytes": _rss_bytes(),
        "open_fds": _open_fds(),
        "tasks": len(asyncio.all_tasks()),
        "streams": len(runtime.streams),
        "gc_objects": len(gc.get_objects()),
        "writer_held_bytes": runtime.writer.held_bytes,
        "writer_commits": runtime.writer.commits,
        "writer_frames": runtime.writer.frames,
        "writer_busy_s": round(runtime.writer.busy_s, 3),
        "inflight_bytes": ledger.inflight_bytes,
        "ledger_streams": ledger.streams,
        "heap_trims": runtime.heap.trims,
        # glibc's heap (None on other C libraries): what the trimmer can give back.
        "heap": runtime.heap.usage(),
        # Listeners, their feeds (one per listened session) and the event bus.
        "fanout": runtime.hub.stats(),
    }
