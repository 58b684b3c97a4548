"""``voxgate`` command line: serve, stream, retention, db."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from voxgate.auth import ensure_api_keys
from voxgate.client.cli import add_stream_command
from voxgate.retention.cli import add_retention_command
from voxgate.settings import Settings, SettingsError
from voxgate.store.base import StoreError
from voxgate.store.cli import add_db_command, check_database

# Seconds after VOXGATE_SHUTDOWN_GRACE_S for commits already submitted to finish.
KILL_AFTER_GRACE_S = 10


def _serve(args: argparse.Namespace) -> int:
    from granian.constants import Interfaces
    from granian.server import Server

    from voxgate.logs import dict_config
    from voxgate.serving import granian_options

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(check_database(settings))
    except StoreError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return 1
    # Made here, before workers start, so every worker finds the same key.
    os.makedirs(settings.data_dir, exist_ok=True)
    _, generated = ensure_api_keys(settings)
    if generated is not None:
        print(
            f"voxgate: generated API key (stored in {settings.data_dir}/api_key): {generated}",
            flush=True,
        )
    if args.workers > 1:
        _share_metrics(Path(settings.data_dir) / "metrics")
    # Imported only now: it loads prometheus_client, which must see the directory above.
    from voxgate.runtime import WORKERS_ENV, install_shutdown_hook

    os.environ[WORKERS_ENV] = str(args.workers)
    install_shutdown_hook()
    server = Server(
        "voxgate.app:app_from_env",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        factory=True,
        websockets=True,
        log_access=False,  # it would log query strings, and ?token= is one
        log_dictconfig=dict_config(settings.log_level),
        # A worker still alive this long after SIGTERM is killed: exit is bounded even
        # if a commit hangs (acks follow durability, so nothing acked is lost).
        workers_kill_timeout=math.ceil(settings.shutdown_grace_s) + KILL_AFTER_GRACE_S,
        **granian_options(settings),  # connection timeouts and slots (voxgate.serving)
    )
    server.serve()
    return 0


def _share_metrics(directory: Path) -> None:
    """Multiprocess metrics: every worker writes its values under ``directory``.

    Set before any worker imports prometheus_client; emptied first so values of
    a previous run do not count.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # voxgate.metrics.MULTIPROC_ENV


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Durable voice-streaming ingest")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (settings from VOXGATE_* variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=_serve)
    add_stream_command(commands)
    add_retention_command(commands)
    add_db_command(commands)
    return parser


# glibc reads this when a process starts; ``voxgate serve`` re-runs itself with it set.
MALLOC_ARENAS = "2"


def _limit_malloc_arenas() -> None:
    """Re-execute this command with ``MALLOC_ARENA_MAX=2`` unless it is set (glibc only).

    Granian's I/O threads allocate the messages the event loop frees; with
    glibc's default of 8 arenas per core, what is freed that way stays spread
    over many arenas: resident memory stepped up by 9 to 18 MB in 15-minute
    soaks and stayed there. With 2 arenas it stayed flat. Setting it from
    inside the process (mallopt) came too late to take effect.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return
    os.environ["MALLOC_ARENA_MAX"] = MALLOC_ARENAS
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command == "serve":
        _limit_malloc_arenas()  # only for a real command line: it replaces the process
    result = args.handler(args)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return int(result)


if __name__ == "__main__":
    raise SystemExit(main())
