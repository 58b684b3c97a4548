"""``voxgate retention run`` that stops dead at a named point, for the kill tests.

Run as ``python paused_run.py POINT[,POINT...]``. It wraps the runner and its
store from outside (the product has no test hook): at each named point it prints
``retention paused at <point> <session id>`` to stderr and sleeps, so that the
test can SIGKILL it there. Points, in a move's order: begun (the store began the
move), writing (the first archive chunk is on disk, the rest is not), written
(the archive is renamed into place, not yet verified), verified (verified, the
move not yet finished), finished (the store finished the move to warm), expired
(the store finished the move to cold, the archive is not yet removed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import voxgate.retention.runner as runner_module
from voxgate.cli import main
from voxgate.settings import Settings
from voxgate.store.base import Store

PAUSE_S = 3600.0


class PausingRetention(runner_module.Retention):
    """The real runner, pausing at the points named on the command line."""

    points: frozenset[str] = frozenset()

    def __init__(self, store: Store, settings: Settings) -> None:
        super().__init__(store, settings)
        self._wrap_store(store)

    def _pause(self, point: str, session_id: str) -> None:
        if point in self.points:
            print(f"retention paused at {point} {session_id}", file=sys.stderr, flush=True)
            time.sleep(PAUSE_S)  # blocks the loop on purpose: nothing moves until the kill

    def _wrap_store(self, store: Store) -> None:
        """Pause around the store's move calls (on this instance only)."""

        def after(name: str, point: str) -> None:
            call: Callable[..., Awaitable[Any]] = getattr(store, name)

            async def wrapped(session_id: str, *args: Any) -> Any:
                done = await call(session_id, *args)
                if done:
                    self._pause(point, session_id)
                return done

            setattr(store, name, wrapped)

        finish_archive = store.finish_archive

        async def verified_then_finish(session_id: str, *args: Any) -> bool:
            self._pause("verified", session_id)
            done = await finish_archive(session_id, *args)
            if done:
                self._pause("finished", session_id)
            return done

        after("begin_move", "begun")
        after("finish_cold", "expired")
        store.finish_archive = verified_then_finish  # type: ignore[method-assign,assignment]

    async def _write(self, session_id: str, path: Path, chunks: AsyncIterator[bytes]) -> None:
        async def pausing() -> AsyncIterator[bytes]:
            first = True
            async for chunk in chunks:
                if not first:
                    # The first chunk is written to the temporary file, the rest is not.
                    self._pause("writing", session_id)
                first = False
                yield chunk

        await super()._write(session_id, path, pausing())
        self._pause("written", session_id)


if __name__ == "__main__":
    PausingRetention.points = frozenset(sys.argv[1].split(","))
    # The CLI imports the runner class when it runs: it gets this one.
    runner_module.Retention = PausingRetention  # type: ignore[misc]
    sys.exit(main(["retention", "run"]))
