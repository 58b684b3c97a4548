"""Webhook settings: a URL needs a secret, and bad values stop the server at start."""

from __future__ import annotations

import pytest

from voxgate.settings import Settings, SettingsError

SECRET = "0123456789abcdef"


URL = "VOXGATE_WEBHOOK_URL"
KEY = "VOXGATE_WEBHOOK_SECRET"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({URL: "https://hooks.example/v"}, KEY),
        ({URL: "https://hooks.example/v", KEY: "short"}, "at least 16"),
        ({URL: "ftp://hooks.example/v", KEY: SECRET}, URL),
        ({URL: "hooks.example/v", KEY: SECRET}, URL),
        ({URL: "http://[::1/v", KEY: SECRET}, URL),
        ({"VOXGATE_WEBHOOK_TIMEOUT_S": "0"}, "VOXGATE_WEBHOOK_TIMEOUT_S"),
    ],
)
def test_unusable_webhook_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_webhooks_are_off_unless_a_url_is_set() -> None:
    assert Settings().webhook_url == ""
    configured = Settings.from_env(
        {"VOXGATE_WEBHOOK_URL": "https://hooks.example/v", "VOXGATE_WEBHOOK_SECRET": SECRET}
    )
    assert configured.webhook_url == "https://hooks.example/v"
