"""The client's error types: :class:`ApiError` for the management API (the
server's own, from ``voxgate.errors``), one family for streams."""

from __future__ import annotations

from typing import Any

from voxgate.errors import ApiError, VoxgateError

__all__ = [
    "ApiError",
    "IntegrityError",
    "ReconnectExhausted",
    "StreamClosed",
    "StreamError",
    "StreamRejected",
    "Superseded",
]


class StreamError(VoxgateError):
    """Base of every error a :class:`~voxgate.client.StreamClient` raises."""


class StreamRejected(StreamError):
    """The server refused frames for good (``nack`` ``conflict``, ``too_large`` or ``sequence``).

    Such frames are never resent, so the stream cannot complete as sent.
    ``ranges`` are the refused inclusive seq ranges, ``reason`` the nack reason.
    """

    def __init__(self, ranges: list[list[int]], reason: str) -> None:
        self.ranges = ranges
        self.reason = reason
        super().__init__(f"server refused frames {ranges} ({reason}); they will not be resent")


class StreamClosed(StreamError):
    """The server closed the stream with a code that retrying cannot fix.

    ``code`` is the WebSocket close code (or the HTTP status of a refused
    upgrade), ``error`` and ``message`` come from the server's ``error`` message
    when it sent one.
    """

    def __init__(self, code: int, error: str = "", message: str = "") -> None:
        self.code = code
        self.error = error
        self.message = message
        text = f"stream closed by server with code {code}"
        if error or message:
            text += f" ({error}: {message})" if error else f" ({message})"
        super().__init__(text)


class Superseded(StreamClosed):
    """A newer connection took over this session's stream (close code 4409)."""


class ReconnectExhausted(StreamError):
    """The connection kept failing until the retry budget (attempts or deadline) ran out.

    ``last_error`` is the failure of the last attempt.
    """

    def __init__(self, attempts: int, last_error: BaseException | None) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(f"gave up after {attempts} connection attempts: {last_error!r}")


class IntegrityError(StreamError):
    """The server's ``complete`` disagrees with what this client sent.

    ``expected`` is what the client computed (CRC-32C, frames, bytes, last seq),
    ``actual`` what the server reported.
    """

    def __init__(self, expected: dict[str, int], actual: dict[str, Any]) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"end-to-end check failed: sent {expected}, server stored {actual}")
