"""The fence around Granian's private API (voxgate.granian_internals).

The fence was read and checked against a range of Granian versions; the first
test fails when the installed Granian is outside it, so that an upgrade is
re-checked before it ships. The others show the master's signal handling
holding where Granian's own deadlocks: a stop signal landing while the main
thread holds the lock of the event Granian's main loop waits on.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from voxgate.granian_internals import (
    SUPPORTED_GRANIAN,
    granian_supported,
    granian_version,
)

# Hard bound on a child process that must not hang (a hang is the failure this shows).
HANG_BOUND_S = 60


def test_installed_granian_is_in_the_range_the_fence_was_checked_for() -> None:
    low, high = SUPPORTED_GRANIAN
    assert granian_supported(), (
        f"Granian {granian_version()} is outside [{low}, {high}): re-read granian/_signals.py, "
        "granian/server/common.py and mp.py against voxgate/granian_internals.py, "
        "then widen SUPPORTED_GRANIAN"
    )


@pytest.mark.parametrize(
    ("version", "supported"),
    [((2, 8, 9), True), ((2, 8, 10), True), ((2, 8, 8), False), ((2, 9, 0), False), ((3,), False)],
)
def test_the_range_check_compares_versions(version: tuple[int, ...], supported: bool) -> None:
    assert granian_supported(version) is supported


# Runs in a child process: the signal handler of the master process, installed as
# ``voxgate serve`` installs it, receives real signals while the main thread holds
# the lock of the event Granian's main loop waits on (as inside Event.wait, or
# inside a first handler's Event.set). Granian's own handler blocks forever there.
_LOCKED_SIGNALS = textwrap.dedent(
    """
    import os, signal
    from granian.constants import Interfaces
    from voxgate.granian_internals import MasterServer, SignalLatch

    latch = SignalLatch()
    latch.install()
    server = MasterServer("voxgate.app:app_from_env", interface=Interfaces.ASGI, latch=latch)
    signal.signal(signal.SIGTERM, server.signal_handler_interrupt)  # as Granian's startup does
    event = server.main_loop_interrupt
    with event._cond:
        for _ in range(5):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
    assert event.wait(30), "the main loop was never woken"
    print("stopping:", server.interrupt_signal, latch.stop_signals)
    """
)


def test_stop_signals_while_the_main_loop_event_is_locked_do_not_hang_the_master() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOCKED_SIGNALS],
        capture_output=True,
        text=True,
        timeout=HANG_BOUND_S,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopping: True 10", done.stdout


def test_the_internals_the_fence_relies_on_are_where_it_expects_them() -> None:
    import inspect

    import granian._signals as granian_signals
    from granian.server import Server
    from granian.server import mp as granian_mp

    from voxgate.granian_internals import MasterServer

    # The master registers these two bound methods as its signal handlers ...
    startup = inspect.getsource(Server.startup)
    assert "set_main_signals(self.signal_handler_interrupt, self.signal_handler_reload)" in startup
    # ... waits on this event and reads these flags in its main loop ...
    loop = inspect.getsource(Server._serve_loop)
    for name in ("main_loop_interrupt.wait()", "self.interrupt_signal", "self.interrupt_children"):
        assert name in loop, name
    # ... and respawns a failed worker with this method.
    assert "self._respawn_workers(workers, spawn_target, target_loader)" in loop
    # (Read from the source: building a server here would reconfigure this process's logging.)
    init = inspect.getsource(Server.__init__)
    for attribute in ("wrks", "interrupt_children", "reload_signal", "main_loop_interrupt"):
        assert f"self.{attribute}" in init, attribute
    respawn = inspect.getsource(Server._respawn_workers)
    assert "old_wrk = self.wrks.pop(idx)" in respawn
    assert "self.inner.pid" in inspect.getsource(granian_mp.WorkerProcess._id)
    assert issubclass(MasterServer, Server)
    # Each worker looks set_loop_signals up in granian._signals when it starts, so
    # replacing it there (before the workers fork) reaches them.
    assert list(inspect.signature(granian_signals.set_loop_signals).parameters) == ["loop"]
    worker = inspect.getsource(granian_mp.MPServer._spawn_asgi_lifespan_worker)
    assert "from granian._signals import set_loop_signals" in worker
    assert "shutdown_event = set_loop_signals(loop)" in worker
