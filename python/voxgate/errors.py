"""The root of voxgate's exceptions, and the one error of its HTTP API.

Every exception voxgate defines derives from :class:`VoxgateError`, so a
caller can catch all of them at once (the way ``aiokafka.errors`` roots its
errors in one class). The families, each in the module that raises it:

- :class:`ApiError`: an RFC 9457 problem of the HTTP API. Handlers raise it and
  the server answers it (``voxgate.api.problems``); the client raises it for
  an answer the server gave.
- ``voxgate.settings.SettingsError``: a setting that cannot be used.
- ``voxgate.store.base.StoreError`` (``WriterFull``, ``TransferError``): the store
  cannot do what was asked; the API answers 503.
- ``voxgate.tokens.base.TokenStoreError``: the token store is unreachable; 503.
- ``voxgate.retention.archive.ArchiveError``: an archive file is unsound.
- ``voxgate.store.backup.BackupError``: a backup cannot be made, checked or restored.
- ``voxgate.fanout.bus.BusError``: the event bus cannot publish.
- ``voxgate.client.StreamError`` and its subclasses: a client stream failed.

``voxgate._native.FrameError`` (broken framing, raised by the Rust core) is a
``ValueError`` and stays outside this tree: it is raised where the framing is
read and turned into a close code or a 400 right there. ``voxgate._native.BlockError``
(a stored block that is not what its index says) likewise: the stores turn it
into :class:`~voxgate.store.base.StoreError` where they read blocks.
"""

from __future__ import annotations

from typing import Any

# RFC 9457 "type" of voxgate's problems: this prefix and the error's short code.
TYPE_PREFIX = "urn:voxgate:error:"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def title_of(status: int) -> str:
    """The RFC 9110 reason phrase voxgate's problems carry as ``title``."""
    return _TITLES.get(status, "Error")


class VoxgateError(Exception):
    """Base of every exception voxgate defines."""


class ApiError(VoxgateError):
    """A problem of the HTTP API: its status, a short code and a sentence.

    On the server a handler raises it and the client gets RFC 9457 problem
    details (``headers`` go on the response, ``extra`` members into the body).
    In the client it is what a non-success answer raises: :meth:`from_problem`
    keeps the server's body in ``problem`` (a stand-in ``{"title": <body
    text>}`` when the body was not JSON).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}
        self.problem: dict[str, Any] = {
            "type": f"{TYPE_PREFIX}{code}",
            "title": title_of(status),
            "status": status,
            "detail": detail,
            **self.extra,
        }

    @classmethod
    def from_problem(cls, status: int, problem: dict[str, Any]) -> ApiError:
        """The error a server's answer of ``status`` with body ``problem`` means."""
        kind = problem.get("type")
        code = kind.removeprefix(TYPE_PREFIX) if isinstance(kind, str) else ""
        detail = problem.get("detail") or problem.get("title") or ""
        error = cls(status, code, str(detail))
        error.problem = problem
        return error
