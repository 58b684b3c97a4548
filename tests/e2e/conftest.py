"""Fixtures for end-to-end tests.

``server`` is one real server shared by a test module (each test uses its own
sessions); a module that needs other settings overrides it with its own
``server`` fixture. ``api`` wraps an HTTP client holding the API key and opens
raw WebSocket streams (see ``wire.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from e2e.wire import Api
from servers import Server, start_server
from services import PostgresServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in item.path.as_posix():
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with default settings, shared by the tests of one module."""
    with start_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for ``server`` that sends the API key."""
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=30.0,
    ) as client:
        yield client


@pytest.fixture
async def api(server: Server, http: httpx.AsyncClient) -> AsyncIterator[Api]:
    """Sessions, tokens, uploads and raw streams on ``server``; streams close at teardown."""
    client = Api(server, http)
    yield client
    await client.close_streams()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_store_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment pointing every instance of a module at one shared store.

    ``sqlite``: the embedded store's data dir, which several processes of one
    host may open at once. ``postgres``: a fresh database of the test cluster.
    """
    if request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        database = postgres.create_database(f"shared_{uuid.uuid4().hex[:12]}")
        return {"VOXGATE_DATABASE_URL": database}
    shared = tmp_path_factory.mktemp("shared-store")
    return {"VOXGATE_DATA_DIR": str(shared / "data")}
