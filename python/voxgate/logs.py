"""Structured JSON logs: one JSON object per line on stdout, from structlog and stdlib alike.

Every line written while a request or stream is handled carries its
``request_id`` (bound by :mod:`voxgate.observe` in a context variable that the
stream's tasks inherit). Secrets never reach a line: query strings are not
logged, and a last processor blanks stream tokens, API keys and bearer
credentials wherever they appear in a value.
"""

from __future__ import annotations

import logging
import logging.config
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
# Stream tokens, generated API keys, bearer credentials, token query parameters.
_SECRET = re.compile(
    r"(vgt_[A-Za-z0-9_\-]+|vgk_[A-Za-z0-9_\-]+|(?i:bearer)\s+\S+|"
    r"voxgate\.token\.\S+|([?&]token=)[^&\s\"']*)"
)
_SECRET_KEYS = frozenset({"token", "api_key", "authorization", "password", "key"})

_secrets: tuple[str, ...] = ()


def register_secrets(values: Iterable[str]) -> None:
    """Exact strings (the configured API keys) to blank out of every line."""
    global _secrets
    _secrets = tuple(sorted({v for v in values if v}, key=len, reverse=True))


def _scrub(text: str) -> str:
    text = _SECRET.sub(lambda m: (m.group(2) or "") + REDACTED, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # payload bytes never go into a line
    if isinstance(value, dict):
        return {k: REDACTED if k in _SECRET_KEYS else _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: blank secrets and payload bytes in every value."""
    for key, value in event_dict.items():
        event_dict[key] = REDACTED if key in _SECRET_KEYS else _clean(value)
    return event_dict


def _rename_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["message"] = event_dict.pop("event", "")
    return event_dict


def _dumps(obj: MutableMapping[str, Any], **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.format_exc_info,
]


def json_formatter() -> logging.Formatter:
    """A stdlib formatter writing records (and structlog events) as JSON lines."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact,
            _rename_event,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )


def dict_config(level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` input: JSON on stdout for every logger, Granian's too."""
    json_fmt = {"()": "voxgate.logs.json_formatter"}
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # Granian looks its formatters up by these names.
        "formatters": {"json": json_fmt, "generic": json_fmt, "access": json_fmt},
        "handlers": {"console": handler, "access": handler},
        "loggers": {
            "_granian": {"handlers": ["console"], "level": level.upper(), "propagate": False},
            # Granian's access log carries query strings (tokens): keep it off.
            "granian.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
        "root": {"handlers": ["console"], "level": level.upper()},
    }


def configure(level: str, secrets: Iterable[str] = ()) -> None:
    """Route stdlib logging and structlog to JSON lines on stdout at ``level``."""
    register_secrets(secrets)
    logging.config.dictConfig(dict_config(level))
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get(name: str) -> Any:
    """A structlog logger: ``get("voxgate.stream").info("stream.open", session_id=...)``."""
    return structlog.get_logger(name)
