"""Graceful shutdown under Granian: drain streams on SIGTERM before Granian stops serving.

Granian tears WebSockets down abruptly once its worker sees SIGTERM, before
the lifespan shutdown runs. :func:`take_over_signals` puts a drain first
(the runtime closes streams with 1001 after their acks), then does what
Granian's own handler does.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

# The shutdown trigger Granian made for this worker's event loop (see install_shutdown_hook).
_GRANIAN_SHUTDOWN: list[Any] = []


def install_shutdown_hook() -> None:
    """Let each Granian worker's runtime find the trigger Granian's signal handler sets.

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
        _GRANIAN_SHUTDOWN.append(trigger)
        return trigger

    set_loop_signals.voxgate_hook = True  # type: ignore[attr-defined]
    granian_signals.set_loop_signals = set_loop_signals


def take_over_signals(on_signal: Callable[[Callable[[], object]], None]) -> None:
    """Route SIGTERM and SIGINT of this worker's loop to ``on_signal(stop)``, where
    ``stop`` is what Granian would have done (stop serving, then lifespan shutdown)."""
    # Granian's shutdown trigger comes from the hook ``voxgate serve`` installs (any
    # event loop, uvloop included); failing that, asyncio keeps the handler in a
    # private table.
    loop = asyncio.get_running_loop()
    stops: dict[signal.Signals, Callable[[], object]] = {}
    if _GRANIAN_SHUTDOWN:
        trigger = _GRANIAN_SHUTDOWN[-1]
        stops = {sig: trigger.set for sig in (signal.SIGTERM, signal.SIGINT)}
    else:
        handlers = getattr(loop, "_signal_handlers", None)
        if isinstance(handlers, dict):
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = handlers.get(sig)
                if isinstance(previous, asyncio.Handle):
                    stops[sig] = previous._run
    for sig, stop in stops.items():
        loop.add_signal_handler(sig, on_signal, stop)
