"""Tenants: each API key sees only the sessions it created; admin keys see all.

A tenant key that asks for another tenant's session gets 404, exactly as for an
id that was never created, on every route that takes a session id; key names
(never secrets) appear in logs and metrics.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from e2e.listening import WsListener
from e2e.wire import Api, assert_problem, frame, payload_for
from servers import Server, ServerError, start_server

ACME = "acme-" + uuid.uuid4().hex
GLOBEX = "globex-" + uuid.uuid4().hex
OPS = "ops-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, shared_store_env: dict[str, str]
) -> Iterator[Server]:
    """One server per store kind: the embedded store, and PostgreSQL."""
    env = {
        **shared_store_env,
        "VOXGATE_API_KEYS": f"acme:{ACME}, globex:{GLOBEX}, ops:admin:{OPS}",
    }
    with start_server(tmp_path_factory.mktemp("tenants"), env=env) as running:
        yield running


async def client(server: Server, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30.0
    )


@pytest.fixture
async def acme(server: Server) -> AsyncIterator[Api]:
    async with await client(server, ACME) as http:
        api = Api(server, http)
        yield api
        await api.close_streams()


@pytest.fixture
async def globex(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with await client(server, GLOBEX) as http:
        yield http


@pytest.fixture
async def ops(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with await client(server, OPS) as http:
        yield http


def routes(sid: str) -> list[tuple[str, str, dict[str, object] | None]]:
    """Every HTTP route that names a session, with a body it would accept."""
    transcript = {"role": "user", "text": "hi", "is_final": True, "timestamp": 1}
    return [
        ("GET", f"/v1/sessions/{sid}", None),
        ("GET", f"/v1/sessions/{sid}/missing", None),
        ("GET", f"/v1/sessions/{sid}/audio?allow_gaps=true", None),
        ("GET", f"/v1/sessions/{sid}/archive", None),
        ("GET", f"/v1/sessions/{sid}/transcripts", None),
        ("POST", f"/v1/sessions/{sid}/transcripts", transcript),
        ("POST", f"/voice/transcript/relay/{sid}", {**transcript, "session_id": sid}),
        ("POST", f"/v1/sessions/{sid}/tokens", {}),
        ("POST", f"/v1/sessions/{sid}/listen-tokens", {}),
        ("GET", f"/v1/sessions/{sid}/events", None),
        ("DELETE", f"/v1/sessions/{sid}", None),
    ]


async def test_another_tenants_session_is_not_found_anywhere(
    server: Server, acme: Api, globex: httpx.AsyncClient
) -> None:
    sid = await acme.new_session()
    stream = await acme.stream(sid)
    await stream.send(frame(0, payload_for(sid, 0)))
    assert (await stream.collect([0])).acked == {0}
    await stream.close()
    unknown = "ses_" + uuid.uuid4().hex[:26].upper()
    for (method, path, body), (_, never_path, never_body) in zip(
        routes(sid), routes(unknown), strict=True
    ):
        foreign = await globex.request(method, path, json=body)
        assert_problem(foreign, 404)
        # The same answer as for an id never created: nothing tells that it exists.
        never = await globex.request(method, never_path, json=never_body)
        assert foreign.json() == {
            k: v.replace(unknown, sid) if isinstance(v, str) else v for k, v in never.json().items()
        }, path
    listener = await WsListener.open(server, sid, key=GLOBEX, read_hello=False)
    assert await listener.until_closed() == 4404
    # Nothing was changed by those attempts: the owner still has its session, unchanged.
    session = await acme.get_session(sid)
    assert session["state"] == "open"
    assert session["frames"] == 1
    assert session["tenant"] == "acme"
    assert (await acme.http.get(f"/v1/sessions/{sid}/transcripts")).json()["transcripts"] == []
    # Its own key reaches every route.
    for method, path, body in routes(sid):
        if method == "GET" and path.endswith("/events"):
            continue  # an open stream of events: the WebSocket listener below covers it
        answer = await acme.http.request(method, path, json=body)
        assert answer.status_code < 300, (path, answer.text)
    # Deleted: the owner learns it is gone (410), another tenant still gets 404.
    assert_problem(await acme.http.get(f"/v1/sessions/{sid}"), 410)
    assert_problem(await globex.get(f"/v1/sessions/{sid}"), 404)


async def test_listings_show_a_tenant_its_own_sessions_and_admin_all(
    acme: Api, globex: httpx.AsyncClient, ops: httpx.AsyncClient
) -> None:
    mine = {await acme.new_session() for _ in range(3)}
    theirs = (await globex.post("/v1/sessions", json={})).json()["id"]

    async def listed(http: httpx.AsyncClient) -> set[str]:
        ids: set[str] = set()
        after = None
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if after is not None:
                params["after"] = after
            page = (await http.get("/v1/sessions", params=params)).json()
            ids |= {s["id"] for s in page["sessions"]}
            after = page["next"]
            if after is None:
                return ids

    acme_sees = await listed(acme.http)
    assert mine <= acme_sees
    assert theirs not in acme_sees
    assert all(s.startswith("s") for s in acme_sees)
    assert theirs in await listed(globex)
    assert not mine & await listed(globex)
    assert mine | {theirs} <= await listed(ops)
    # Admin reads, listens to and deletes any tenant's session.
    assert (await ops.get(f"/v1/sessions/{theirs}")).status_code == 200
    assert (await ops.post(f"/v1/sessions/{theirs}/listen-tokens", json={})).status_code == 201
    assert (await ops.delete(f"/v1/sessions/{theirs}")).status_code == 204


async def test_a_tenant_token_listens_only_to_its_session(server: Server, acme: Api) -> None:
    sid = await acme.new_session()
    token = (await acme.http.post(f"/v1/sessions/{sid}/listen-tokens", json={})).json()["token"]
    listener = await WsListener.open(server, sid, token=token)
    await listener.close()
    own = await WsListener.open(server, sid, key=ACME)
    await own.close()


async def test_process_wide_figures_are_for_admin_keys(
    globex: httpx.AsyncClient, ops: httpx.AsyncClient
) -> None:
    for path in ("/v1/stats", "/v1/storage"):
        assert_problem(await globex.get(path), 403)
        assert (await ops.get(path)).status_code == 200


async def test_key_names_not_secrets_appear_in_logs_and_metrics(
    server: Server, acme: Api, ops: httpx.AsyncClient
) -> None:
    await acme.new_session()
    text = (await ops.get("/metrics")).text
    counts = {
        line.split('key="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("voxgate_api_key_requests_total{")
    }
    assert {"acme", "ops"} <= counts <= {"acme", "globex", "ops"}
    log = server.log_text()
    assert '"key_name":"acme"' in log
    for secret in (ACME, GLOBEX, OPS):
        assert secret not in log
        assert secret not in text


@pytest.mark.parametrize(
    ("keys", "named"),
    [("acme:short-secret", "API key 'acme'"), ("tooshort", "API key #1 (a bare secret)")],
)
def test_a_short_secret_is_refused_at_start(
    tmp_path_factory: pytest.TempPathFactory, keys: str, named: str
) -> None:
    env = {"VOXGATE_API_KEYS": keys}
    with pytest.raises(ServerError) as refused, start_server(tmp_path_factory.mktemp("x"), env=env):
        pass
    message = str(refused.value)
    assert named in message
    assert "at least 32" in message
    assert keys.split(":")[-1] not in message.replace("API key", "")
