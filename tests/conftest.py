"""Shared test hooks: a failing test's report shows the logs of the servers it ran against."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from servers import RUNNING

# Real Redis and PostgreSQL servers, started on demand by the tests that ask for them.
from services import PostgresServer, postgres_server, redis_server  # noqa: F401


@pytest.fixture(scope="session")
def store_database(postgres_server: PostgresServer) -> str:  # noqa: F811
    """A database for store and writer tests; they empty it before each test."""
    return postgres_server.create_database("store_suite")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for server in RUNNING:
            report.sections.append((f"server log {server.base_url}", server.log_tail()))
    return report
