"""Rate limits as operators write them: ``COUNT/PERIOD`` (``"10/5m"``) or ``off``.

Kept free of other imports: settings validation uses it before anything else
(metrics in particular) is loaded.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

# The named rates, each set by VOXGATE_RATE_LIMIT_<NAME>.
SESSIONS = "sessions"  # POST /v1/sessions, per client IP
TOKENS = "tokens"  # POST /v1/sessions/{id}/tokens, per client IP
TRANSCRIPTS = "transcripts"  # transcript relay, per client IP
SESSION_CONNECTS = "session_connects"  # stream connections accepted, per session
RATE_NAMES = (SESSIONS, TOKENS, TRANSCRIPTS, SESSION_CONNECTS)

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
