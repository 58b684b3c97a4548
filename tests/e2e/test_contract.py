"""The OpenAPI schema against the live server: every answer declared, schemathesis finds nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from servers import Server

HERE = Path(__file__).parent
SCHEMA_PATH = "/schema/openapi.json"  # Litestar's default
PROBLEM_JSON = "application/problem+json"

# What each operation must declare besides its success, per docs/api.md.
EXPECTED_ERRORS: dict[tuple[str, str], set[int]] = {
    ("post", "/v1/sessions"): {400, 401, 413, 429, 503},
    ("get", "/v1/sessions"): {400, 401, 503},
    ("get", "/v1/sessions/{session_id}"): {401, 404, 410, 503},
    ("delete", "/v1/sessions/{session_id}"): {401, 404, 410, 503},
    ("post", "/v1/sessions/{session_id}/tokens"): {400, 401, 404, 410, 413, 422, 429, 503},
    ("get", "/v1/sessions/{session_id}/missing"): {401, 404, 410, 503},
    ("get", "/v1/sessions/{session_id}/audio"): {400, 401, 404, 409, 410, 416, 422, 503},
    ("post", "/v1/sessions/{session_id}/frames"): {400, 401, 403, 404, 410, 413, 415, 429, 503},
    ("post", "/v1/sessions/{session_id}/transcripts"): {400, 401, 404, 409, 410, 413, 429, 503},
    ("get", "/v1/sessions/{session_id}/transcripts"): {400, 401, 404, 410, 503},
    ("post", "/voice/transcript/relay/{session_id}"): {400, 401, 404, 409, 410, 422, 429, 503},
    ("post", "/v1/sessions/{session_id}/listen-tokens"): {400, 401, 404, 410, 422, 429, 503},
    ("get", "/v1/sessions/{session_id}/events"): {400, 401, 403, 404, 410, 429, 503},
    ("get", "/v1/stats"): {401, 403},
    ("get", "/v1/storage"): {401, 403, 503},
}


def schema(server: Server) -> dict[str, Any]:
    response = httpx.get(server.base_url + SCHEMA_PATH)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def test_every_operation_declares_its_errors_as_problem_details(server: Server) -> None:
    document = schema(server)
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"type", "title", "status", "detail"}
    declared_anywhere: set[int] = set()
    for (method, path), errors in EXPECTED_ERRORS.items():
        operation = document["paths"][path][method]
        responses = operation["responses"]
        for status in errors:
            assert str(status) in responses, f"{method.upper()} {path} does not declare {status}"
            content = responses[str(status)]["content"]
            assert list(content) == [PROBLEM_JSON], f"{method.upper()} {path} {status}: {content}"
            assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
        declared_anywhere |= errors
    assert declared_anywhere >= {400, 401, 404, 409, 422, 429, 503}


def test_schema_states_the_configured_token_lifetime_and_the_upload_body(server: Server) -> None:
    document = schema(server)
    ttl = document["components"]["schemas"]["TokenRequest"]["properties"]["ttl_s"]
    integer = next(b for b in ttl["oneOf"] if b["type"] == "integer")
    assert (integer["minimum"], integer["maximum"]) == (1, 3600)
    upload = document["paths"]["/v1/sessions/{session_id}/frames"]["post"]
    assert list(upload["requestBody"]["content"]) == ["application/vnd.voxgate.frames"]
    assert upload["security"] == [{"streamToken": []}]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert document["paths"]["/ready"]["get"]["security"] == []


async def test_the_resume_bounds_the_schema_states_are_the_ones_enforced(server: Server) -> None:
    """Server-Sent Events are left out of the schemathesis run (they never end): their
    ``last_event_id`` query and ``Last-Event-ID`` header are checked here at the bound."""
    document = schema(server)
    operation = document["paths"]["/v1/sessions/{session_id}/events"]["get"]
    bounds = {
        (p["in"], p["name"].lower()): p["schema"]
        for p in operation["parameters"]
        if p["name"].lower() in ("last_event_id", "last-event-id")
    }
    assert set(bounds) == {("query", "last_event_id"), ("header", "last-event-id")}
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
        sid = (await http.post("/v1/sessions", json={})).json()["id"]
        url = f"/v1/sessions/{sid}/events"
        for (where, name), bound in bounds.items():
            integer = next(b for b in bound.get("oneOf", [bound]) if b.get("type") == "integer")
            top = int(integer["maximum"])
            assert top == integer["maximum"], "a bound a JSON number cannot hold exactly"
            assert integer["minimum"] == 0
            for value, status in ((top, 200), (top + 1, 400), (-1, 400)):
                options: dict[str, Any] = (
                    {"params": {name: value}}
                    if where == "query"
                    else {"headers": {name: str(value)}}
                )
                async with http.stream("GET", url, **options) as answer:
                    assert answer.status_code == status, (where, value)


def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    """Every phase of schemathesis with its default checks, a few examples per operation."""
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        # The hooks' auth providers: the API key, and stream tokens minted with it.
        "VOXGATE_CONTRACT_URL": server.base_url,
        "VOXGATE_CONTRACT_API_KEY": server.api_key,
        "PYTHONPATH": str(HERE),
        "NO_COLOR": "1",
    }
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        server.base_url + SCHEMA_PATH,
        "--max-examples",
        "15",
        "--seed",
        "20261123",
    ]
    result = subprocess.run(
        # Run where its cache directory (.schemathesis) can be left behind.
        command,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # Every operation was reached with its credential (uploads with stream tokens).
    assert "Authentication failed" not in output, output[-3000:]
    operations = sum(len(item) for item in schema(server)["paths"].values())
    # Server-Sent Events never end by themselves: schemathesis.toml leaves that one out.
    selected = operations - 1
    assert f"{selected} selected / {operations} total" in output, output[-3000:]
