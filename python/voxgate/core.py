"""The hot-path core: the Rust extension ``voxgate._native``.

Every module of the server takes the core from here, so the package has one
place that names the extension. (The benchmarks' pure-Python copy lives in
``tests/unit/native/pynative.py``; ``tests/unit/native/python_core/`` swaps it in from
outside the package.)
"""

from __future__ import annotations

from voxgate import _native as native

__all__ = ["native"]
