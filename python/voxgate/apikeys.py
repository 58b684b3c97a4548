"""API keys as operators write them: ``name:secret``, ``name:admin:secret`` or a bare secret.

``VOXGATE_API_KEYS`` (comma-separated) or ``VOXGATE_API_KEYS_FILE`` (one entry
per line, ``#`` comments) hold the entries:

- ``name:secret``: a tenant key. It sees only the sessions it created.
- ``name:admin:secret``: an admin key; it sees every session.
  (``name:tenant:secret`` spells the default scope out.)
- ``secret`` alone: the single-key setups of earlier versions, an admin key
  named ``default`` (``default-2``, ... when there are several).

Names are ``[A-Za-z0-9_.-]``, 1 to 64 characters, unique: they appear in
logs, metrics and rate-limit keys, never the secret. Secrets are at least
32 characters (anything shorter can be guessed faster than a limit notices).

Kept free of other voxgate imports: settings validation uses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from voxgate.errors import VoxgateError

ADMIN = "admin"
TENANT = "tenant"
SCOPES = (ADMIN, TENANT)
DEFAULT_NAME = "default"
MIN_SECRET_CHARS = 32
# Where the guard leaves the request's ApiKey in the ASGI scope.
CALLER_SCOPE_KEY = "voxgate.api_key"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class ApiKey(NamedTuple):
    """One configured key: its name (safe to log), its secret and whether it is admin."""

    name: str
    secret: str
    admin: bool

    def __repr__(self) -> str:  # never the secret, whatever prints this
        return f"ApiKey(name={self.name!r}, admin={self.admin})"


class ApiKeyError(VoxgateError, ValueError):
    """An entry voxgate cannot use; the message names the key, never its secret."""


def parse_entry(entry: str, position: int) -> ApiKey:
    """One entry as an :class:`ApiKey`; ``position`` (1-based) names it in errors.

    Raises :class:`ApiKeyError` for a bad name, scope or a secret shorter than
    32 characters.
    """
    entry = entry.strip()
    if ":" not in entry:
        name, scope, secret = "", ADMIN, entry
    else:
        name, rest = entry.split(":", 1)
        scope, secret = TENANT, rest
        head, sep, tail = rest.partition(":")
        if sep and head in SCOPES:
            scope, secret = head, tail
        if not _NAME.match(name):
            raise ApiKeyError(
                f"API key #{position}: the name before ':' must be 1 to 64 of"
                " A-Z a-z 0-9 _ . - (entries are name:secret or name:admin:secret)"
            )
    label = f"API key {name!r}" if name else f"API key #{position} (a bare secret)"
    if len(secret) < MIN_SECRET_CHARS:
        raise ApiKeyError(
            f"{label}: the secret has {len(secret)} characters, at least {MIN_SECRET_CHARS}"
            " are required (make one with: python -c 'import secrets;"
            " print(secrets.token_urlsafe(32))')"
        )
    return ApiKey(name, secret, scope == ADMIN)


def parse_api_keys(entries: Iterable[str]) -> tuple[ApiKey, ...]:
    """Every entry parsed, bare secrets named ``default``, ``default-2``, ...

    Raises :class:`ApiKeyError` for a bad entry, a repeated name or a repeated secret.
    """
    keys: list[ApiKey] = []
    bare = 0
    for position, entry in enumerate((e for e in entries if e.strip()), start=1):
        key = parse_entry(entry, position)
        if not key.name:
            bare += 1
            key = key._replace(name=DEFAULT_NAME if bare == 1 else f"{DEFAULT_NAME}-{bare}")
        keys.append(key)
    names = [k.name for k in keys]
    for name in names:
        if names.count(name) > 1:
            raise ApiKeyError(f"API key {name!r} is configured more than once")
    secrets = [k.secret for k in keys]
    for key in keys:
        if secrets.count(key.secret) > 1:
            raise ApiKeyError(f"API key {key.name!r} has the same secret as another key")
    return tuple(keys)


def read_keys_file(path: str) -> list[str]:
    """The entries of a keys file: one per line, blank lines and ``#`` comments skipped.

    Raises :class:`ApiKeyError` when the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"cannot read {path}: {exc}") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
