"""The store fixtures (every backend kind) for retention tests."""

from __future__ import annotations

from unit.store.conftest import Backend, backend, frame, payload_of, store

__all__ = ["Backend", "backend", "frame", "payload_of", "store"]
