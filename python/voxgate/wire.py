"""The wire protocol's constants: the one place their values live (docs/protocol.md).

The server, the Python client and the tests import them from here; the browser SDK
(``voxgate/client/web/voxgate.js``) repeats them, and a test compares the two so
they cannot drift apart. Nothing here does I/O or depends on the rest of voxgate.
"""

from __future__ import annotations

import enum
from typing import Final

# --- versions and WebSocket subprotocols -----------------------------------------

#: The header's version byte and ``hello.protocol``.
PROTOCOL_VERSION: Final = 1
#: The subprotocol a client offers and the server selects.
SUBPROTOCOL: Final = "voxgate.v1"
#: Offered beside :data:`SUBPROTOCOL`, followed by the stream token (for browsers).
TOKEN_SUBPROTOCOL_PREFIX: Final = "voxgate.token."

# --- frames ----------------------------------------------------------------------

#: The first two header bytes, ASCII ``VF`` (0x5646 as a big-endian u16).
MAGIC: Final = b"VF"
#: Bytes of a frame header.
HEADER_SIZE: Final = 24
#: ``struct`` layout of the header, big-endian: magic, version, flags, seq, pts_us,
#: length, crc32c.
HEADER_FORMAT: Final = ">2sBBIQII"
#: Flag bit of the stream's last frame.
FLAG_END: Final = 0x01
#: Flag bits that must be 0.
RESERVED_FLAGS: Final = 0xFE
#: Highest ``seq``, ``length`` and ``crc32c`` (u32) and ``pts_us`` (u64).
MAX_U32: Final = 0xFFFF_FFFF
MAX_U64: Final = 0xFFFF_FFFF_FFFF_FFFF
#: Content type of an HTTP upload body: frames back to back.
FRAMES_CONTENT_TYPE: Final = "application/vnd.voxgate.frames"


class MessageType(enum.StrEnum):
    """``type`` of every JSON control message."""

    HELLO = "hello"
    ACK = "ack"
    NACK = "nack"
    COMPLETE = "complete"
    ERROR = "error"
    PING = "ping"
    PONG = "pong"


class NackReason(enum.StrEnum):
    """Why a ``nack`` refused frames; only ``checksum`` and ``window`` are worth a resend."""

    CHECKSUM = "checksum"
    WINDOW = "window"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    SEQUENCE = "sequence"


NACK_REASONS: Final = frozenset(reason.value for reason in NackReason)
#: Nack reasons after which the same frame may be sent again.
RESENDABLE_NACKS: Final = frozenset({NackReason.CHECKSUM.value, NackReason.WINDOW.value})


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server sends on a stream."""

    NORMAL = 1000
    GOING_AWAY = 1001  # shutdown: reconnect
    MESSAGE_TOO_BIG = 1009  # above max_message_bytes
    INTERNAL_ERROR = 1011  # unexpected server error: reconnect
    TRY_AGAIN_LATER = 1013  # draining or a dependency down: reconnect with backoff
    BAD_REQUEST = 4400  # malformed frame or control message
    UNAUTHORIZED = 4401  # missing, invalid, expired or used token
    FORBIDDEN = 4403  # token of another session or kind, or Origin not allowed
    NOT_FOUND = 4404  # unknown session
    IDLE = 4408  # no message for idle_timeout_s
    SUPERSEDED = 4409  # a newer connection took over the session's stream
    GONE = 4410  # session archived or deleted
    TOO_MANY = 4429  # too many connections, or a rate limit


class ErrorCode(enum.StrEnum):
    """``code`` of the ``error`` message sent before a stream's close."""

    # 4400: the frame decoder's verdict on broken framing, or a bad control message.
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    RESERVED_FLAGS = "reserved_flags"
    EMPTY_FRAME = "empty_frame"
    TRUNCATED = "truncated"
    BAD_CONTROL = "bad_control"
    # 1009
    MESSAGE_TOO_BIG = "message_too_big"
    # 4401, 4403, 4404, 4408, 4409, 4410
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    ORIGIN = "origin"
    NOT_FOUND = "not_found"
    IDLE = "idle"
    SUPERSEDED = "superseded"
    GONE = "gone"
    # 4429
    TOO_MANY_STREAMS = "too_many_streams"
    RATE_LIMITED = "rate_limited"
    # 1001, 1011, 1013
    GOING_AWAY = "going_away"
    INTERNAL = "internal"
    DRAINING = "draining"
    STORE_UNAVAILABLE = "store_unavailable"
    TOKEN_STORE_UNAVAILABLE = "token_store_unavailable"


#: The longest close reason the server sends (a close frame's payload is 125 bytes).
MAX_CLOSE_REASON_BYTES: Final = 123
