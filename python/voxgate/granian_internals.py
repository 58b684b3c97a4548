"""Every use of Granian's private API, fenced in this one module.

Granian has no public hook for the two things ``voxgate serve`` needs from its
signal handling, so this module reaches into it, and only this module:

* **The master process.** Granian's own SIGTERM/SIGINT handler calls
  ``threading.Event.set`` on the event its main loop waits on. A signal
  handler runs on the main thread between two bytecodes, so a signal that
  lands while the main thread holds that event's (non-reentrant) lock, inside
  ``Event.wait`` or inside a first handler's ``Event.set``, deadlocks the
  master: it never drains, never exits, and every later signal's handler
  blocks on the same lock. :class:`MasterServer` replaces that handler with
  one that takes no lock at all: it sets a flag and writes a byte to a pipe;
  a thread of its own reads the pipe and sets the event.
* **The worker processes.** Granian closes WebSockets abruptly as soon as a
  worker sees SIGTERM, before the ASGI lifespan shutdown runs. voxgate drains
  first (streams closed with 1001 after their acks), then does what Granian's
  handler does. :func:`install_worker_shutdown_hook` remembers the trigger
  Granian's ``set_loop_signals`` makes, and :func:`take_over_worker_signals`
  hands the runtime the signals, including one that lands while the worker's
  loop is paused between the lifespan startup and serving (uvloop drops
  those: the worker ignored that SIGTERM and was killed after the kill
  timeout).

These were read and checked against the Granian versions in
:data:`SUPPORTED_GRANIAN`; ``tests/test_granian_internals.py`` fails when the
installed version is outside that range, so an upgrade is re-checked here
before it ships.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import select
import signal
import threading
from collections.abc import Callable
from typing import Any

from granian.server import Server

log = logging.getLogger("voxgate")

# [lowest, first excluded) Granian versions whose internals this module was checked against.
SUPPORTED_GRANIAN = ((2, 8, 9), (2, 9, 0))

# Signals that stop the server, and the one that makes Granian respawn its workers.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP
# Seconds between the master's repeated wake-ups once it is stopping.
RESTOP_S = 0.5


def granian_version() -> tuple[int, ...]:
    """The installed Granian's version as integers (``2.8.9`` -> ``(2, 8, 9)``)."""
    text = importlib.metadata.version("granian")
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break  # "9rc1": a pre-release of 9, compare as 9
    return tuple(parts)


def granian_supported(version: tuple[int, ...] | None = None) -> bool:
    """Whether ``version`` (default: the installed one) is in :data:`SUPPORTED_GRANIAN`."""
    low, high = SUPPORTED_GRANIAN
    version = granian_version() if version is None else version
    return low <= version < high


class SignalLatch:
    """Records stop and reload signals without taking any lock, and wakes a waiter.

    Installed with :meth:`install` as the process's handler for SIGTERM, SIGINT
    and SIGHUP as early as ``voxgate serve`` starts, so that a signal arriving
    at any moment (while settings are read, while Granian starts) is kept. A
    handler only sets a flag and writes one byte to a non-blocking pipe; both
    are safe however often and wherever the main thread is interrupted.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.stop_requested = False
        self.reload_requested = False
        self.stop_signals = 0  # how many stop signals arrived (read by the waker for its log)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)

    def install(self) -> None:
        """Make this latch the handler of the stop and reload signals (main thread only)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_stop)
        signal.signal(RELOAD_SIGNAL, self.on_reload)

    def ignore_from_now_on(self) -> None:
        """Ignore the stop and reload signals (the server has stopped; main thread only)."""
        for sig in (*STOP_SIGNALS, RELOAD_SIGNAL):
            signal.signal(sig, signal.SIG_IGN)

    def on_stop(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:
            self._default(signum)
            return
        self.stop_requested = True
        self.stop_signals += 1
        self._wake()

    def on_reload(self, signum: int, frame: object) -> None:
        if os.getpid() != self.pid:
            return  # a worker forked before Granian set its handlers: as Granian, ignore it
        self.reload_requested = True
        self._wake()

    @staticmethod
    def _default(signum: int) -> None:
        # A worker forked before Granian installed its own handlers got a copy
        # of this one: behave as if it had none (die of the signal, so that the
        # master either is stopping anyway or respawns the worker).
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _wake(self) -> None:
        # A full pipe already holds a wake-up the reader has not taken yet.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write_fd, b"\0")

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until a signal arrived since the last call; False after ``timeout_s`` without.

        For the waker thread only.
        """
        ready, _, _ = select.select([self._read_fd], [], [], timeout_s)
        if ready:
            os.read(self._read_fd, 512)
        return bool(ready)


class MasterServer(Server):  # type: ignore[misc, valid-type]
    """Granian's process manager with lock-free signal handling (see the module docstring).

    ``latch`` is the :class:`SignalLatch` installed when ``voxgate serve``
    started; a stop asked before Granian started is acted on as soon as its
    workers are up. ``respawn_failed_workers`` (Granian's public option) makes
    a worker that dies unexpectedly be replaced instead of stopping the server.
    """

    def __init__(self, *args: Any, latch: SignalLatch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latch = latch
        self._waker = threading.Thread(target=self._wake_loop, name="voxgate-signals", daemon=True)
        self._waker.start()

    # Granian's startup() registers these two bound methods for the signals.
    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        self.latch.on_stop(*args, **kwargs)

    def signal_handler_reload(self, *args: Any, **kwargs: Any) -> None:
        self.latch.on_reload(*args, **kwargs)

    def _wake_loop(self) -> None:
        """Turn the latch's wake-ups into what Granian's main loop waits for."""
        announced = 0
        while True:
            # Once stopping, wake the main loop again every so often: Granian clears
            # the event after respawning a worker, which can swallow a wake-up that
            # came in between (then the master would wait for another signal).
            self.latch.wait(RESTOP_S if self.latch.stop_requested else None)
            if self.latch.stop_requested:
                self.stop_requested()
                if self.latch.stop_signals > announced:
                    if announced:
                        log.info("already stopping: signal ignored")
                    announced = self.latch.stop_signals
            if self.latch.reload_requested:
                self.latch.reload_requested = False
                self.reload_signal = True
            # Called from this thread, never from a signal handler: may block on the lock.
            self.main_loop_interrupt.set()

    def stop_requested(self) -> None:
        """Mark the server as stopping: workers that exit from now on are not failures."""
        self.interrupt_signal = True
        for worker in list(self.wrks):
            # A worker signalled together with the master may finish first.
            worker.interrupt_by_parent = True

    def _respawn_workers(self, workers: Any, *args: Any, **kwargs: Any) -> Any:
        """Granian's respawn, then forget the live gauges of workers that died unannounced.

        A worker that exits normally removes its own live metric files; one
        killed (SIGKILL, the OOM killer) cannot, and its last values (open
        streams, memory) would stay in every later sum.
        """
        old = [self.wrks[idx] for idx in workers if idx < len(self.wrks)]
        pids = [worker.inner.pid for worker in old]
        result = super()._respawn_workers(workers, *args, **kwargs)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # voxgate.metrics.MULTIPROC_ENV
            from prometheus_client import multiprocess

            for pid in pids:
                if pid is not None:
                    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        return result

    def shutdown(self, exit_code: int = 0) -> None:
        if self.interrupt_signal:
            # Exits of workers signalled with the master are part of the stop, not failures.
            self.interrupt_children.clear()
        super().shutdown(exit_code)


# -- worker processes -------------------------------------------------------------

# The shutdown trigger Granian made for this worker's event loop (see the hook below).
_WORKER_TRIGGERS: list[Any] = []


def install_worker_shutdown_hook() -> None:
    """Let each Granian worker find the trigger Granian's signal handler sets.

    Called by ``voxgate serve`` before Granian starts its workers, which then
    inherit it. Granian registers its SIGTERM/SIGINT handler on the worker's
    loop; with uvloop there is no way to read it back, so the trigger it sets
    is remembered when Granian makes it.
    """
    import granian._signals as granian_signals

    original: Callable[[Any], Any] = granian_signals.set_loop_signals
    if getattr(original, "voxgate_hook", False):
        return

    def set_loop_signals(loop: Any) -> Any:
        trigger = original(loop)
        _WORKER_TRIGGERS.append(trigger)
        return trigger

    set_loop_signals.voxgate_hook = True  # type: ignore[attr-defined]
    granian_signals.set_loop_signals = set_loop_signals


def worker_stop_callbacks(
    loop: asyncio.AbstractEventLoop,
) -> dict[signal.Signals, Callable[[], object]]:
    """What Granian does on SIGTERM/SIGINT in this worker, by signal; empty if unknown.

    From the hook above when ``voxgate serve`` installed it (any event loop,
    uvloop included); failing that (the app served by another Granian
    command line), from the asyncio loop's private handler table.
    """
    if _WORKER_TRIGGERS:
        trigger = _WORKER_TRIGGERS[-1]
        return {sig: trigger.set for sig in STOP_SIGNALS}
    stops: dict[signal.Signals, Callable[[], object]] = {}
    handlers = getattr(loop, "_signal_handlers", None)
    if isinstance(handlers, dict):
        for sig in STOP_SIGNALS:
            previous = handlers.get(sig)
            if isinstance(previous, asyncio.Handle):
                stops[sig] = previous._run
    return stops


def take_over_worker_signals(
    loop: asyncio.AbstractEventLoop,
    on_signal: Callable[[Callable[[], object]], None],
) -> None:
    """Run ``on_signal(granian_stop)`` on SIGTERM/SIGINT in this worker instead of Granian's stop.

    Registered on the loop (which wakes it while it runs), and also as the
    Python-level handler: uvloop drops a signal that lands while its loop is
    not running (a Granian worker's loop pauses between the lifespan startup
    and serving), so the handler queues ``on_signal`` for when the loop runs
    again. ``on_signal`` may thus run twice for one signal and must be
    idempotent.
    """
    for sig, stop in worker_stop_callbacks(loop).items():
        loop.add_signal_handler(sig, on_signal, stop)

        def handler(signum: int, frame: object, stop: Callable[[], object] = stop) -> None:
            # The loop's own wake-up (its wakeup fd) still works: only Python's handler changes.
            loop.call_soon_threadsafe(on_signal, stop)

        signal.signal(sig, handler)
