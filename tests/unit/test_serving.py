"""What ``voxgate serve`` asks of Granian for connections."""

from __future__ import annotations

import resource

from granian.constants import HTTPModes

from voxgate.serving import RESERVED_FDS, connection_slots, granian_options
from voxgate.settings import Settings


def test_connections_are_http1_with_the_header_timeout_and_the_slots() -> None:
    options = granian_options(Settings(http_header_timeout_s=2.5, max_connections=100))
    # HTTP/1 only: the automatic HTTP/1-or-2 mode waits for a first byte forever.
    assert options["http"] == HTTPModes.http1
    assert options["http1_settings"].header_read_timeout == 2500
    assert options["backpressure"] == 100


def test_slots_stay_within_what_the_process_may_open() -> None:
    assert connection_slots(20_000, 1024) == 1024 - RESERVED_FDS
    assert connection_slots(20_000, 65_536) == 20_000
    assert connection_slots(20_000, resource.RLIM_INFINITY) == 20_000
    assert connection_slots(20_000, 10) == 1
