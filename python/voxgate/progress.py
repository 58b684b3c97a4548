"""Progress display for long CLI commands: a rich bar on a terminal, nothing in scripts.

:func:`progress` gives a :class:`Progress`. It draws only when ``enabled`` (the
command was not asked for ``--json``) and both stdout and stderr are
terminals; it draws on stderr and disappears when done, so what a command
prints on stdout is the same with or without it. Otherwise every call is a
no-op.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Literal, Self


class Progress:
    """One task's progress: a bar when ``total`` is known, else a spinner and a count."""

    def __init__(self, enabled: bool) -> None:
        self.shown = enabled and sys.stdout.isatty() and sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None

    def start(
        self, description: str, total: float | None = None, *, unit: Literal["items", "bytes"]
    ) -> None:
        """Begin the task; ``unit`` "bytes" shows sizes, "items" a count out of ``total``."""
        if not self.shown or self._bar is not None:
            return
        # Imported only for a terminal: scripts never pay for it.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
        self._bar = RichProgress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            amount,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
    ) -> None:
        """Set what is done so far, the total, or the description."""
        if self._task is None:
            return
        fields: dict[str, Any] = {}
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        if description is not None:
            fields["description"] = description
        self._bar.update(self._task, **fields)

    def advance(self, amount: float = 1) -> None:
        """Count ``amount`` more done."""
        if self._task is not None:
            self._bar.advance(self._task, amount)

    def stop(self) -> None:
        """Remove the bar (idempotent)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def progress(enabled: bool = True) -> Progress:
    """A :class:`Progress` that draws only on a terminal and when ``enabled``."""
    return Progress(enabled)
