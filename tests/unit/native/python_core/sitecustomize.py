"""Runs voxgate on the pure-Python core: put this folder on ``PYTHONPATH``.

Python imports ``sitecustomize`` at start-up in every process, Granian's
workers included, so a server started with ``PYTHONPATH=<this folder>``
imports ``tests/unit/native/pynative.py`` wherever it imports ``voxgate._native``.
This is how the benchmarks' baseline (b) and ``tests/e2e/test_python_core.py``
run the same server with the Rust core swapped out; the package itself has no
switch for it.
"""

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[3]))  # tests/: after everything else

import voxgate
from unit.native import pynative

sys.modules["voxgate._native"] = pynative
voxgate._native = pynative  # type: ignore[attr-defined]
