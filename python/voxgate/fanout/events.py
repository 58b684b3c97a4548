"""What listeners receive, and the bus messages it is made from.

Bus messages (JSON objects, key ``k``) travel between instances:

- ``{"k":"p","acked":[[s,e]...],"next_seq","frames","bytes","end_seq","complete",
  "stream_crc32c","window"}``: a commit stored ``acked`` (once per session per commit batch)
- ``{"k":"t","transcript":{...}}``: a transcript was stored
- ``{"k":"s","state":"deleted"}``: the session was deleted
- ``{"k":"r"}``: messages for the session were lost; re-read the store

Listener events (docs/api.md "Listeners") are JSON objects with ``type``; each
is encoded once per feed and shared by every listener of the session.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import orjson

from voxgate.store.base import Progress, Transcript

# Listener event kinds.
HELLO = "hello"
TRANSCRIPT = "transcript"
PROGRESS = "progress"
STATE = "state"
PONG = "pong"
AUDIO = "audio"
KEEPALIVE = "keepalive"

# A progress event lists at most this many gaps (and says so when there are more).
MAX_MISSING_RANGES = 1000


class Out(NamedTuple):
    """One thing to send to a listener: a JSON event, or audio frames back to back."""

    kind: str
    data: bytes
    event_id: int | None = None  # transcript id: the SSE ``id`` and the resume point


class End(NamedTuple):
    """The listener ends: a close code, and the ``error`` sent before it (4xxx)."""

    code: int
    error: str
    message: str
    resume: dict[str, int] | None = None


KEEPALIVE_OUT = Out(KEEPALIVE, b"")


def progress_message(acked: list[list[int]], progress: Progress, window: int | None) -> bytes:
    """The bus message for one commit batch's effect on one session."""
    return orjson.dumps(
        {
            "k": "p",
            "acked": acked,
            "next_seq": progress.next_seq,
            "frames": progress.frames,
            "bytes": progress.bytes,
            "end_seq": progress.end_seq,
            "complete": progress.complete,
            "stream_crc32c": progress.stream_crc32c,
            "window": window,
        }
    )


def transcript_message(transcript: Transcript) -> bytes:
    return msgspec.json.encode({"k": "t", "transcript": transcript})


DELETED_MESSAGE = orjson.dumps({"k": "s", "state": "deleted"})


def transcript_out(transcript: dict[str, Any] | Transcript) -> Out:
    """The listener event for a stored transcript (from the bus or from the store)."""
    fields = msgspec.to_builtins(transcript) if isinstance(transcript, Transcript) else transcript
    event = {"type": TRANSCRIPT, **fields}
    return Out(TRANSCRIPT, orjson.dumps(event), int(event["id"]))


def event_out(kind: str, **fields: Any) -> Out:
    return Out(kind, orjson.dumps({"type": kind, **fields}))


def with_dropped(out: Out, dropped: int) -> Out:
    """A progress event telling this listener how many progress events it missed before it."""
    return Out(out.kind, out.data[:-1] + b',"dropped":' + str(dropped).encode() + b"}")
