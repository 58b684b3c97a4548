"""API keys: the entries operators write, and constant-time lookup against every key."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from voxgate.api import auth
from voxgate.apikeys import ApiKey, parse_api_keys
from voxgate.settings import Settings, SettingsError, ensure_api_keys

A = "a" * 32
B = "b" * 40
C = "c" * 33


def test_entries_give_names_and_scopes() -> None:
    keys = parse_api_keys([f"acme:{A}", f"ops:admin:{B}", f"globex:tenant:{C}"])
    assert keys == (ApiKey("acme", A, False), ApiKey("ops", B, True), ApiKey("globex", C, False))


def test_bare_secrets_keep_working_as_admin_keys_named_default() -> None:
    assert parse_api_keys([A]) == (ApiKey("default", A, True),)
    assert [k.name for k in parse_api_keys([A, B])] == ["default", "default-2"]


def test_a_secret_may_contain_colons_after_the_name() -> None:
    secret = "x:" + "y" * 31
    assert parse_api_keys([f"acme:{secret}"]) == (ApiKey("acme", secret, False),)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([f"acme:{'s' * 31}"], "API key 'acme': the secret has 31 characters, at least 32"),
        (["short"], "API key #1 \\(a bare secret\\): the secret has 5 characters"),
        ([f"acme:{A}", f"acme:{B}"], "API key 'acme' is configured more than once"),
        ([f"acme:{A}", f"globex:{A}"], "has the same secret as another key"),
        ([f"bad name:{A}"], "API key #1: the name before ':' must be"),
    ],
)
def test_bad_entries_are_refused_at_start_naming_the_key(entries: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.from_env({"VOXGATE_API_KEYS": ",".join(entries)})
    assert "VOXGATE_API_KEYS" in str(caught.value)
    for entry in entries:  # the secret never appears in the message
        assert entry.rsplit(":", 1)[-1] not in str(caught.value)


def test_a_keys_file_holds_one_entry_per_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# tenants\nacme:{A}\n\nops:admin:{B}\n")
    settings = Settings.from_env({"VOXGATE_API_KEYS_FILE": str(path)})
    assert [(k.name, k.admin) for k in settings.configured_keys()] == [
        ("acme", False),
        ("ops", True),
    ]
    with pytest.raises(SettingsError, match="VOXGATE_API_KEYS_FILE: cannot read"):
        Settings.from_env({"VOXGATE_API_KEYS_FILE": str(tmp_path / "absent")})


def test_the_generated_key_is_long_enough_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    keys, generated = ensure_api_keys(settings)
    assert generated is not None
    assert len(generated) >= 32
    assert keys == (ApiKey("default", generated, True),)
    again, none = ensure_api_keys(settings)
    assert (again, none) == (keys, None)


def test_every_key_is_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = parse_api_keys([f"first:{A}", f"second:{B}", f"third:{C}"])
    assert auth.find_key(B, keys) == keys[1]
    # No early exit on the match: the time taken does not tell which key matched.
    assert [b for _, b in calls] == [k.secret.encode() for k in keys]
    calls.clear()
    assert auth.find_key(B[:-1] + "z", keys) is None
    assert len(calls) == len(keys)


@pytest.mark.parametrize("candidate", ["", "b", B + "and-more", "é" + B[1:], "\udcff" + B[1:]])
def test_near_misses_do_not_match(candidate: str) -> None:
    assert auth.find_key(candidate, parse_api_keys([f"first:{A}", f"second:{B}"])) is None
