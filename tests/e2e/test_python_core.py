"""The conformance suite again, on a server running the pure-Python core.

The benchmarks' baseline (b) is the same server with the Rust core swapped
out for ``tests/unit/native/pynative.py`` from outside the package
(``PYTHONPATH=tests/unit/native/python_core``). It must behave exactly as the real one, so every
conformance test runs against it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.test_conformance import *  # noqa: F403  (the tests, re-collected against this server)
from servers import Server, start_server

PYTHON_CORE = Path(__file__).resolve().parent.parent / "unit" / "native" / "python_core"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose hot path is tests/unit/native/pynative.py."""
    with start_server(
        tmp_path_factory.mktemp("server"), env={"PYTHONPATH": str(PYTHON_CORE)}
    ) as running:
        yield running


def test_the_server_runs_the_python_core(server: Server) -> None:
    assert "hot-path core: unit.native.pynative" in server.log_path.read_text()
