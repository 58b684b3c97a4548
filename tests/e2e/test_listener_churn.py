"""5,000 short sessions whose listeners come and go: nothing per session stays behind.

Each session gets a listener (WebSocket with audio, or SSE, alternately) and a
transcript, every tenth one also two uploaded frames; the listener waits for
what it should hear, then leaves. Afterwards the server process's RSS is back
near its level after a warm-up round of the same work, and its counters show
no listener, no feed and no bus subscription left; neither does Redis.
``VOXGATE_TEST_CHURN_SESSIONS`` runs fewer (or more) sessions.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from e2e.listening import Heard, SseListener, WsListener
from e2e.wire import FRAMES_CONTENT_TYPE, frame
from servers import Server, start_server
from services import RedisServer

SESSIONS = int(os.environ.get("VOXGATE_TEST_CHURN_SESSIONS", "5000"))
WARMUP = SESSIONS // 10
CONCURRENCY = 16
# RSS may end this much above the warm-up level (allocator slack, caches filling up).
RSS_TOLERANCE = 1.15


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Server]:
    env = {"VOXGATE_DURABILITY": "process", "VOXGATE_REDIS_URL": redis_server.url}
    with start_server(tmp_path_factory.mktemp("churn"), env=env) as running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=CONCURRENCY * 2)
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30.0,
        limits=limits,
    ) as client:
        yield client


def worker_pid(server: Server) -> int:
    """The server's worker process (Granian's only child)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) == 1, f"expected one worker process, found {children}"
    return int(children[0])


def worker_rss(server: Server) -> int:
    """Resident set size in bytes of the server's worker process."""
    for line in Path(f"/proc/{worker_pid(server)}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


def worker_cpu_s(server: Server) -> float:
    fields = Path(f"/proc/{worker_pid(server)}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_session(http: httpx.AsyncClient, server: Server, index: int) -> None:
    response = await http.post("/v1/sessions", json={"codec": "pcm_s16le"})
    assert response.status_code == 201, response.text
    sid = response.json()["id"]
    body = frame(0, b"\x01\x02" * 80) + frame(1, b"\x03\x04" * 80, end=True)
    transcript = {"role": "user", "text": f"session {index}", "is_final": True, "timestamp": index}

    with_audio = index % 10 < 2  # one WebSocket and one SSE listener in ten

    async def produce() -> None:
        if with_audio:
            token = (await http.post(f"/v1/sessions/{sid}/tokens")).json()["token"]
            upload = await http.post(
                f"/v1/sessions/{sid}/frames",
                content=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": FRAMES_CONTENT_TYPE},
            )
            assert upload.status_code == 200, upload.text
        posted = await http.post(f"/v1/sessions/{sid}/transcripts", json=transcript)
        assert posted.status_code == 201, posted.text

    def heard_all(heard: Heard) -> bool:
        done = bool(heard.transcripts)
        if with_audio:
            done = done and "complete" in heard.states
            if heard.next_audio is not None:
                done = done and heard.next_audio == 2
        return done

    if index % 2:
        async with SseListener.open(http, sid) as sse:
            await produce()
            await sse.until(lambda s: heard_all(s.heard))
    else:
        listener = await WsListener.open(server, sid, audio=True)
        try:
            await produce()
            await listener.until(heard_all)
        finally:
            await listener.close()


async def run_sessions(http: httpx.AsyncClient, server: Server, first: int, count: int) -> None:
    queue = iter(range(first, first + count))

    async def worker() -> None:
        for index in queue:
            await one_session(http, server, index)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def settled_counts(http: httpx.AsyncClient) -> dict[str, object]:
    """The server's listener counters once the last listeners' departures are processed."""
    stats: dict[str, object] = {}
    for _ in range(100):
        stats = (await http.get("/v1/listeners")).json()
        if stats["listeners"] == 0:
            break
        await asyncio.sleep(0.05)
    return stats


async def test_listeners_come_and_go_without_leaving_anything(
    http: httpx.AsyncClient, server: Server, redis_server: RedisServer
) -> None:
    started = time.perf_counter()
    cpu = worker_cpu_s(server), own_cpu_s()
    await run_sessions(http, server, 0, WARMUP)
    await settled_counts(http)
    baseline = worker_rss(server)
    await run_sessions(http, server, WARMUP, SESSIONS - WARMUP)
    stats = await settled_counts(http)
    after = worker_rss(server)
    elapsed = time.perf_counter() - started
    print(
        f"\n{SESSIONS} sessions with listeners in {elapsed:.1f} s "
        f"({SESSIONS / elapsed:.0f}/s); worker RSS {baseline / 2**20:.1f} MiB after "
        f"{WARMUP}, {after / 2**20:.1f} MiB after {SESSIONS}; CPU: server "
        f"{worker_cpu_s(server) - cpu[0]:.1f} s, test client {own_cpu_s() - cpu[1]:.1f} s"
    )
    assert stats["listeners"] == 0
    assert stats["feeds"] == 0, "a session's feed outlived its listeners"
    bus = stats["bus"]
    assert isinstance(bus, dict)
    assert bus["subscriptions"] == 0
    assert bus["dropped"] == 0
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.pubsub_channels("voxgate:events:*") == []
    assert after <= baseline * RSS_TOLERANCE, (
        f"worker RSS grew from {baseline / 2**20:.1f} MiB to {after / 2**20:.1f} MiB"
    )
