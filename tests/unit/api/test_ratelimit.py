"""The reusable rate-limit guard, on a route of its own (as the transcript relay will use it)."""

from __future__ import annotations

from types import SimpleNamespace

from litestar import Litestar, post
from litestar.datastructures import State
from litestar.testing import TestClient

from voxgate.api.problems import EXCEPTION_HANDLERS
from voxgate.api.ratelimit import rate_limited
from voxgate.clientip import parse_networks
from voxgate.limits import Limits
from voxgate.rates import TRANSCRIPTS
from voxgate.settings import Settings


@post("/relay", guards=[rate_limited(TRANSCRIPTS)], status_code=202)
async def relay() -> dict[str, str]:
    return {"status": "relayed"}


def app(settings: Settings) -> Litestar:
    runtime = SimpleNamespace(
        limits=Limits(settings), trusted_proxies=parse_networks(settings.trusted_proxies)
    )
    return Litestar(
        route_handlers=[relay],
        exception_handlers=EXCEPTION_HANDLERS,
        state=State({"runtime": runtime}),
    )


def test_transcript_guard_applies_the_configured_rate() -> None:
    settings = Settings(rate_limit_transcripts="3/1m")
    with TestClient(app(settings)) as client:
        statuses = [client.post("/relay").status_code for _ in range(5)]
        assert statuses == [202, 202, 202, 429, 429]
        refused = client.post("/relay")
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.headers["Retry-After"] == "20"
        assert refused.json()["type"] == "urn:voxgate:error:rate_limited"


def test_transcript_guard_default_takes_a_backend_burst_and_off_disables_it() -> None:
    with TestClient(app(Settings())) as client:
        assert all(client.post("/relay").status_code == 202 for _ in range(300))
    with TestClient(app(Settings(rate_limit_transcripts="off"))) as client:
        assert all(client.post("/relay").status_code == 202 for _ in range(200))
