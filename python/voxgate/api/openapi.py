"""What the generated OpenAPI schema cannot learn from type hints, added where it is served.

Litestar derives the schema from the handlers; this fills in the rest: the
configured token lifetime maximum, closed request objects, the raw frame body
of the HTTP upload and its answer, and who authenticates how. It does so
through Litestar's public render plugins (:func:`openapi_config`): each
finishes the schema dict before rendering it, at the first request.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RapidocRenderPlugin,
    RedocRenderPlugin,
    StoplightRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)

from voxgate.api.upload import MEDIA_TYPE
from voxgate.retention.archive import MEDIA_TYPE as ARCHIVE_MEDIA_TYPE
from voxgate.settings import Settings

_RANGES = {
    "type": "array",
    "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
}
_UPLOAD_ANSWER = {
    "type": "object",
    "required": ["acked", "duplicate", "rejected"],
    "properties": {
        "acked": _RANGES,
        "duplicate": _RANGES,
        "rejected": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["ranges", "reason"],
                "properties": {
                    "ranges": _RANGES,
                    "reason": {
                        "type": "string",
                        "enum": ["checksum", "window", "conflict", "too_large", "sequence"],
                    },
                },
            },
        },
    },
}


# Probes a load balancer calls without credentials.
_OPEN = frozenset({"/health", "/ready"})


class _Finished(OpenAPIRenderPlugin):
    """Serves what ``inner`` renders, from the schema dict finished first (in place, once)."""

    def __init__(self, inner: OpenAPIRenderPlugin, settings: Settings) -> None:
        super().__init__(
            path=inner.paths, media_type=inner.media_type, favicon=inner.favicon, style=inner.style
        )
        self.inner = inner
        self.settings = settings
        self._finished: int | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        # Litestar hands every plugin the one dict it caches; finishing is idempotent.
        if self._finished != id(openapi_schema):
            complete_schema(openapi_schema, self.settings)
            self._finished = id(openapi_schema)
        return self.inner.render(request, openapi_schema)

    def receive_router(self, router: Router) -> None:
        self.inner.receive_router(router)


def openapi_config(settings: Settings) -> OpenAPIConfig:
    """The app's OpenAPI configuration: Litestar's usual pages under ``/schema``, finished.

    ``/schema/openapi.json`` (and ``.yaml``/``.yml``) plus ReDoc (also at
    ``/schema``), Swagger UI, Stoplight Elements and RapiDoc, as Litestar
    serves them by default.
    """
    plugins: list[OpenAPIRenderPlugin] = [
        RedocRenderPlugin(path=["/", "/redoc"]),
        JsonRenderPlugin(),
        YamlRenderPlugin(),
        SwaggerRenderPlugin(),
        StoplightRenderPlugin(),
        RapidocRenderPlugin(),
    ]
    return OpenAPIConfig(
        title="voxgate",
        version="1",
        render_plugins=[_Finished(plugin, settings) for plugin in plugins],
    )


def complete_schema(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Finish an OpenAPI schema dict Litestar generated (in place) and return it."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("SessionCreate", "TokenRequest", "TranscriptPost"):
        if name in schemas:
            schemas[name]["additionalProperties"] = False
    _transcript_fields(schemas)
    ttl = schemas.get("TokenRequest", {}).get("properties", {}).get("ttl_s")
    if ttl is not None:
        for branch in ttl.get("oneOf", [ttl]):
            if branch.get("type") == "integer":
                branch.update(minimum=1, maximum=settings.token_max_ttl_s)
        ttl["description"] = "token lifetime in seconds; above the server's maximum: 422"
    components["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "an API key"},
        "streamToken": {"type": "http", "scheme": "bearer", "description": "a stream token"},
    }
    for path, item in schema.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            if path in _OPEN:
                operation["security"] = []
            elif path.endswith("/frames"):
                operation["security"] = [{"streamToken": []}]
            else:
                operation["security"] = [{"apiKey": []}]
    paths = schema.get("paths", {})
    for path in (
        "/v1/sessions",
        "/v1/sessions/{session_id}/tokens",
        "/v1/sessions/{session_id}/listen-tokens",
    ):
        body = paths.get(path, {}).get("post", {}).get("requestBody")
        if body is not None:
            body["required"] = False  # PROTOCOL 2.3: every member is optional
    audio = paths.get("/v1/sessions/{session_id}/audio", {}).get("get")
    if audio is not None:
        binary = {"schema": {"type": "string", "format": "binary"}}
        content = {"application/octet-stream": binary, "audio/wav": binary}
        audio["responses"]["200"] = {"description": "the payloads in seq order", "content": content}
        audio["responses"]["206"] = {"description": "the asked Range of them", "content": content}
    archive = paths.get("/v1/sessions/{session_id}/archive", {}).get("get")
    if archive is not None:
        content = {ARCHIVE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
        archive["responses"]["200"] = {"description": "the session's archive", "content": content}
        archive["responses"]["206"] = {"description": "the asked Range of it", "content": content}
    upload = paths.get("/v1/sessions/{session_id}/frames", {}).get("post")
    if upload is not None:
        upload["requestBody"] = {
            "required": True,
            "description": "frames back to back (docs/protocol.md, Frames)",
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
        upload["responses"]["200"]["content"] = {"application/json": {"schema": _UPLOAD_ANSWER}}
    events = paths.get("/v1/sessions/{session_id}/events", {}).get("get")
    if events is not None:
        events["responses"]["200"] = {
            "description": "Server-Sent Events (docs/api.md, Listeners)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    return schema


def _transcript_fields(schemas: dict[str, Any]) -> None:
    """Unions Litestar renders as ``oneOf`` although they overlap (an integer is a number)."""
    timestamp = {
        "anyOf": [
            {"type": "number"},
            {"type": "string", "maxLength": 64, "pattern": "^[^\\x00]*$"},
        ],
        "description": "the client's time of the utterance, stored and returned as given",
    }
    seq = {
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1}, {"type": "null"}],
        "description": "the client's utterance number: with role, the supersession key",
    }
    for name in ("TranscriptPost", "RelayPost", "Transcript"):
        properties = schemas.get(name, {}).get("properties", {})
        if "timestamp" in properties:
            properties["timestamp"] = dict(timestamp)
        if "seq" in properties:
            properties["seq"] = dict(seq)
