"""The server process under operations: dead workers, repeated signals, a taken port, settings.

A worker killed with SIGKILL (as the OOM killer or a crash in native code
would) is replaced while the server keeps serving, and the streams it held
reconnect and resume with nothing lost. Any number of SIGTERMs, sent at any
moment, to the master or to every process, end in one drain (streams closed
with 1001 after their acks) and exit 0. A second server on a taken port fails
at once. Unknown ``VOXGATE_*`` variables are named with the closest known one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.wire import Sender, api_for, payload_for, wait_for_acks
from servers import Server, ServerError, start_server
from voxgate.client import Api as ClientApi
from voxgate.client.stream import Backoff, StreamClient

# Bound on waits for a process to appear or go (a hang fails the test, nothing is timed).
PROCESS_WAIT_S = 60.0


# --- processes and sockets, read from /proc ----------------------------------------------


def children(pid: int) -> set[int]:
    """Pids of the live processes whose parent is ``pid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry))
    return out


def wait_for_workers(server: Server, count: int, without: set[int] | None = None) -> set[int]:
    """The master's ``count`` worker pids once there are that many, none of them in ``without``."""
    without = without or set()
    deadline = time.monotonic() + PROCESS_WAIT_S
    while True:
        workers = children(server.pid)
        if len(workers) == count and not workers & without:
            return workers
        assert time.monotonic() < deadline, f"workers {workers}, want {count} without {without}"
        time.sleep(0.05)


def tcp_connections() -> list[tuple[int, int, int]]:
    """``(local port, remote port, socket inode)`` of every established TCP connection here."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01":  # ESTABLISHED
                    local = int(fields[1].rsplit(":", 1)[1], 16)
                    remote = int(fields[2].rsplit(":", 1)[1], 16)
                    out.append((local, remote, int(fields[9])))
    return out


def socket_inodes(pid: int | str) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def streams_by_worker(workers: set[int], port: int) -> dict[int, int]:
    """How many of this test process's open connections to ``port`` each worker serves.

    The test's HTTP client keeps no idle connections, so its open ones are streams.
    """
    connections = tcp_connections()
    mine = socket_inodes("self")
    client_ports = {
        local for local, remote, inode in connections if remote == port and inode in mine
    }
    served = {
        inode for local, remote, inode in connections if local == port and remote in client_ports
    }
    return {pid: len(socket_inodes(pid) & served) for pid in workers}


def active_streams(response: httpx.Response) -> float:
    """``voxgate_active_streams`` in a ``/metrics`` answer."""
    assert response.status_code == 200, response.text
    for line in response.text.splitlines():
        if line.startswith("voxgate_active_streams "):
            return float(line.split()[1])
    raise AssertionError("no voxgate_active_streams in /metrics")


# --- a dead worker ------------------------------------------------------------------------

STREAMS = 6
FRAMES = 200
SIZE = 640


async def test_a_killed_worker_is_replaced_and_its_streams_resume_with_nothing_lost(
    tmp_path: Path,
) -> None:
    with start_server(tmp_path, workers=2) as server:
        workers = wait_for_workers(server, 2)
        # No idle keep-alive connections: every connection a worker holds is a stream.
        http = httpx.AsyncClient(
            base_url=server.base_url, limits=httpx.Limits(max_keepalive_connections=0)
        )
        async with http, ClientApi(server.base_url, server.api_key, client=http) as api:
            sids = [(await api.create_session(codec="pcm_s16le"))["id"] for _ in range(STREAMS)]
            halfway = asyncio.Event()
            resume = asyncio.Event()
            sent_half = 0

            async def stream(sid: str) -> StreamClient:
                nonlocal sent_half
                client = StreamClient(
                    server.base_url,
                    sid,
                    api.token_factory(sid),
                    backoff=Backoff(max_attempts=None, deadline_s=PROCESS_WAIT_S),
                )
                async with client:
                    for seq in range(FRAMES // 2):
                        await client.send(payload_for(sid, seq, SIZE))
                    await client.flush()  # every frame so far acked
                    sent_half += 1
                    if sent_half == STREAMS:
                        halfway.set()
                    await resume.wait()
                    for seq in range(FRAMES // 2, FRAMES):
                        await client.send(payload_for(sid, seq, SIZE))
                    await client.end()
                    completion = await client.wait_complete(PROCESS_WAIT_S)
                    assert completion.verified, completion
                return client

            tasks = [asyncio.create_task(stream(sid)) for sid in sids]
            await asyncio.wait_for(halfway.wait(), PROCESS_WAIT_S)
            # Every stream is open with half its frames acked; kill the busiest worker.
            held = await asyncio.to_thread(streams_by_worker, workers, server.port)
            assert sum(held.values()) == STREAMS, f"streams by worker: {held}"
            victim = max(held, key=lambda pid: held[pid])
            assert held[victim] >= 1, f"no stream connection found on any worker: {held}"
            os.kill(victim, signal.SIGKILL)

            replaced = await asyncio.to_thread(wait_for_workers, server, 2, {victim})
            assert len(replaced & workers) == 1, (workers, replaced)
            health = await api.health()
            assert health, "the server stopped answering after a worker died"
            resume.set()
            clients = await asyncio.wait_for(asyncio.gather(*tasks), 2 * PROCESS_WAIT_S)

            reconnected = sum(1 for client in clients if client.stats.reconnects)
            assert reconnected >= held[victim], (
                f"{held[victim]} streams were on the killed worker, {reconnected} reconnected"
            )
            for sid in sids:
                report = await api.missing(sid)
                assert (report["frames"], report["complete"]) == (FRAMES, True), report
                audio = await api.audio(sid)
                assert audio == b"".join(payload_for(sid, seq, SIZE) for seq in range(FRAMES))
            created = await api.create_session()
            assert created["id"]
            # The killed worker's open streams no longer count (it could not say so itself).
            deadline = time.monotonic() + PROCESS_WAIT_S
            while (open_now := active_streams(await http.get("/metrics"))) != 0:
                assert time.monotonic() < deadline, f"voxgate_active_streams {open_now}, want 0"
                await asyncio.sleep(0.05)
        assert server.stop() == 0, server.log_tail()
    assert "Respawning worker" in server.log_text(), server.log_tail()


# --- repeated SIGTERMs --------------------------------------------------------------------

GRACE_S = 3
# Granian kills workers still alive this long after the grace (voxgate.cli.serve).
KILL_AFTER_GRACE_S = 10
MARGIN_S = 10
RUNS = [
    # (signals, seconds between them, sent to every process of the server or the master)
    (2, 0.0, False),
    (3, 0.001, True),
    (5, 0.0, False),
    (4, 0.02, True),
    (2, 0.3, False),
    (5, 0.005, True),
]


@pytest.fixture
def server_for_signals(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, env={"VOXGATE_SHUTDOWN_GRACE_S": str(GRACE_S)}, workers=2)
    try:
        yield server
    finally:
        server.stop()


async def test_any_number_of_sigterms_at_any_moment_drain_once_and_exit_0(
    server_for_signals: Server,
) -> None:
    server = server_for_signals
    acked_before: dict[str, set[int]] = {}
    for run, (count, gap_s, whole_group) in enumerate(RUNS):
        server.start()
        async with api_for(server) as api:
            for sid, acked in acked_before.items():
                lost = acked - await api.stored_seqs(sid)
                assert not lost, f"run {run - 1}: acked frames lost: {sorted(lost)[:10]}"
            senders = []
            for _ in range(2):
                sid = await api.new_session()
                stream = await api.stream(sid)
                sender = Sender(stream, functools.partial(payload_for, sid, size=1000))
                task = asyncio.create_task(sender.run(range(100_000), end_seq=None))
                await wait_for_acks(sender, task, 20)
                assert not task.done(), f"run {run}: the stream ended before the signals"
                senders.append((sid, sender, task))

            def signal_repeatedly(
                count: int = count, gap_s: float = gap_s, whole_group: bool = whole_group
            ) -> None:
                pid = server.pid
                for _ in range(count):
                    with contextlib.suppress(ProcessLookupError):
                        if whole_group:
                            os.killpg(pid, signal.SIGTERM)
                        else:
                            os.kill(pid, signal.SIGTERM)
                    if gap_s:
                        time.sleep(gap_s)

            await asyncio.to_thread(signal_repeatedly)
            # stop() sends one more SIGTERM and waits; None means it had to SIGKILL.
            bound = GRACE_S + KILL_AFTER_GRACE_S + MARGIN_S
            code = await asyncio.to_thread(server.stop, bound)
            assert code == 0, (
                f"run {run} ({count} SIGTERMs {gap_s}s apart, group={whole_group}): "
                f"exit {code}\n{server.log_tail()}"
            )
            for sid, sender, task in senders:
                await asyncio.wait_for(task, PROCESS_WAIT_S)
                assert sender.stream.ws.close_code == 1001, (run, sender.closed)
                acked_before[sid] = set(sender.acked)
    server.start()
    async with api_for(server) as api:
        for sid, acked in acked_before.items():
            lost = acked - await api.stored_seqs(sid)
            assert not lost, f"acked frames lost: {sorted(lost)[:10]}"


@pytest.mark.parametrize("after", ["Starting granian", "Spawning worker-2", "Started worker-1"])
def test_sigterms_while_the_server_starts_stop_it_with_exit_0(tmp_path: Path, after: str) -> None:
    server = Server(tmp_path, workers=2)
    server.data_dir.mkdir(parents=True)
    with server.log_path.open("wb") as log:
        proc = subprocess.Popen(
            server.command(),
            env=server.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + PROCESS_WAIT_S
        while after not in server.log_text():
            assert proc.poll() is None, f"exited with {proc.returncode}\n{server.log_tail()}"
            assert time.monotonic() < deadline, f"no {after!r} in the log\n{server.log_tail()}"
            time.sleep(0.005)
        for _ in range(3):
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(GRACE_S + KILL_AFTER_GRACE_S + MARGIN_S)
        assert code == 0, f"exit {code}\n{server.log_tail()}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("gap_s", [0.0, 0.02, 0.2])
def test_a_sigterm_while_a_dead_worker_is_replaced_still_stops_the_server(
    tmp_path: Path, gap_s: float
) -> None:
    with start_server(tmp_path, workers=2) as server:
        victim = min(wait_for_workers(server, 2))
        os.kill(victim, signal.SIGKILL)
        if gap_s:
            time.sleep(gap_s)
        os.kill(server.pid, signal.SIGTERM)  # once: it must not be lost in the respawn
        code = server.wait(GRACE_S + KILL_AFTER_GRACE_S + MARGIN_S)
        assert code == 0, f"exit {code}\n{server.log_tail()}"


# --- a taken port -------------------------------------------------------------------------


def test_a_second_server_on_a_taken_port_fails_at_once_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    with start_server(tmp_path / "first") as first:
        second = Server(tmp_path / "second", port=first.port)
        second.data_dir.mkdir(parents=True)
        # Run by hand: second.start() would find the first server healthy on that port.
        done = subprocess.run(
            second.command(),
            env=second.environment(),
            capture_output=True,
            text=True,
            timeout=PROCESS_WAIT_S,
        )
        message = done.stderr
        assert done.returncode == 1, (done.returncode, message)
        assert f"port {first.port} on 127.0.0.1 is already in use" in message, message
        assert "Traceback" not in message, message
        assert "Listening at" not in message, "Granian started anyway"
        assert first.running


# --- settings -----------------------------------------------------------------------------


def test_unknown_variables_are_reported_with_the_closest_known_name(tmp_path: Path) -> None:
    env = {"VOXGATE_DURABILTY": "process", "VOXGATE_ZZZ_UNRELATED": "1"}
    with start_server(tmp_path, env=env) as server:
        log = server.log_text()
    assert "unknown variable VOXGATE_DURABILTY" in log, log
    assert "did you mean VOXGATE_DURABILITY?" in log, log
    assert "unknown variable VOXGATE_ZZZ_UNRELATED is ignored\n" in log, log


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VOXGATE_WINDOW_BYTES": "abc"}, "VOXGATE_WINDOW_BYTES: expected an integer"),
        ({"VOXGATE_DATABASE_MIGRATE": "maybe"}, "VOXGATE_DATABASE_MIGRATE: expected true or false"),
        ({"VOXGATE_IDLE_TIMEOUT_S": "1m"}, "VOXGATE_IDLE_TIMEOUT_S: expected a number"),
        ({"VOXGATE_SSL_CERTFILE": "/nonexistent.pem"}, "VOXGATE_SSL_KEYFILE go together"),
    ],
)
def test_a_bad_value_names_the_variable_and_exits_2(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ServerError) as failure:
        start_server(tmp_path, env=env)
    text = str(failure.value)
    assert "exited with 2" in text, text
    assert message in text, text
    assert "Traceback" not in text, text
    assert "$." not in text, "a JSON path instead of the variable's name"
