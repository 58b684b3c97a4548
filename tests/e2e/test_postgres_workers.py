"""``voxgate serve --workers 2`` on the PostgreSQL store: the workers share one database.

The same tests as ``test_workers.py`` (imported), against PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from e2e.test_workers import (  # noqa: F401
    test_a_token_is_single_use_across_workers,
    test_frames_are_stored_once_whichever_worker_gets_them,
    test_superseding_connection_wins_on_either_worker,
    test_two_sessions_stream_concurrently_to_completion,
)
from servers import Server, start_server
from services import PostgresServer


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: PostgresServer
) -> Iterator[Server]:
    database = postgres_server.create_database(f"e2e_workers_{uuid.uuid4().hex[:8]}")
    env = {"VOXGATE_DATABASE_URL": database, "VOXGATE_DATABASE_POOL_MAX": "4"}
    with start_server(tmp_path_factory.mktemp("pg-workers"), env=env, workers=2) as running:
        yield running
