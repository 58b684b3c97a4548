"""``voxgate db``: ``migrate``, ``migrate-from-sqlite DATA_DIR``, and the backup commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import asyncpg
import msgspec

from voxgate.cli.backup import add_backup_commands
from voxgate.progress import progress
from voxgate.settings import Settings, SettingsError
from voxgate.store import migrations
from voxgate.store.base import StoreError
from voxgate.store.postgres import PostgresStore, redact
from voxgate.store.sqlite import SqliteStore
from voxgate.store.transfer import copy_sqlite_to_postgres


def add_db_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``db`` and its sub-commands."""
    db = subparsers.add_parser(
        "db", help="PostgreSQL migrations and transfer; backups of the embedded store"
    )
    commands = db.add_subparsers(dest="db_command", required=True)
    add_backup_commands(commands)
    url_help = "PostgreSQL URL (default: env VOXGATE_DATABASE_URL)"

    migrate = commands.add_parser(
        "migrate",
        help="apply pending schema migrations",
        description="Apply every pending migration in one transaction, under an advisory lock.",
    )
    migrate.add_argument("--database-url", default=None, help=url_help)
    migrate.set_defaults(handler=run_migrate)

    copy = commands.add_parser(
        "migrate-from-sqlite",
        help="copy an embedded store into PostgreSQL and verify it",
        description=(
            "Copy sessions (tombstones included) and frames with their payloads from the "
            "embedded store in DATA_DIR into PostgreSQL, then read every frame back and check "
            "it against the source CRC-32C. Safe to run again: an interrupted run is finished, "
            "sessions already copied are skipped."
        ),
    )
    copy.add_argument("data_dir", metavar="DATA_DIR", help="the embedded store's data dir")
    copy.add_argument("--database-url", default=None, help=url_help)
    copy.add_argument(
        "--batch-frames", type=int, default=1000, help="frames per transaction (default 1000)"
    )
    copy.add_argument("--quiet", action="store_true", help="print the summary only")
    copy.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object only, no progress bar",
    )
    copy.set_defaults(handler=run_migrate_from_sqlite)

    check = commands.add_parser(
        "check",
        help="check the embedded store's index against its segments (--repair: rebuild it)",
        description=(
            "Read every segment of the embedded store, take every block out of it and "
            "compare the index with them: every extent with its block, every block with "
            "the extents, every session's counters with what its blocks add up to. "
            "With --repair, make the index what the segments say (rows rebuilt, lost "
            "segments and sessions indexed again, counters recomputed). Stop the server "
            "before a repair. Exit 0: consistent (or repaired), 1: problems found."
        ),
    )
    check.add_argument("--repair", action="store_true", help="rebuild the index from the segments")
    check.add_argument(
        "--data-dir", default=None, help="the embedded store's data dir (default VOXGATE_DATA_DIR)"
    )
    check.set_defaults(handler=run_check)


async def run_check(args: argparse.Namespace) -> int:
    """``voxgate db check [--repair]``; prints the report as JSON."""
    data_dir = args.data_dir
    if data_dir is None:
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            print(f"voxgate: {exc}", file=sys.stderr)
            return 2
        if settings.database_url:
            print(
                "voxgate db check: checks the embedded store; with VOXGATE_DATABASE_URL "
                "each PostgreSQL row holds its block and is checked as it is read",
                file=sys.stderr,
            )
            return 2
        data_dir = settings.data_dir
    store = SqliteStore(data_dir)
    try:
        await store.open()
        try:
            report = await store.check(repair=args.repair)
        finally:
            await store.close()
    except StoreError as exc:
        print(f"voxgate db check: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(report).decode())
    return 0 if report.ok else 1


async def check_database(settings: Settings) -> None:
    """Before ``voxgate serve`` starts workers: reach the database and migrate (or check) it.

    Raises StoreError with a message fit for the operator.
    """
    if not settings.database_url:
        return
    store = PostgresStore(
        settings.database_url,
        pool_min=0,
        pool_max=1,
        migrate=settings.database_migrate,
        timeout_s=settings.database_timeout_s,
    )
    await store.open()
    await store.close()


def _database_url(args: argparse.Namespace) -> str | None:
    if args.database_url:
        return str(args.database_url)
    try:
        url = Settings.from_env().database_url
    except SettingsError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return None
    if not url:
        print("voxgate: set VOXGATE_DATABASE_URL or pass --database-url", file=sys.stderr)
        return None
    return url


async def run_migrate(args: argparse.Namespace) -> int:
    """Apply pending migrations; 0 on success, 1 when the database refuses, 2 on bad usage."""
    url = _database_url(args)
    if url is None:
        return 2
    try:
        conn = await asyncpg.connect(url, timeout=30)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        print(f"voxgate: cannot connect to {redact(url)}: {exc}", file=sys.stderr)
        return 1
    try:
        applied = await migrations.apply(conn)
    except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        print(f"voxgate: migrating {redact(url)} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    print(f"schema at version {migrations.latest_version()}")
    return 0


async def run_migrate_from_sqlite(args: argparse.Namespace) -> int:
    """Copy and verify; 0 when every session is in PostgreSQL and checked, else 1 (2: usage)."""
    url = _database_url(args)
    if url is None:
        return 2
    if args.batch_frames < 1:
        print("voxgate: --batch-frames must be at least 1", file=sys.stderr)
        return 2

    with progress(not args.json) as bar:
        bar.start("copying sessions", unit="items")

        def say(line: str) -> None:
            # One line per session copied or checked: the count is the progress.
            bar.advance()
            if not args.quiet and not args.json:
                print(line, flush=True)

        try:
            report = await copy_sqlite_to_postgres(
                Path(args.data_dir), url, batch_frames=args.batch_frames, say=say
            )
        except StoreError as exc:
            print(f"voxgate: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(
            json.dumps(
                {
                    "sessions": report.sessions,
                    "copied": report.copied,
                    "tombstones": report.tombstones,
                    "already": report.already,
                    "failed": report.failed,
                    "frames": report.frames,
                    "bytes": report.bytes,
                    "verified_frames": report.verified_frames,
                }
            ),
            flush=True,
        )
        return 1 if report.failed else 0
    print(
        f"sessions {report.sessions}: {report.copied} copied, {report.tombstones} tombstones,"
        f" {report.already} already copied, {len(report.failed)} failed;"
        f" {report.frames} frames ({report.bytes} bytes) inserted,"
        f" {report.verified_frames} frames verified",
        flush=True,
    )
    for sid, why in report.failed.items():
        print(f"voxgate: {sid} not copied: {why}", file=sys.stderr)
    return 1 if report.failed else 0
