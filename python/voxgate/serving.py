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

import logging
import math
import resource
from typing import Any

from voxgate.settings import Settings

log = logging.getLogger("voxgate")

# File descriptors a worker keeps for itself (store, segments, Redis, logs) besides
# its connections.
RESERVED_FDS = 256


def connection_slots(max_connections: int, fd_limit: int) -> int:
    """Connection slots per worker: ``max_connections``, or fewer when the process may
    not open that many files (accepting past the limit fails over and over instead)."""
    if fd_limit == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, fd_limit - RESERVED_FDS))


def granian_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``granian.server.Server`` that bound what connections hold."""
    from granian.constants import HTTPModes
    from granian.http import HTTP1Settings

    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    slots = connection_slots(settings.max_connections, fd_limit)
    if slots < settings.max_connections:
        log.warning(
            "VOXGATE_MAX_CONNECTIONS is %d but this process may open %d files: %d connections"
            " per worker; raise the limit (ulimit -n, LimitNOFILE) to use the setting",
            settings.max_connections,
            fd_limit,
            slots,
        )
    return {
        "http": HTTPModes.http1,
        "http1_settings": HTTP1Settings(
            header_read_timeout=math.ceil(settings.http_header_timeout_s * 1000)
        ),
        "backpressure": slots,
    }
