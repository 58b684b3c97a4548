"""``voxgate db backup|list|verify|restore``: backups of the embedded store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from voxgate.progress import progress
from voxgate.settings import Settings, SettingsError
from voxgate.store.backup import (
    BackupError,
    create_backup,
    list_backups,
    resolve_backup,
    restore_backup,
    verify_backup,
)


def add_backup_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``backup``, ``list``, ``verify`` and ``restore`` under ``voxgate db``."""
    backup = commands.add_parser(
        "backup", help="make a verified online backup now, then rotate old ones"
    )
    backup.set_defaults(handler=_backup)
    listing = commands.add_parser("list", help="list backups, newest first")
    listing.set_defaults(handler=_list)
    verify = commands.add_parser("verify", help="check a backup without restoring it")
    verify.add_argument("backup", help="backup name, path, or 'latest'")
    verify.set_defaults(handler=_verify)
    restore = commands.add_parser(
        "restore", help="replace the store with a verified backup (stop the server first)"
    )
    restore.add_argument("backup", help="backup name, path, or 'latest'")
    restore.set_defaults(handler=_restore)
    for parser in (backup, listing, verify, restore):
        parser.add_argument(
            "--dir", default=None, help="backup directory (default VOXGATE_BACKUP_DIR)"
        )
    for parser in (backup, verify, restore):
        parser.add_argument(
            "--json",
            action="store_true",
            help="the JSON result only, no progress display (as when stdout is not a terminal)",
        )


def _settings() -> Settings | None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return None
    if settings.database_url:
        print(
            "voxgate db: backups here cover the embedded store; with VOXGATE_DATABASE_URL"
            " the store is PostgreSQL's: back it up with pg_dump or base backups",
            file=sys.stderr,
        )
        return None
    return settings


def _backup_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.dir or settings.backup_path)


def _print(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _backup(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    try:
        with progress(not args.json) as bar:
            # The copy reports no steps: a spinner with the elapsed time.
            bar.start(f"backing up {settings.data_dir}", unit="items")
            path, info, pruned = create_backup(
                Path(settings.data_dir),
                _backup_dir(args, settings),
                keep_daily=settings.backup_keep_daily,
                keep_weekly=settings.backup_keep_weekly,
                keep_monthly=settings.backup_keep_monthly,
            )
    except (BackupError, OSError) as exc:
        print(f"voxgate db backup: failed: {exc}", file=sys.stderr)
        return 1
    _print(
        {
            "backup": str(path),
            "sessions": info.sessions,
            "frames": info.frames,
            "payload_bytes": info.payload_bytes,
            "pruned": pruned,
        }
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    directory = _backup_dir(args, settings)
    for name, _ in list_backups(directory):
        print(directory / name)
    return 0


def _verify(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    try:
        path = resolve_backup(_backup_dir(args, settings), args.backup)
        with progress(not args.json) as bar:
            bar.start(f"verifying {path.name}", unit="items")
            info = verify_backup(path)
    except (BackupError, OSError) as exc:
        print(f"voxgate db verify: {exc}", file=sys.stderr)
        return 1
    _print({"backup": str(path), "ok": True, "sessions": info.sessions, "frames": info.frames})
    return 0


def _restore(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings is None:
        return 2
    try:
        path = resolve_backup(_backup_dir(args, settings), args.backup)
        with progress(not args.json) as bar:
            bar.start(f"restoring {path.name}", unit="items")
            report = restore_backup(path, Path(settings.data_dir), Path(settings.archive_path))
    except (BackupError, OSError) as exc:
        print(f"voxgate db restore: failed: {exc}", file=sys.stderr)
        return 1
    _print(
        {
            "restored": str(path),
            "data_dir": report.data_dir,
            "set_aside": report.set_aside,
            "sessions": report.backup.sessions,
            "frames": report.backup.frames,
            "missing_archives": report.missing_archives,
        }
    )
    if report.missing_archives:
        print(
            f"voxgate db restore: {len(report.missing_archives)} warm sessions have no archive"
            f" file under {settings.archive_path}; their audio answers 500 until it is put back",
            file=sys.stderr,
        )
    return 0
