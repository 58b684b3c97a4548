"""Settings: the one reader of the environment, including what ``voxgate serve`` sets."""

from __future__ import annotations

import pytest

from voxgate.settings import METRICS_DIR_ENV, WORKERS_ENV, Settings, SettingsError


def test_what_serve_sets_for_its_workers_is_read_into_settings() -> None:
    settings = Settings.from_env({WORKERS_ENV: "4", METRICS_DIR_ENV: "/run/voxgate-metrics"})
    assert settings.serve_workers == 4
    assert settings.metrics_dir == "/run/voxgate-metrics"


def test_the_metrics_dir_is_read_only_from_prometheus_clients_variable() -> None:
    assert Settings.from_env({"VOXGATE_METRICS_DIR": "/elsewhere"}).metrics_dir is None
    assert Settings.from_env({}) == Settings()


def test_a_bad_worker_count_is_a_settings_error() -> None:
    with pytest.raises(SettingsError):
        Settings.from_env({WORKERS_ENV: "many"})
