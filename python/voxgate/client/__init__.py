"""voxgate's Python client: the management API and the exactly-once streaming client."""

from voxgate.client.api import FRAMES_CONTENT_TYPE, Api, TokenFactory
from voxgate.client.errors import (
    ApiError,
    IntegrityError,
    ReconnectExhausted,
    StreamClosed,
    StreamError,
    StreamRejected,
    Superseded,
)
from voxgate.client.file import StreamReport, stream_file
from voxgate.client.stream import (
    Backoff,
    Completion,
    StreamClient,
    StreamStats,
    TokenMode,
    stream_url,
)

__all__ = [
    "FRAMES_CONTENT_TYPE",
    "Api",
    "ApiError",
    "Backoff",
    "Completion",
    "IntegrityError",
    "ReconnectExhausted",
    "StreamClient",
    "StreamClosed",
    "StreamError",
    "StreamRejected",
    "StreamReport",
    "StreamStats",
    "Superseded",
    "TokenFactory",
    "TokenMode",
    "stream_file",
    "stream_url",
]
