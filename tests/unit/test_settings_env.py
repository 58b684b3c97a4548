"""Settings from ``VOXGATE_*`` variables: errors name the variable, unknown names are found."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from voxgate.cli import build_parser
from voxgate.settings import Settings, SettingsError, unknown_variable_warnings, unknown_variables


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VOXGATE_WINDOW_BYTES": "abc"}, "VOXGATE_WINDOW_BYTES: expected an integer, got 'abc'"),
        ({"VOXGATE_WINDOW_BYTES": "1.5"}, "VOXGATE_WINDOW_BYTES: expected an integer"),
        ({"VOXGATE_IDLE_TIMEOUT_S": "soon"}, "VOXGATE_IDLE_TIMEOUT_S: expected a number"),
        ({"VOXGATE_DATABASE_MIGRATE": "perhaps"}, "VOXGATE_DATABASE_MIGRATE: expected true or"),
        ({"VOXGATE_DURABILITY": "never"}, "VOXGATE_DURABILITY: expected one of 'fsync', 'process'"),
        ({"VOXGATE_SSL_KEYFILE": "k.pem"}, "VOXGATE_SSL_CERTFILE and VOXGATE_SSL_KEYFILE"),
    ],
)
def test_a_bad_value_is_reported_by_variable_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as failure:
        Settings.from_env(env)
    assert message in str(failure.value)
    assert "$." not in str(failure.value), "a JSON path instead of the variable's name"


def test_good_values_convert() -> None:
    settings = Settings.from_env(
        {
            "VOXGATE_WINDOW_BYTES": "2097152",
            "VOXGATE_IDLE_TIMEOUT_S": "2.5",
            "VOXGATE_DATABASE_MIGRATE": "false",
            "VOXGATE_API_KEYS": f" {'a' * 32} , {'b' * 32} ,",
            "VOXGATE_DATABASE_URL": "postgresql://h/db",
        }
    )
    assert settings.window_bytes == 2097152
    assert settings.idle_timeout_s == 2.5
    assert settings.database_migrate is False
    assert settings.api_keys == ("a" * 32, "b" * 32)
    assert settings.database_url == "postgresql://h/db"


def test_unknown_variables_name_the_closest_known_one() -> None:
    env = {
        "VOXGATE_DURABILTY": "process",
        "VOXGATE_WINDOW_BYTE": "1",
        "VOXGATE_QQQ": "1",
        "VOXGATE_DATA_DIR": "/d",
        "VOXGATE_API_KEY": "for the client",
        "PATH": "/bin",
    }
    assert unknown_variables(env) == [
        ("VOXGATE_DURABILTY", "VOXGATE_DURABILITY"),
        ("VOXGATE_QQQ", None),
        ("VOXGATE_WINDOW_BYTE", "VOXGATE_WINDOW_BYTES"),
    ]
    assert unknown_variable_warnings({"VOXGATE_DURABILTY": "x"}) == [
        "unknown variable VOXGATE_DURABILTY is ignored; did you mean VOXGATE_DURABILITY?"
    ]


def test_voxgate_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", "--version"], capture_output=True, text=True, check=True
    )
    name, version = done.stdout.split()
    assert name == "voxgate"
    assert version[0].isdigit(), done.stdout


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # argparse has no public way to list sub-commands
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise AssertionError(f"no sub-command {name}")


def test_serve_help_describes_every_option() -> None:
    serve = _subparser(build_parser(), "serve")
    assert serve.description, "serve --help has no description"
    options = [action for action in serve._actions if action.option_strings]
    assert {opt for action in options for opt in action.option_strings} >= {
        "--host",
        "--port",
        "--workers",
        "--ssl-certfile",
        "--ssl-keyfile",
    }
    undocumented = [a.option_strings for a in options if not a.help or a.help == argparse.SUPPRESS]
    assert not undocumented, f"options without help: {undocumented}"
    text = serve.format_help()
    for variable in ("VOXGATE_SSL_CERTFILE", "VOXGATE_SHUTDOWN_GRACE_S"):
        assert variable in text, text


def _without_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _without_help(sub, f"{path} {name}")
        elif not action.help or action.help == argparse.SUPPRESS:
            out.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return out


def test_every_option_of_every_command_has_help() -> None:
    assert _without_help(build_parser(), "voxgate") == []
