"""voxgate's one settings object, read from ``VOXGATE_*`` environment variables."""

from __future__ import annotations

import difflib
import os
import secrets
import types
import typing
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, time
from pathlib import Path
from typing import Any, Literal

import msgspec

from voxgate.apikeys import ApiKey, ApiKeyError, parse_api_keys, read_keys_file
from voxgate.clientip import parse_networks
from voxgate.errors import VoxgateError
from voxgate.rates import RATE_NAMES, parse_rate

Durability = Literal["fsync", "process"]

# Fields whose environment value is a comma-separated list.
_LIST_FIELDS = frozenset({"api_keys", "cors_origins", "trusted_proxies"})

# ``voxgate serve`` tells its worker processes how many they are through this variable.
WORKERS_ENV = "VOXGATE_SERVE_WORKERS"
# prometheus_client's multiprocess directory, set by ``voxgate serve --workers N``.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Fields ``voxgate serve`` sets for its workers, not operators (not in .env.example),
# and the variable each is read from.
PROCESS_FIELDS = {"serve_workers": WORKERS_ENV, "metrics_dir": METRICS_DIR_ENV}
PREFIX = "VOXGATE_"
# VOXGATE_* variables voxgate reads that are not settings: the client's API key
# (voxgate stream) and what ``voxgate serve`` tells its workers.
OTHER_VARIABLES = frozenset({"VOXGATE_API_KEY", WORKERS_ENV})


class SettingsError(VoxgateError, ValueError):
    """A ``VOXGATE_*`` variable has a value voxgate cannot use."""


def parse_time_of_day(value: str) -> time | None:
    """``"HH:MM"`` or ``"HH:MM:SS"`` as a UTC time of day, or None when malformed."""
    parts = value.strip().split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() and len(p) == 2 for p in parts):
        return None
    hour, minute, second = (int(p) for p in [*parts, "00"][:3])
    try:
        return time(hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything an operator can configure; ``VOXGATE_<FIELD>`` sets ``<field>``."""

    data_dir: str = "./data"
    # "name:secret", "name:admin:secret" or a bare secret (voxgate.apikeys); secrets
    # of at least 32 characters. A keys file holds one entry per line.
    api_keys: tuple[str, ...] = ()
    api_keys_file: str = ""
    durability: Durability = "fsync"
    # Browser Origin allow-list for the WebSocket stream (and CORS); "*" allows any.
    cors_origins: tuple[str, ...] = ("*",)

    # PROTOCOL section 1 and 2: frame and message limits.
    max_frame_bytes: int = 256 * 1024
    max_message_bytes: int = 1024 * 1024
    max_upload_bytes: int = 64 * 1024 * 1024
    # A frame further ahead of next_seq than this is refused with nack "sequence".
    max_seq_ahead: int = 1_000_000

    # PROTOCOL section 4: credit. Each stream gets at most window_bytes; when the
    # bytes in flight across all streams reach global_high_bytes, windows stop
    # growing until they fall to global_low_bytes.
    window_bytes: int = 1024 * 1024
    global_high_bytes: int = 64 * 1024 * 1024
    global_low_bytes: int = 32 * 1024 * 1024

    # PROTOCOL section 5: stream tokens.
    token_ttl_s: int = 60
    token_max_ttl_s: int = 3600
    # Redis shared by every instance: stream tokens, stream-takeover notices, rate limits
    # and live events.
    # Empty: tokens live in this process (or this host's data dir), single instance only.
    redis_url: str = ""

    idle_timeout_s: float = 60.0
    # HTTP connections (docs/operations.md "Connections"): a request line and headers
    # must arrive within this, and a kept-alive connection with no new request is
    # closed after it (Granian's HTTP/1 header read timeout).
    http_header_timeout_s: float = 30.0
    # A request body that sends nothing for this long is answered 408 and closed.
    http_body_timeout_s: float = 30.0
    # An answer (Server-Sent Events, a download) the client reads nothing of for this
    # long is dropped with its connection.
    http_send_timeout_s: float = 30.0
    # Open connections one worker process holds (idle ones included); past it new
    # connections wait in the kernel's listen backlog. Needs as many file descriptors.
    max_connections: int = 20_000
    # Open streams one worker process serves at once; more are refused with 4429.
    max_streams: int = 10_000
    # On SIGTERM: stop taking streams, close open ones with 1001 and flush, within this.
    shutdown_grace_s: float = 10.0
    # How often to check for freed heap memory to give back to the kernel (glibc); 0: never.
    heap_trim_s: float = 10.0
    # How often each process asks the store whether another one took over its streams
    # (with Redis, takeovers are also announced at once; this poll is the safety net).
    supersede_poll_s: float = 0.25

    # Group commit: the most frames and bytes one transaction gathers. A WebSocket
    # message is never split: one with more frames than this is a transaction alone.
    commit_max_frames: int = 4096
    commit_max_bytes: int = 32 * 1024 * 1024
    segment_max_bytes: int = 64 * 1024 * 1024

    # PostgreSQL store: with a URL, sessions and payloads live in PostgreSQL (no segment
    # files). Pool sizes are per worker process; migrations are applied at start unless
    # database_migrate is false (then `voxgate db migrate` must have run).
    database_url: str | None = None
    database_pool_min: int = 1
    database_pool_max: int = 10
    database_migrate: bool = True
    # Bounds connecting, waiting for a pooled connection and each statement.
    database_timeout_s: float = 30.0

    # Listeners and fan-out (docs/api.md "Listeners"). With VOXGATE_REDIS_URL, events
    # cross instances through Redis pub/sub; without it they stay in this process.
    # Open listeners one worker process serves at once; more are refused (429 / 4429).
    max_listeners: int = 10_000
    # Transcript and state events queued per listener; past it the listener re-reads the store.
    listen_buffer_events: int = 1024
    # An audio listener this many frames behind the live edge is closed with a resume point.
    listen_max_lag_frames: int = 3000
    # A send to a listener that makes no progress this long drops the connection.
    listen_stall_timeout_s: float = 30.0
    # How often feeds re-read the store; 0: only with several workers and no Redis (0.25 s).
    listen_poll_s: float = 0.0

    # TLS: with both set, ``voxgate serve`` answers https:// and wss:// only (PEM files;
    # the certificate file may hold the chain). ``--ssl-certfile/--ssl-keyfile`` override.
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    log_level: str = "INFO"

    # -- retention (docs/operations.md) --
    # Ages count from a session's last activity (its last stored frame, or creation).
    # Hot: frames in the store; warm: one verified archive; cold: metadata only.
    retention_hot_days: float = 7.0
    retention_warm_days: float = 30.0
    # An open session (no END frame) moves only after this long without a frame.
    retention_idle_hours: float = 24.0
    # When the in-server runner starts each day, "HH:MM" or "HH:MM:SS" UTC; "off" disables it.
    retention_at: str = "03:30"
    archive_dir: str = ""  # default <data_dir>/archive
    backup_dir: str = ""  # default <data_dir>/backups
    # Backups kept: the newest of each of the last N days, ISO weeks and months.
    backup_keep_daily: int = 7
    backup_keep_weekly: int = 4
    backup_keep_monthly: int = 12

    # Abuse limits (docs/operations.md "Limits"): "COUNT/PERIOD" with PERIOD in s, m
    # or h (for example "10/5m"), or "off". Shared across instances through
    # redis_url when it is set.
    # Per API key, sized for one backend serving about 10,000 concurrent calls
    # of a few minutes each (docs/operations.md gives the arithmetic).
    rate_limit_sessions: str = "5000/1m"
    rate_limit_tokens: str = "20000/1m"
    rate_limit_transcripts: str = "300000/1m"
    # Stream connections accepted per session (not per IP) in a window.
    rate_limit_session_connects: str = "30/1m"
    # Per client IP: refused API keys and tokens, HTTP uploads, listener connects.
    rate_limit_auth_failures: str = "20/1m"
    rate_limit_uploads: str = "600/1m"
    rate_limit_listen_connects: str = "600/1m"
    # Open streams one worker process serves for one client IP; 0 for no cap.
    max_streams_per_ip: int = 64
    # Peers (CIDRs) whose X-Forwarded-For / Forwarded headers name the client.
    trusted_proxies: tuple[str, ...] = ()

    # Twilio Media Streams (docs/clients.md). With the account's auth token set, a
    # stream whose upgrade carries a valid X-Twilio-Signature gets a session of its own.
    twilio_auth_token: str = ""
    # The scheme and host clients reach this server at (https://voice.example.com), for
    # URLs that must match what the client used, such as the one Twilio signs. Empty:
    # the request's Host header.
    public_url: str = ""
    # -- set by ``voxgate serve`` for its worker processes (PROCESS_FIELDS) --
    # Worker processes of this server (``voxgate serve --workers``).
    serve_workers: int = 1
    # Where the workers' metrics meet (prometheus_client multiprocess mode); None: one process.
    metrics_dir: str | None = None
    # -- webhooks (docs/clients.md "Webhooks") --
    # Where session events (ended, completed, archived, expired, deleted) are POSTed,
    # http:// or https://; empty: no webhooks (and no events are queued).
    webhook_url: str = ""
    # The key every event is signed with (HMAC-SHA256): required with webhook_url, at
    # least 16 characters. Receivers verify the Voxgate-Signature header with it.
    webhook_secret: str = ""
    # One delivery attempt (connect to response headers) takes at most this long.
    webhook_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        self.configured_keys()  # refuses bad entries and short secrets at start
        if self.max_frame_bytes < 1:
            raise SettingsError("VOXGATE_MAX_FRAME_BYTES must be at least 1")
        if self.max_message_bytes < 24 + self.max_frame_bytes:
            raise SettingsError(
                "VOXGATE_MAX_MESSAGE_BYTES must hold at least one frame of "
                "VOXGATE_MAX_FRAME_BYTES plus its 24-byte header"
            )
        if self.window_bytes < self.max_frame_bytes:
            raise SettingsError("VOXGATE_WINDOW_BYTES must be at least VOXGATE_MAX_FRAME_BYTES")
        if not 0 <= self.global_low_bytes < self.global_high_bytes:
            raise SettingsError("VOXGATE_GLOBAL_LOW_BYTES must be below VOXGATE_GLOBAL_HIGH_BYTES")
        if not 1 <= self.token_ttl_s <= self.token_max_ttl_s:
            raise SettingsError("VOXGATE_TOKEN_TTL_S must be between 1 and VOXGATE_TOKEN_MAX_TTL_S")
        if self.idle_timeout_s <= 0:
            raise SettingsError("VOXGATE_IDLE_TIMEOUT_S must be positive")
        timeouts = (self.http_header_timeout_s, self.http_body_timeout_s, self.http_send_timeout_s)
        if not all(0 < t <= 3600 for t in timeouts):
            raise SettingsError(
                "VOXGATE_HTTP_HEADER_TIMEOUT_S, VOXGATE_HTTP_BODY_TIMEOUT_S and"
                " VOXGATE_HTTP_SEND_TIMEOUT_S must be above 0 and at most 3600"
            )
        if self.max_connections < 1:
            raise SettingsError("VOXGATE_MAX_CONNECTIONS must be at least 1")
        if self.shutdown_grace_s < 0:
            raise SettingsError("VOXGATE_SHUTDOWN_GRACE_S must not be negative")
        if self.heap_trim_s < 0:
            raise SettingsError("VOXGATE_HEAP_TRIM_S must not be negative")
        if self.supersede_poll_s <= 0:
            raise SettingsError("VOXGATE_SUPERSEDE_POLL_S must be positive")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("VOXGATE_REDIS_URL must start with redis://, rediss:// or unix://")
        if not 0 <= self.database_pool_min <= self.database_pool_max or self.database_pool_max < 1:
            raise SettingsError(
                "VOXGATE_DATABASE_POOL_MIN and _MAX need 0 <= min <= max and max >= 1"
            )
        if self.database_timeout_s <= 0:
            raise SettingsError("VOXGATE_DATABASE_TIMEOUT_S must be positive")
        if self.max_streams_per_ip < 0:
            raise SettingsError("VOXGATE_MAX_STREAMS_PER_IP must be 0 (no cap) or more")
        for name in RATE_NAMES:
            try:
                parse_rate(getattr(self, f"rate_limit_{name}"))
            except ValueError as exc:
                raise SettingsError(f"VOXGATE_RATE_LIMIT_{name.upper()}: {exc}") from None
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise SettingsError(f"VOXGATE_TRUSTED_PROXIES: {exc}") from None
        if self.public_url and not self.public_url.startswith(
            ("http://", "https://", "ws://", "wss://")
        ):
            raise SettingsError(
                "VOXGATE_PUBLIC_URL must start with https://, http://, wss:// or ws://"
            )
        if self.listen_buffer_events < 1 or self.listen_max_lag_frames < 1:
            raise SettingsError(
                "VOXGATE_LISTEN_BUFFER_EVENTS and VOXGATE_LISTEN_MAX_LAG_FRAMES must be at least 1"
            )
        if self.listen_stall_timeout_s <= 0:
            raise SettingsError("VOXGATE_LISTEN_STALL_TIMEOUT_S must be positive")
        if self.listen_poll_s < 0:
            raise SettingsError("VOXGATE_LISTEN_POLL_S must not be negative")
        if not 0 <= self.retention_hot_days <= self.retention_warm_days:
            raise SettingsError(
                "VOXGATE_RETENTION_HOT_DAYS must be between 0 and VOXGATE_RETENTION_WARM_DAYS"
            )
        if self.retention_idle_hours < 0:
            raise SettingsError("VOXGATE_RETENTION_IDLE_HOURS must not be negative")
        if self.retention_at != "off" and parse_time_of_day(self.retention_at) is None:
            raise SettingsError('VOXGATE_RETENTION_AT must be "HH:MM", "HH:MM:SS" (UTC) or "off"')
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise SettingsError("VOXGATE_SSL_CERTFILE and VOXGATE_SSL_KEYFILE go together")
        if min(self.backup_keep_daily, self.backup_keep_weekly, self.backup_keep_monthly) < 0:
            raise SettingsError("VOXGATE_BACKUP_KEEP_* must not be negative")
        if self.backup_keep_daily + self.backup_keep_weekly + self.backup_keep_monthly < 1:
            raise SettingsError("VOXGATE_BACKUP_KEEP_* must keep at least one backup")
        if self.webhook_url:
            try:
                parts = urllib.parse.urlsplit(self.webhook_url)
                scheme, host = parts.scheme, parts.hostname
            except ValueError:  # e.g. an unbalanced "[" in the host
                scheme, host = "", None
            if scheme not in ("http", "https") or not host:
                raise SettingsError(
                    "VOXGATE_WEBHOOK_URL must be an http:// or https:// URL with a host"
                )
            if len(self.webhook_secret) < 16:
                raise SettingsError(
                    "VOXGATE_WEBHOOK_SECRET must be set (at least 16 characters) with"
                    " VOXGATE_WEBHOOK_URL: events are always signed"
                )
        if not 0 < self.webhook_timeout_s <= 300:
            raise SettingsError("VOXGATE_WEBHOOK_TIMEOUT_S must be above 0 and at most 300")

    def configured_keys(self) -> tuple[ApiKey, ...]:
        """The keys of ``VOXGATE_API_KEYS`` and ``VOXGATE_API_KEYS_FILE``; raises SettingsError.

        Empty when neither is set (then the server generates one, voxgate.auth).
        """
        try:
            entries = list(self.api_keys)
            if self.api_keys_file:
                entries += read_keys_file(self.api_keys_file)
            return parse_api_keys(entries)
        except ApiKeyError as exc:
            variable = "VOXGATE_API_KEYS_FILE" if self.api_keys_file else "VOXGATE_API_KEYS"
            raise SettingsError(f"{variable}: {exc}") from None

    @property
    def archive_path(self) -> str:
        """Where warm archives live."""
        return self.archive_dir or os.path.join(self.data_dir, "archive")

    @property
    def backup_path(self) -> str:
        """Where ``voxgate db backup`` writes."""
        return self.backup_dir or os.path.join(self.data_dir, "backups")

    @classmethod
    def variable_names(cls) -> frozenset[str]:
        """Every ``VOXGATE_*`` variable voxgate reads."""
        return frozenset(
            PROCESS_FIELDS.get(name) or f"{PREFIX}{name.upper()}" for name in cls.__struct_fields__
        ) | (OTHER_VARIABLES)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``VOXGATE_*`` variables.

        Raises :class:`SettingsError` naming the variable and what it expects
        (``VOXGATE_WINDOW_BYTES: expected an integer, got 'abc'``).
        """
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        raw: dict[str, object] = {}
        for name in cls.__struct_fields__:
            variable = PROCESS_FIELDS.get(name) or f"{PREFIX}{name.upper()}"
            value = env.get(variable)
            if value is None:
                continue
            kind = hints[name]
            try:
                if name in _LIST_FIELDS:
                    parts = tuple(part.strip() for part in value.split(",") if part.strip())
                    raw[name] = msgspec.convert(parts, type=kind, strict=False)
                else:
                    raw[name] = msgspec.convert(value, type=kind, strict=False)
            except msgspec.ValidationError:
                raise SettingsError(
                    f"{variable}: expected {_expected(kind)}, got {value!r}"
                ) from None
        try:
            return cls(**raw)  # type: ignore[arg-type]
        except msgspec.ValidationError as exc:  # pragma: no cover - the checks raise SettingsError
            raise SettingsError(str(exc)) from None


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``VOXGATE_*`` variables voxgate does not read, each with the closest known name or None.

    A misspelt variable is otherwise silently ignored (``VOXGATE_DURABILTY``
    leaves fsync on); ``voxgate serve`` and the other commands warn about each.
    """
    env = os.environ if environ is None else environ
    known = Settings.variable_names()
    # Compared without the prefix every name shares, which would make any two look alike.
    suffixes = sorted(name.removeprefix(PREFIX) for name in known)
    out: list[tuple[str, str | None]] = []
    for variable in sorted(env):
        if not variable.startswith(PREFIX) or variable in known:
            continue
        close = difflib.get_close_matches(variable.removeprefix(PREFIX), suffixes, n=1, cutoff=0.6)
        out.append((variable, PREFIX + close[0] if close else None))
    return out


def unknown_variable_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per unknown ``VOXGATE_*`` variable, naming the closest known one."""
    lines = []
    for variable, close in unknown_variables(environ):
        hint = f"; did you mean {close}?" if close else ""
        lines.append(f"unknown variable {variable} is ignored{hint}")
    return lines


def _expected(kind: Any) -> str:
    """What a value of type ``kind`` looks like, for an error message."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if kind is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        options = [_expected(arg) for arg in args if arg is not type(None)]
        return " or ".join(options) + " (or unset)"
    if origin is tuple:
        item = _expected(args[0]).removeprefix("a ").removeprefix("an ")
        return f"a comma-separated list of {item}s"
    return str(kind)


# The generated key's file in the data dir, when no key is configured.
API_KEY_FILE = "api_key"


def ensure_api_keys(settings: Settings) -> tuple[tuple[ApiKey, ...], str | None]:
    """The API keys in force, and the secret generated now if there was none.

    With neither ``VOXGATE_API_KEYS`` nor ``VOXGATE_API_KEYS_FILE`` set, the
    key lives in ``<data dir>/api_key`` (created with mode 0600 on first
    start), so management never runs open; it is an admin key named
    ``default``. Raises :class:`SettingsError` for unusable keys.
    """
    configured = settings.configured_keys()
    if configured:
        return configured, None
    path = Path(settings.data_dir) / API_KEY_FILE
    if path.exists():
        return _from_key_file(path), None
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "vgk_" + secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return _from_key_file(path), None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return parse_api_keys([key]), key


def _from_key_file(path: Path) -> tuple[ApiKey, ...]:
    try:
        return parse_api_keys([path.read_text().strip()])
    except ValueError as exc:
        raise SettingsError(f"{path}: {exc}") from None
