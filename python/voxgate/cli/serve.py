"""The ``serve`` sub-command: checks everything it can before Granian starts, then runs it."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging.config
import math
import os
import shutil
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from voxgate.errors import VoxgateError

if TYPE_CHECKING:
    from voxgate.granian_internals import SignalLatch
    from voxgate.settings import Settings

# Seconds after VOXGATE_SHUTDOWN_GRACE_S for commits already submitted to finish.
KILL_AFTER_GRACE_S = 10

# Exit statuses: 2 for a configuration mistake, 1 for anything else that stops the start.
EXIT_CONFIG = 2
EXIT_FAILED = 1


class ServeError(VoxgateError):
    """``voxgate serve`` cannot start; the message says why, ``status`` is the exit code."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``voxgate serve``; its handler is :func:`run_serve`."""
    serve = commands.add_parser(
        "serve",
        help="run the server (settings from VOXGATE_* variables)",
        description=(
            "Run the voxgate server: HTTP API and WebSocket streams on one port, served by "
            "Granian worker processes. Every other setting comes from VOXGATE_* environment "
            "variables (.env.example lists them with their defaults; unknown VOXGATE_* names "
            "are reported). A worker that dies is replaced; SIGTERM or SIGINT, however often "
            "sent, drains open streams (closed with 1001 after their acks) within "
            "VOXGATE_SHUTDOWN_GRACE_S and exits 0. Exit status 2: a setting is wrong; "
            "1: the port is taken, the database or TLS files cannot be used."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0 for every IPv4 interface, :: for IPv6)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=8000,
        help="TCP port; starting fails at once if another process listens on it",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help=(
            "worker processes sharing the port; without VOXGATE_REDIS_URL they share "
            "tokens and limits through files in the data dir"
        ),
    )
    serve.add_argument(
        "--ssl-certfile",
        metavar="PEM",
        default=None,
        help=(
            "TLS certificate (chain) file: serve https:// and wss:// only; "
            "overrides VOXGATE_SSL_CERTFILE; needs --ssl-keyfile"
        ),
    )
    serve.add_argument(
        "--ssl-keyfile",
        metavar="PEM",
        default=None,
        help="TLS private key file (unencrypted PEM); overrides VOXGATE_SSL_KEYFILE",
    )
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Run ``voxgate serve`` until it is stopped; returns the exit status.

    Mistakes an operator can fix are reported as one line on stderr with a
    non-zero status, never a traceback.
    """
    from voxgate.granian_internals import SignalLatch

    # First of all: a stop signal arriving at any moment from now on is kept.
    latch = SignalLatch()
    latch.install()
    try:
        return _serve(args, latch)
    except ServeError as exc:
        print(f"voxgate: {exc}", file=sys.stderr)
        return exc.status
    finally:
        # Stopped: a stop signal arriving while the interpreter exits would find the
        # default handler (Python restores it while finalizing) and turn exit 0 into
        # death by that signal.
        latch.ignore_from_now_on()


def _serve(args: argparse.Namespace, latch: SignalLatch) -> int:
    from voxgate.cli.db import check_database
    from voxgate.settings import Settings, SettingsError, ensure_api_keys, unknown_variable_warnings
    from voxgate.store.base import StoreError

    for warning in unknown_variable_warnings():
        print(f"voxgate: warning: {warning}", file=sys.stderr, flush=True)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise ServeError(str(exc), EXIT_CONFIG) from None
    if args.workers < 1:
        raise ServeError("--workers must be at least 1", EXIT_CONFIG)
    if not 0 < args.port < 65536:
        raise ServeError("--port must be between 1 and 65535", EXIT_CONFIG)
    tls = tls_files(
        args.ssl_certfile or settings.ssl_certfile, args.ssl_keyfile or settings.ssl_keyfile
    )
    check_port_free(args.host, args.port)
    try:
        asyncio.run(check_database(settings))
    except StoreError as exc:
        raise ServeError(str(exc)) from None
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
    if latch.stop_requested:
        return 0  # stopped before anything was served
    return _run_granian(args, settings, tls, latch)


def _run_granian(
    args: argparse.Namespace,
    settings: Settings,
    tls: tuple[Path, Path] | None,
    latch: SignalLatch,
) -> int:
    # Imported only now: the app loads prometheus_client, which must see the metrics dir.
    from granian.constants import Interfaces, SSLProtocols

    from voxgate.granian_internals import (
        SUPPORTED_GRANIAN,
        MasterServer,
        granian_supported,
        granian_version,
        install_worker_shutdown_hook,
    )
    from voxgate.logs import dict_config
    from voxgate.serving import granian_options
    from voxgate.settings import WORKERS_ENV

    if not granian_supported():
        low, high = SUPPORTED_GRANIAN
        print(
            f"voxgate: warning: Granian {'.'.join(map(str, granian_version()))} is outside "
            f"{'.'.join(map(str, low))} to below {'.'.join(map(str, high))}, the versions "
            "voxgate's signal handling was checked with",
            file=sys.stderr,
            flush=True,
        )
    os.environ[WORKERS_ENV] = str(args.workers)
    install_worker_shutdown_hook()
    # The master's own log lines (the connection-slot check below) as JSON, like the
    # workers' (Granian applies the same configuration again when it starts).
    logging.config.dictConfig(dict_config(settings.log_level))
    options = granian_options(settings)
    server = MasterServer(
        "voxgate.app:app_from_env",
        latch=latch,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        factory=True,
        websockets=True,
        log_access=False,  # it would log query strings, and ?token= is one
        log_dictconfig=dict_config(settings.log_level),
        # A worker that dies (killed, out of memory, a crash in native code) is
        # replaced; its clients reconnect and resume. One that dies again within
        # seconds of its respawn stops the server (exit 1): a crash loop.
        respawn_failed_workers=True,
        # A worker still alive this long after SIGTERM is killed: exit is bounded even
        # if a commit hangs (acks follow durability, so nothing acked is lost).
        workers_kill_timeout=math.ceil(settings.shutdown_grace_s) + KILL_AFTER_GRACE_S,
        ssl_cert=tls[0] if tls else None,
        ssl_key=tls[1] if tls else None,
        # TLS 1.2 too: telephony providers and older load balancers still connect with it.
        ssl_protocol_min=SSLProtocols.tls12,
        **options,  # connection timeouts and slots (voxgate.serving)
    )
    server.serve()
    return 0


def tls_files(certfile: str | None, keyfile: str | None) -> tuple[Path, Path] | None:
    """The certificate and key to serve TLS with, checked; None for plain HTTP.

    Raises :class:`ServeError` when only one is given, a file is missing or
    unreadable, or the key does not match the certificate.
    """
    if not certfile and not keyfile:
        return None
    if not certfile or not keyfile:
        raise ServeError(
            "TLS needs both a certificate and a key (--ssl-certfile and --ssl-keyfile, "
            "or VOXGATE_SSL_CERTFILE and VOXGATE_SSL_KEYFILE)",
            EXIT_CONFIG,
        )
    cert, key = Path(certfile), Path(keyfile)
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise ServeError(f"TLS {what} file {path} does not exist")
        if not os.access(path, os.R_OK):
            raise ServeError(f"TLS {what} file {path} is not readable by this user")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ServeError(
            f"TLS certificate {cert} and key {key} cannot be used together: {exc.reason or exc}"
        ) from None
    return cert, key


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`ServeError` if another process listens on ``host:port``.

    Granian binds with SO_REUSEPORT, so a second server on a taken port would
    start and silently share the traffic. A probe bound without SO_REUSEPORT
    conflicts with any listener there; SO_REUSEADDR keeps connections of a
    previous run that linger in TIME_WAIT from counting as a listener.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host!r}: {exc.strerror}", EXIT_CONFIG) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is already in use by another process; "
                    "stop it or choose another --port"
                ) from None
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _share_metrics(directory: Path) -> None:
    """Multiprocess metrics: every worker writes its values under ``directory``.

    Set before any worker imports prometheus_client; emptied first so values of
    a previous run do not count.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # voxgate.metrics.MULTIPROC_ENV
