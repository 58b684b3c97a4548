"""How Granian holds HTTP connections: what ``voxgate serve`` passes to its server.

Silent and slow clients must not hold connections for long, nor starve
others: Granian gives each worker a number of connection slots (its
``backpressure``) and, past them, accepts nothing more, so a thousand idle
sockets were enough to make ``/health`` time out. Hence:

- HTTP/1 only. Granian's automatic HTTP/1-or-2 detection waits for the
  first bytes with no timeout at all: a connection that sends nothing was
  held for good. (WebSocket upgrades are HTTP/1; nothing here speaks
  HTTP/2 without TLS.)
- The header read timeout: request line and headers within
  ``VOXGATE_HTTP_HEADER_TIMEOUT_S``, from the moment the connection opens or
  the previous answer ends, else the connection is closed. This closes
  silent, slow-header and idle kept-alive connections alike.
- ``VOXGATE_MAX_CONNECTIONS`` slots per worker, well above the streams and
  listeners one worker serves, so that idle sockets are closed by the
  timeout long before they use the slots up.

Request bodies that stall are handled in :mod:`voxgate.observe`
(``VOXGATE_HTTP_BODY_TIMEOUT_S``).
"""

from __future__ import annotations

import math
from typing import Any

from voxgate.settings import Settings


def granian_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``granian.server.Server`` that bound what connections hold."""
    from granian.constants import HTTPModes
    from granian.http import HTTP1Settings

    return {
        "http": HTTPModes.http1,
        "http1_settings": HTTP1Settings(
            header_read_timeout=math.ceil(settings.http_header_timeout_s * 1000)
        ),
        "backpressure": settings.max_connections,
    }
