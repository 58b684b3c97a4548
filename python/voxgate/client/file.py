"""Stream a file's bytes into a session, optionally paced like a live capture."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxgate.client.api import TokenFactory
from voxgate.client.stream import StreamClient, StreamStats

# Bytes read from disk per blocking read, off the event loop.
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class StreamReport:
    """What :func:`stream_file` sent and what the server confirmed."""

    session_id: str
    frames: int  # frames in the stream, END frame included
    bytes: int  # payload bytes
    stream_crc32c: int
    verified: bool  # the server's complete matched the client's CRC, frames and bytes
    elapsed_s: float
    stats: StreamStats


async def stream_file(
    path: str | Path,
    *,
    base_url: str,
    session_id: str,
    token_factory: TokenFactory,
    frame_bytes: int = 640,
    frames_per_message: int = 1,
    bytes_per_second: float | None = None,
    complete_timeout_s: float | None = 60.0,
    offset: int = 0,
    length: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    **client_options: Any,
) -> StreamReport:
    """Send ``path`` as ``frame_bytes``-sized frames, end the stream and verify ``complete``.

    With ``bytes_per_second`` the frames are paced like a live capture
    (``pts_us`` follows the pacing); without it they go as fast as the window
    allows. ``offset`` and ``length`` pick the audio out of a container (a WAV
    file's data chunk, see :mod:`voxgate.client.audiofile`); by default the whole
    file is sent. ``on_progress`` is called with the payload bytes handed to the
    client so far after each chunk read from the file. ``client_options`` go to
    :class:`StreamClient`. Raises ``OSError``
    when the file cannot be read, ``ValueError`` for a bad ``frame_bytes`` and
    every :class:`~voxgate.client.StreamError` of the stream (``IntegrityError``
    when the server's CRC disagrees).
    """
    if frame_bytes < 1:
        raise ValueError("frame_bytes must be at least 1")
    if bytes_per_second is not None and bytes_per_second <= 0:
        raise ValueError("bytes_per_second must be positive")
    started = time.monotonic()
    client = StreamClient(
        base_url,
        session_id,
        token_factory,
        frames_per_message=frames_per_message,
        **client_options,
    )
    handle = await asyncio.to_thread(Path(path).open, "rb")
    remaining = length
    try:
        if offset:
            await asyncio.to_thread(handle.seek, offset)
        async with client:
            sent = 0
            pending = b""
            while True:
                want = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
                chunk = await asyncio.to_thread(handle.read, want) if want else b""
                if remaining is not None:
                    remaining -= len(chunk)
                data = pending + chunk
                last_chunk = not chunk
                cut = len(data) if last_chunk else len(data) - len(data) % frame_bytes
                for at in range(0, cut, frame_bytes):
                    payload = data[at : at + frame_bytes]
                    pts_us = None
                    if bytes_per_second is not None:
                        pts_us = int(sent * 1_000_000 / bytes_per_second)
                        delay = started + sent / bytes_per_second - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await client.send(payload, pts_us)
                    sent += len(payload)
                pending = data[cut:]
                if on_progress is not None:
                    on_progress(sent)
                if last_chunk:
                    break
            await client.end()
            completion = await client.wait_complete(complete_timeout_s)
    finally:
        await asyncio.to_thread(handle.close)
    return StreamReport(
        session_id=session_id,
        frames=completion.frames,
        bytes=completion.bytes,
        stream_crc32c=completion.stream_crc32c,
        verified=completion.verified,
        elapsed_s=time.monotonic() - started,
        stats=client.stats,
    )
