"""Keys voxgate keeps in the ASGI scope: the outermost layer (``voxgate.observe``) and
the handlers meet there, so both import them from here rather than from each other."""

from __future__ import annotations

# A WebSocket's ASGI (receive, send) as the server gave them, kept by the outermost
# layer: the stream's per-message loop uses them directly, past the per-call wrappers
# of Litestar and its middleware (the accept goes through them all).
RAW_CHANNEL = "voxgate.raw_channel"
# Where a handler that streams its answer leaves the coroutine function that closes
# the producer (``async_generator.aclose``), called once the answer has ended.
STREAM_CLOSE_SCOPE_KEY = "voxgate.stream_close"
