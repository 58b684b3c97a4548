"""The conformance suite again, on a server running the pure-Python core.

``VOXGATE_NATIVE=python`` is the benchmarks' baseline (b): the same server with
the Rust core swapped out. It must behave exactly as the real one, so every
conformance test runs against it too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.test_conformance import *  # noqa: F403  (the tests, re-collected against this server)
from servers import Server, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose hot path is voxgate._pynative."""
    with start_server(
        tmp_path_factory.mktemp("server"), env={"VOXGATE_NATIVE": "python"}
    ) as running:
        yield running


def test_the_server_runs_the_python_core(server: Server) -> None:
    assert "hot-path core: python (voxgate._pynative)" in server.log_path.read_text()
