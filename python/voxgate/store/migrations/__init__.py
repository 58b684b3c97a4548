"""Versioned PostgreSQL schema migrations: ``NNNN_name.sql`` files beside this module.

Each file brings the schema to version ``NNNN``. The table ``schema_migrations``
records every applied version with the SHA-256 of its file. A migration may
have a data step (``data.py``), Python run right after its SQL. Migrations run in
one transaction that first takes a PostgreSQL advisory lock, so instances
starting together apply them once, one after the other; a failed migration
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from typing import TypeAlias

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from voxgate.store.base import StoreError
from voxgate.store.migrations import data

# pg_advisory_xact_lock key taken while migrating ("voxgate" in ASCII).
ADVISORY_LOCK_KEY = 0x766F78676174
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    sha256 text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str
    sha256: str


Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


def load() -> list[Migration]:
    """Every migration shipped with voxgate, by version; raises StoreError on a bad file set."""
    found: list[Migration] = []
    for entry in importlib.resources.files(__name__).iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        sql = entry.read_text(encoding="utf-8")
        digest = hashlib.sha256(sql.encode()).hexdigest()
        found.append(Migration(int(match[1]), match[2], sql, digest))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"migrations are not numbered 1..n: {[m.version for m in found]}")
    return found


def latest_version() -> int:
    return len(load())


async def _applied(conn: Connection) -> dict[int, str]:
    rows = await conn.fetch("SELECT version, sha256 FROM schema_migrations")
    return {row["version"]: row["sha256"] for row in rows}


def _check_known(applied: dict[int, str], migrations: list[Migration]) -> None:
    by_version = {m.version: m for m in migrations}
    newer = [v for v in applied if v not in by_version]
    if newer:
        raise StoreError(
            f"the database schema is at version {max(newer)}, newer than this voxgate knows"
            f" ({len(migrations)}): upgrade voxgate"
        )
    for version, digest in applied.items():
        if by_version[version].sha256 != digest:
            raise StoreError(
                f"migration {version:04d}_{by_version[version].name}.sql differs from the one"
                " applied to this database"
            )


async def apply(conn: Connection) -> list[Migration]:
    """Apply every pending migration in one transaction under the advisory lock.

    Returns the migrations applied
    now (empty when the schema was current). Raises StoreError when the
    database holds a newer or a different schema.
    """
    migrations = load()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        _check_known(applied, migrations)
        pending = [m for m in migrations if m.version not in applied]
        for migration in pending:
            await conn.execute(migration.sql)
            step = data.STEPS.get(migration.version)
            if step is not None:
                await step(conn)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.sha256,
            )
    return pending


async def check(conn: Connection) -> None:
    """Raise StoreError unless every migration shipped with voxgate is applied."""
    migrations = load()
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = await _applied(conn) if exists else {}
    _check_known(applied, migrations)
    missing = [m.version for m in migrations if m.version not in applied]
    if missing:
        raise StoreError(
            f"the database schema lacks migration(s) {missing}: run `voxgate db migrate`"
            " or set VOXGATE_DATABASE_MIGRATE=true"
        )
