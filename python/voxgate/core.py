"""The hot-path core this process uses: Rust (``voxgate._native``) or pure Python.

``VOXGATE_NATIVE=rust`` (the default) loads the Rust extension;
``VOXGATE_NATIVE=python`` loads :mod:`voxgate._pynative`, the same API in pure
Python, which exists only so benchmarks can compare the two. The choice is
made once, at import, and every module of the server takes the core from here.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

NATIVE_ENV = "VOXGATE_NATIVE"
MODULES = {"rust": "voxgate._native", "python": "voxgate._pynative"}


def _chosen() -> str:
    name = os.environ.get(NATIVE_ENV, "rust").strip().lower() or "rust"
    if name not in MODULES:
        raise ImportError(f"{NATIVE_ENV} must be one of {', '.join(MODULES)}, not {name!r}")
    return name


NAME = _chosen()

if TYPE_CHECKING:
    from voxgate import _native as native
else:
    native = importlib.import_module(MODULES[NAME])

__all__ = ["NAME", "native"]
