"""Webhooks from real voxgate servers (both stores) to a real receiver on 127.0.0.1.

Every request is verified with the Python snippet of docs/clients.md. The
receiver is taken down and brought back, and a server is killed with SIGKILL
while events wait: each transition still arrives, with the id it had from the
start.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.wire import Api, frame, payload_for
from servers import Server
from services import PostgresServer
from voxgate.store.base import EventType
from voxgate.store.outbox import event_id

from .receiver import SECRET, Delivery, Receiver, docs_python_verifier

pytestmark = pytest.mark.e2e  # starts real server processes

verify = docs_python_verifier()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver that is not started: each test decides when it is up."""
    made = Receiver()
    yield made
    made.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    """A server (not started) that sends webhooks to ``receiver``, on each store kind."""
    env = {
        "VOXGATE_WEBHOOK_URL": receiver.url,
        "VOXGATE_WEBHOOK_SECRET": SECRET,
        "VOXGATE_RETENTION_HOT_DAYS": "0",  # ended sessions move at the next run
        "VOXGATE_RETENTION_IDLE_HOURS": "1000",
        "VOXGATE_RETENTION_AT": "off",
    }
    if request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        env["VOXGATE_DATABASE_URL"] = postgres.create_database(f"hooks_{uuid.uuid4().hex[:12]}")
    made = Server(tmp_path / "server", env=env)
    yield made
    made.stop()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Api]:
    server.start()
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30.0,
    ) as http:
        yield Api(server, http)


async def upload(api: Api, sid: str, seqs: list[int], end: int) -> None:
    body = b"".join(frame(seq, payload_for(sid, seq), end=seq == end) for seq in seqs)
    response = await api.upload(sid, body)
    assert response.status_code == 200, response.text


def retention_run(server: Server, **extra: str) -> dict[str, Any]:
    """``voxgate retention run`` beside the running server, with its settings."""
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", "retention", "run"],
        env={**server.environment(), **extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def expected(pairs: list[tuple[str, EventType]]) -> set[str]:
    return {event_id(sid, kind) for sid, kind in pairs}


def arrived(receiver: Receiver, ids: set[str], timeout_s: float = 60.0) -> list[Delivery]:
    """Wait (in a thread) until every id in ``ids`` was received, then check every request."""
    got = receiver.wait_for(lambda deliveries: ids <= {d.event_id for d in deliveries}, timeout_s)
    for delivery in got:
        assert verify(SECRET, delivery.headers["voxgate-signature"], delivery.body)
        assert delivery.event["id"] == delivery.event_id
    return got


def failed_attempts(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "voxgate_webhook_attempts_failed"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def wait_for_failed_attempts(server: Server, at_least: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while failed_attempts(server) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} failed attempts"
        time.sleep(0.1)


async def test_each_transition_posts_one_signed_event(
    server: Server, api: Api, receiver: Receiver
) -> None:
    receiver.start()
    in_order = await api.new_session(metadata={"call": "CA123"})
    await upload(api, in_order, [0, 1, 2], end=2)  # ends and completes in one commit
    gappy = await api.new_session()
    await upload(api, gappy, [0, 2], end=2)  # ends, seq 1 missing
    doomed = await api.new_session()
    await upload(api, doomed, [0], end=-1)  # open: deleting it is its only event
    assert (await api.http.delete(f"/v1/sessions/{doomed}")).status_code == 204
    first = expected(
        [
            (in_order, EventType.ENDED),
            (in_order, EventType.COMPLETED),
            (gappy, EventType.ENDED),
            (doomed, EventType.DELETED),
        ]
    )
    await asyncio.to_thread(arrived, receiver, first)

    await upload(api, gappy, [1], end=2)  # the gap closes
    report = retention_run(server)  # both to warm, enqueued by the CLI process
    assert report["archived"] == 2
    report = retention_run(server, VOXGATE_RETENTION_WARM_DAYS="0")  # and on to cold
    assert report["expired"] == 2
    later = expected(
        [
            (gappy, EventType.COMPLETED),
            (in_order, EventType.ARCHIVED),
            (gappy, EventType.ARCHIVED),
            (in_order, EventType.EXPIRED),
            (gappy, EventType.EXPIRED),
        ]
    )
    got = await asyncio.to_thread(arrived, receiver, first | later)

    ids = [d.event_id for d in got]
    assert sorted(ids) == sorted(first | later)  # each once, nothing else
    events = {(d.event["session"]["id"], d.event["type"]): d.event for d in got}
    completed = events[in_order, "session.completed"]["session"]
    assert completed["state"] == "complete"
    assert completed["metadata"] == {"call": "CA123"}
    assert completed["stream_crc32c"] == (await api.get_session(in_order))["stream_crc32c"]
    assert events[gappy, "session.ended"]["session"]["state"] == "ended"
    assert events[gappy, "session.completed"]["session"]["state"] == "complete"
    assert events[doomed, "session.deleted"]["session"]["state"] == "deleted"
    assert events[gappy, "session.archived"]["session"]["tier"] == "warm"
    assert events[in_order, "session.expired"]["session"]["tier"] == "cold"


async def test_events_wait_for_a_receiver_that_is_down(
    server: Server, api: Api, receiver: Receiver
) -> None:
    sid = await api.new_session()
    await upload(api, sid, [0, 1], end=1)
    # Both are enqueued by one commit, so the first round claims both: each failed once.
    await asyncio.to_thread(wait_for_failed_attempts, server, 4)
    receiver.start()
    got = await asyncio.to_thread(
        arrived, receiver, expected([(sid, EventType.ENDED), (sid, EventType.COMPLETED)])
    )
    assert len(got) == 2
    assert all(int(d.headers["voxgate-delivery-attempt"]) >= 2 for d in got)


async def test_events_pending_at_a_sigkill_are_sent_after_the_restart(
    server: Server, api: Api, receiver: Receiver
) -> None:
    sid = await api.new_session()
    await upload(api, sid, [0, 1, 2], end=2)
    other = await api.new_session()
    assert (await api.http.delete(f"/v1/sessions/{other}")).status_code == 204
    await asyncio.to_thread(wait_for_failed_attempts, server, 3)  # they are being tried
    server.kill()
    receiver.start()  # up while voxgate is down: nothing arrives until it is back
    assert receiver.snapshot() == []
    server.start()
    want = expected(
        [(sid, EventType.ENDED), (sid, EventType.COMPLETED), (other, EventType.DELETED)]
    )
    # A kill between a claim and its outcome leaves the event leased (105 s): wait past that.
    got = await asyncio.to_thread(arrived, receiver, want, 180.0)
    assert sorted(d.event_id for d in got) == sorted(want)
    # Attempts made before the kill were recorded: the count goes on from there. (The
    # first round claimed the two events of one commit at least.)
    streamed = [d for d in got if d.event["session"]["id"] == sid]
    assert all(int(d.headers["voxgate-delivery-attempt"]) >= 2 for d in streamed)


async def test_workers_of_one_server_send_each_event_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.start()
    env = {"VOXGATE_WEBHOOK_URL": receiver.url, "VOXGATE_WEBHOOK_SECRET": SECRET}
    with Server(tmp_path / "workers", env=env, workers=2) as server:
        async with httpx.AsyncClient(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.api_key}"},
            timeout=30.0,
        ) as http:
            api = Api(server, http)
            sessions = [await api.new_session() for _ in range(8)]
            for sid in sessions:
                await upload(api, sid, [0, 1], end=1)
            want = expected(
                [(sid, kind) for sid in sessions for kind in (EventType.ENDED, EventType.COMPLETED)]
            )
            got = await asyncio.to_thread(arrived, receiver, want)
    assert sorted(d.event_id for d in got) == sorted(want)
