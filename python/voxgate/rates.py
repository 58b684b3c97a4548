"""Rate limits as operators write them: ``COUNT/PERIOD`` (``"10/5m"``) or ``off``.

Kept free of other imports: settings validation uses it before anything else
(metrics in particular) is loaded.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

# The named rates, each set by VOXGATE_RATE_LIMIT_<NAME>.
# Counted per API key (the caller is a backend acting for many users):
SESSIONS = "sessions"  # POST /v1/sessions
TOKENS = "tokens"  # stream and listen tokens minted
TRANSCRIPTS = "transcripts"  # transcripts posted (either route)
# Counted per session:
SESSION_CONNECTS = "session_connects"  # stream connections accepted
# Counted per client IP (what anonymous or token-holding clients reach):
AUTH_FAILURES = "auth_failures"  # refused API keys and tokens: brute-force protection
UPLOADS = "uploads"  # HTTP uploads of frames
# Server-Sent Events and WebSocket listeners: per API key when one is used, else per IP.
LISTEN_CONNECTS = "listen_connects"
RATE_NAMES = (
    SESSIONS,
    TOKENS,
    TRANSCRIPTS,
    SESSION_CONNECTS,
    AUTH_FAILURES,
    UPLOADS,
    LISTEN_CONNECTS,
)
# The limits counted per API key when the request carries one (else per client IP).
PER_KEY = frozenset({SESSIONS, TOKENS, TRANSCRIPTS, LISTEN_CONNECTS})

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smh]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


class Rate(NamedTuple):
    """``requests`` per ``period_s`` seconds."""

    requests: int
    period_s: float

    def __str__(self) -> str:
        return f"{self.requests};w={math.ceil(self.period_s)}"


def parse_rate(text: str) -> Rate | None:
    """``"10/5m"`` as a Rate, ``"off"`` as None; raises ValueError for anything else.

    The period is a number of seconds with an optional unit ``s``, ``m`` or
    ``h``; a bare unit means one of it (``"120/m"``).
    """
    if text.strip().lower() in ("off", "none", "0", ""):
        return None
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not COUNT/PERIOD (for example 10/5m) or off")
    count_s, number_s, unit = match.groups()
    if number_s is None and not unit:
        raise ValueError(f"{text!r} has no period")
    period = float(number_s or 1) * _UNIT_S[unit]
    count = int(count_s)
    if count < 1 or period <= 0:
        raise ValueError(f"{text!r}: count and period must be positive")
    return Rate(count, period)
