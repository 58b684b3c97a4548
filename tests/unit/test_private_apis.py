"""voxgate uses no private API of Litestar, and Granian's only inside its one fence.

A private module (``litestar._openapi``, ``granian._signals``) can change in
any release. Granian's are fenced in ``voxgate/granian_internals.py``,
whose own test pins the Granian versions it was checked against.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from litestar.testing import TestClient

from voxgate.app import create_app
from voxgate.settings import Settings

SOURCE = Path(__file__).resolve().parents[2] / "python" / "voxgate"
FENCE = SOURCE / "granian_internals.py"
PRIVATE_IMPORT = re.compile(r"^\s*(?:from|import)\s+(litestar|granian)\._", re.MULTILINE)


def test_no_private_litestar_or_granian_module_is_imported_outside_the_fence() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        for match in PRIVATE_IMPORT.finditer(path.read_text()):
            if path == FENCE and match.group(1) == "granian":
                continue
            offenders.append(f"{path.relative_to(SOURCE)}: {match.group(0).strip()}")
    assert not offenders, offenders


def test_every_schema_page_serves_the_finished_schema(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), api_keys=("k" * 32,), token_max_ttl_s=1234)
    with TestClient(create_app(settings)) as client:
        schema = client.get("/schema/openapi.json")
        assert schema.status_code == 200, schema.text
        ttl = schema.json()["components"]["schemas"]["TokenRequest"]["properties"]["ttl_s"]
        assert 1234 in [branch.get("maximum") for branch in ttl.get("oneOf", [ttl])], ttl
        assert "streamToken" in schema.json()["components"]["securitySchemes"]
        yaml_text = client.get("/schema/openapi.yaml").text
        assert "streamToken" in yaml_text
        for page in ("/schema", "/schema/redoc", "/schema/swagger", "/schema/elements"):
            answer: httpx.Response = client.get(page)
            assert answer.status_code == 200, (page, answer.status_code)
        # ReDoc embeds the schema in its page: the finished one.
        assert "streamToken" in client.get("/schema/redoc").text
