"""Caps on concurrent connections per key, counted in this process."""

from __future__ import annotations


class ConnectionCounter:
    """Open connections per key (client IP) in this process, capped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        """Count one more connection for ``key``; False (and nothing counted) when at the cap."""
        n = self._open.get(key, 0)
        if self.cap and n >= self.cap:
            return False
        self._open[key] = n + 1
        return True

    def release(self, key: str) -> None:
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def count(self, key: str) -> int:
        return self._open.get(key, 0)
