"""Whether a server relays transcripts, and a request body it accepts.

Transcripts come from another part of voxgate; the load tools relay them only
where the server has the endpoint. They read the server's OpenAPI document
once and fill the request body's required fields from its schema.
"""

from __future__ import annotations

from typing import Any

OPENAPI_PATH = "/schema/openapi.json"


def fill(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """A value that satisfies a (simple) JSON schema: required properties only."""
    if "$ref" in schema:
        return fill(components.get(schema["$ref"].rsplit("/", 1)[-1], {}), components)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return fill(options[0], components)
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: fill(props.get(name, {}), components) for name in schema.get("required", [])}
    if kind == "array":
        return []
    if kind == "integer":
        return max(0, int(schema.get("minimum", 0)))
    if kind == "number":
        return float(schema.get("minimum", 0.0))
    if kind == "boolean":
        return True
    return "load test transcript"


def find(document: dict[str, Any]) -> tuple[str, Any] | None:
    """(path template, request body) of the transcripts POST endpoint, or None."""
    components = document.get("components", {}).get("schemas", {})
    for path, methods in document.get("paths", {}).items():
        post = methods.get("post")
        if "transcripts" in path and "{" in path and post is not None:
            content = post.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            return path, fill(schema, components) if schema else None
    return None


def session_path(template: str, session_id: str) -> str:
    for name in ("{session_id}", "{id}"):
        template = template.replace(name, session_id)
    return template
