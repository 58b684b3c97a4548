"""``voxgate retention run [--dry-run]``: one retention run against the configured store."""

from __future__ import annotations

import argparse
import logging
import sys

import msgspec

from voxgate.progress import progress
from voxgate.settings import Settings, SettingsError
from voxgate.store.base import StoreError

# Exit status when another runner holds the lock (EX_TEMPFAIL).
EXIT_BUSY = 75


def add_retention_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``voxgate retention``."""
    retention = subparsers.add_parser(
        "retention",
        help="move sessions between hot, warm and cold tiers (settings from VOXGATE_*)",
        description="Retention tiers; see docs/operations.md.",
    )
    commands = retention.add_subparsers(dest="retention_command", required=True)
    run = commands.add_parser("run", help="run retention once now")
    run.add_argument("--dry-run", action="store_true", help="list what would move, change nothing")
    run.add_argument(
        "--json",
        action="store_true",
        help="JSON lines only, no progress bar (as when stdout is not a terminal)",
    )
    run.set_defaults(handler=_run)
    verify = commands.add_parser(
        "verify",
        help="check a session archive file (a download of GET /v1/sessions/{id}/archive)",
        description=(
            "Read FILE through and check it as the runner does before it deletes hot "
            "frames: the seek table, every zstd checksum, every frame's CRC-32C, the "
            "payload and stream CRCs. Prints the manifest's summary; exit 1 if unsound."
        ),
    )
    verify.add_argument("file", metavar="FILE", help="the archive file to check")
    verify.set_defaults(handler=_verify)


def _print(value: object) -> None:
    # Every output of these commands is one JSON document per line, --json or not.
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


async def _run(args: argparse.Namespace) -> int:
    # Imported here: ``voxgate serve`` must not load the server's modules (and their
    # metrics) before it has set up the worker processes' environment.
    from voxgate.retention.runner import Retention
    from voxgate.runtime import store_for

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    store = store_for(settings)
    try:
        await store.open()
        retention = Retention(store, settings)
        if args.dry_run:
            for move in await retention.plan():
                _print(
                    {
                        "session_id": move.session_id,
                        "from": move.tier,
                        "to": move.target,
                        "last_activity_at": move.last_activity_at,
                        "resumed": move.resumed,
                    }
                )
        with progress(not args.json and not args.dry_run) as bar:
            bar.start("retention: moving sessions", unit="items")
            run = await retention.run(
                dry_run=args.dry_run,
                on_progress=lambda done, total: bar.update(completed=done, total=total),
            )
    except StoreError as exc:
        print(f"voxgate retention: store unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
    if run is None:
        print("voxgate retention: another runner holds the lock; nothing done", file=sys.stderr)
        return EXIT_BUSY
    _print(run)
    return 0 if run.outcome == "ok" else 1


def _verify(args: argparse.Namespace) -> int:
    from voxgate.retention.archive import ArchiveError, verify_archive

    try:
        summary = verify_archive(args.file)
    except ArchiveError as exc:
        print(f"voxgate retention verify: unsound: {exc}", file=sys.stderr)
        return 1
    manifest = summary.manifest
    _print(
        {
            "file": args.file,
            "ok": True,
            "session_id": manifest.session.get("id"),
            "frames": manifest.frames,
            "audio_bytes": manifest.audio_bytes,
            "payload_crc32c": manifest.payload_crc32c,
            "stream_crc32c": manifest.stream_crc32c,
            "missing": manifest.missing,
        }
    )
    return 0
