"""``/health`` and ``/ready`` (store and Redis), and what ``voxgate serve`` says at start."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from servers import Server, free_port, start_server
from services import PostgresServer, RedisServer

SINGLE_INSTANCE_WARNING = "single-instance only"


def ready(server: Server) -> tuple[int, dict[str, object]]:
    response = httpx.get(f"{server.base_url}/ready", timeout=10)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    timestamp = body.get("timestamp")
    assert isinstance(timestamp, str), body
    assert datetime.fromisoformat(timestamp).tzinfo is not None, body
    return response.status_code, body


def component(body: dict[str, object], name: str) -> dict[str, object]:
    components = body["components"]
    assert isinstance(components, dict), body
    found = components[name]
    assert isinstance(found, dict), body
    return found


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password="s3cret-pw")
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_without_redis_ready_reports_the_store_and_start_warns_single_instance(
    tmp_path: Path,
) -> None:
    with start_server(tmp_path) as server:
        health = httpx.get(f"{server.base_url}/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        status, body = ready(server)
        assert status == 200, body
        assert (body["status"], body["failing"]) == ("ok", []), body
        store = component(body, "store")
        assert store["status"] == "up", body
        assert isinstance(store["latency_ms"], float | int), body
        assert component(body, "redis") == {"status": "not_configured", "connected": False}
        warnings = [
            line
            for line in server.log_text().splitlines()
            if '"level":"warning"' in line and SINGLE_INSTANCE_WARNING in line  # JSON lines
        ]
        assert len(warnings) == 1, server.log_tail()
        assert "VOXGATE_REDIS_URL" in warnings[0]


def test_with_redis_behind_a_password_all_works_and_the_password_is_never_logged(
    tmp_path: Path, password_redis: RedisServer
) -> None:
    with start_server(tmp_path, env={"VOXGATE_REDIS_URL": password_redis.url}) as server:
        status, body = ready(server)
        assert status == 200, body
        redis = component(body, "redis")
        assert (redis["status"], redis["connected"]) == ("up", True), body
        headers = {"Authorization": f"Bearer {server.api_key}"}
        sid = httpx.post(f"{server.base_url}/v1/sessions", json={}, headers=headers).json()["id"]
        minted = httpx.post(f"{server.base_url}/v1/sessions/{sid}/tokens", headers=headers)
        assert minted.status_code == 201, minted.text
        log = server.log_text()
        assert SINGLE_INSTANCE_WARNING not in log
        assert f"127.0.0.1:{password_redis.port}" in log, "the Redis in use is named at start"
        assert "s3cret-pw" not in log


def test_a_wrong_redis_password_shows_as_redis_down(
    tmp_path: Path, password_redis: RedisServer
) -> None:
    url = f"redis://:wrong-pw@127.0.0.1:{password_redis.port}/0"
    with start_server(tmp_path, env={"VOXGATE_REDIS_URL": url}) as server:
        status, body = ready(server)
        assert status == 503, body
        assert body["failing"] == ["redis"], body
        assert component(body, "redis")["connected"] is False, body
        assert "wrong-pw" not in server.log_text()


def test_unreachable_redis_at_start_is_not_fatal_and_never_falls_back(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with start_server(tmp_path, env={"VOXGATE_REDIS_URL": url}) as server:
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        status, body = ready(server)
        assert status == 503, body
        assert (body["status"], body["failing"]) == ("unavailable", ["redis"]), body
        assert component(body, "store")["status"] == "up", body
        headers = {"Authorization": f"Bearer {server.api_key}"}
        sid = httpx.post(f"{server.base_url}/v1/sessions", json={}, headers=headers).json()["id"]
        # No silent in-memory fallback: minting is refused until Redis answers.
        minted = httpx.post(f"{server.base_url}/v1/sessions/{sid}/tokens", headers=headers)
        assert minted.status_code == 503, minted.text
        assert minted.headers["Retry-After"].isdigit()
        assert SINGLE_INSTANCE_WARNING not in server.log_text()


def test_ready_names_the_store_while_postgresql_is_down(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    database = postgres_server.create_database(f"ready_{uuid.uuid4().hex[:12]}")
    with start_server(tmp_path, env={"VOXGATE_DATABASE_URL": database}) as server:
        status, body = ready(server)
        assert status == 200, body
        postgres_server.stop()
        try:
            status, body = ready(server)
            assert status == 503, body
            assert (body["status"], body["failing"]) == ("unavailable", ["store"]), body
            store = component(body, "store")
            assert store["status"] == "down", body
            assert isinstance(store["error"], str), body
            assert httpx.get(f"{server.base_url}/health").status_code == 200
        finally:
            postgres_server.start()
        for _ in range(100):
            status, body = ready(server)
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200, f"not ready 10 s after PostgreSQL came back: {body}"
