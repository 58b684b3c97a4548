"""``voxgate serve`` as an operator meets it: generated API key, bad settings, restarts."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from servers import ServerError, start_server


def test_without_configured_keys_one_is_generated_stored_and_printed_once(tmp_path: Path) -> None:
    with start_server(tmp_path, env={"VOXGATE_API_KEYS": ""}) as server:
        key_file = server.data_dir / "api_key"
        assert key_file.exists(), "no api_key file in the data dir"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert key
        assert server.log_text().count(key) == 1, "the generated key is printed once"

        headers = {"Authorization": f"Bearer {key}"}
        created = httpx.post(f"{server.base_url}/v1/sessions", json={}, headers=headers)
        assert created.status_code == 201, created.text
        refused = httpx.post(
            f"{server.base_url}/v1/sessions", json={}, headers={"Authorization": "Bearer x"}
        )
        assert refused.status_code == 401

        server.restart()
        assert key_file.read_text().strip() == key, "the key changed across a restart"
        assert server.log_text().count(key) == 1, "the key was printed again on restart"
        again = httpx.get(f"{server.base_url}/v1/sessions/{created.json()['id']}", headers=headers)
        assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"VOXGATE_MAX_FRAME_BYTES": "8192", "VOXGATE_WINDOW_BYTES": "4096"},
            "VOXGATE_WINDOW_BYTES",
        ),
        ({"VOXGATE_DURABILITY": "sometimes"}, "durability"),
        ({"VOXGATE_REDIS_URL": "localhost:6379"}, "VOXGATE_REDIS_URL"),
        (
            {"VOXGATE_DATABASE_POOL_MIN": "5", "VOXGATE_DATABASE_POOL_MAX": "2"},
            "VOXGATE_DATABASE_POOL_MIN",
        ),
    ],
)
def test_bad_settings_stop_the_server_with_a_clear_message(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ServerError) as failure:
        start_server(tmp_path, env=env)
    message = str(failure.value)
    assert "exited with" in message, message
    assert named.lower() in message.lower(), message
    assert "Traceback" not in message, "a settings mistake deserves a message, not a traceback"


def test_sessions_survive_a_clean_restart(tmp_path: Path) -> None:
    with start_server(tmp_path) as server:
        headers = {"Authorization": f"Bearer {server.api_key}"}
        created = httpx.post(
            f"{server.base_url}/v1/sessions", json={"metadata": {"k": "v"}}, headers=headers
        )
        assert created.status_code == 201, created.text
        server.restart()
        session = httpx.get(
            f"{server.base_url}/v1/sessions/{created.json()['id']}", headers=headers
        )
        assert session.status_code == 200, session.text
        assert session.json()["metadata"] == {"k": "v"}
