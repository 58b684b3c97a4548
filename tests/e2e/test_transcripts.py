"""Transcripts over HTTP: post, supersede, list with paging, the relay alias, and errors."""

from __future__ import annotations

from typing import Any

import httpx

from e2e.wire import Api, assert_problem

Json = dict[str, Any]


async def post(http: httpx.AsyncClient, session_id: str, **body: Any) -> httpx.Response:
    body.setdefault("timestamp", 1712000000.5)
    return await http.post(f"/v1/sessions/{session_id}/transcripts", json=body)


async def listed(http: httpx.AsyncClient, session_id: str, **params: Any) -> Json:
    response = await http.get(f"/v1/sessions/{session_id}/transcripts", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_post_answers_the_stored_entry(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    response = await post(http, sid, role="user", text="hello", is_final=True, timestamp=12.5)
    assert response.status_code == 201, response.text
    entry = response.json()
    assert {k: entry[k] for k in ("id", "session_id", "role", "text", "is_final")} == {
        "id": 1,
        "session_id": sid,
        "role": "user",
        "text": "hello",
        "is_final": True,
    }
    assert entry["timestamp"] == 12.5
    assert entry["seq"] is None
    assert entry["supersedes"] is None
    assert entry["received_at"].endswith("Z")
    again = await post(http, sid, role="agent", text="hi", is_final=True, timestamp="t-2", seq=4)
    assert again.status_code == 201
    assert (again.json()["id"], again.json()["timestamp"], again.json()["seq"]) == (2, "t-2", 4)
    assert (await listed(http, sid))["transcripts"] == [entry, again.json()]


async def test_interims_are_superseded_by_their_final(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    await post(http, sid, role="user", text="I wa", is_final=False)  # 1
    await post(http, sid, role="user", text="Good", is_final=False, seq=9)  # 2
    await post(http, sid, role="user", text="I want", is_final=False)  # 3 supersedes 1
    final = await post(http, sid, role="user", text="I want it", is_final=True)  # 4 supersedes 3
    assert final.status_code == 201
    assert final.json()["supersedes"] == 3
    keyed = await post(http, sid, role="user", text="Good day", is_final=True, seq=9)  # 5
    assert keyed.json()["supersedes"] == 2
    page = await listed(http, sid)
    assert [(t["id"], t["text"], t["supersedes"]) for t in page["transcripts"]] == [
        (4, "I want it", 3),
        (5, "Good day", 2),
    ]


async def test_repeated_and_late_posts_store_nothing(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    first = await post(http, sid, role="user", text="yes", is_final=True, seq=1)
    assert first.status_code == 201
    retry = await post(http, sid, role="user", text="yes", is_final=True, seq=1)
    assert retry.status_code == 200
    assert retry.json() == first.json()
    late = await post(http, sid, role="user", text="ye", is_final=False, seq=1)
    assert late.status_code == 200
    assert late.json() == first.json()
    conflict = await post(http, sid, role="user", text="no", is_final=True, seq=1)
    problem = assert_problem(conflict, 409)
    assert problem["type"] == "urn:voxgate:error:transcript_conflict"
    assert problem["transcript"] == first.json()
    assert (await listed(http, sid))["transcripts"] == [first.json()]


async def test_list_pages_with_after_and_limit(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    for i in range(5):
        await post(http, sid, role="user", text=f"t{i}", is_final=True)
    page = await listed(http, sid, limit=2)
    assert [t["id"] for t in page["transcripts"]] == [1, 2]
    assert page["next"] == 2
    page = await listed(http, sid, limit=2, after=page["next"])
    assert [t["id"] for t in page["transcripts"]] == [3, 4]
    page = await listed(http, sid, limit=2, after=page["next"])
    assert [t["id"] for t in page["transcripts"]] == [5]
    assert page["next"] is None
    for params in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"limit": "x"}):
        response = await http.get(f"/v1/sessions/{sid}/transcripts", params=params)
        assert_problem(response, 400)


async def test_relay_alias(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    body = {"session_id": sid, "role": "agent", "text": "how can I", "is_final": False}
    response = await http.post(
        f"/voice/transcript/relay/{sid}", json={**body, "timestamp": 5, "confidence": 0.9}
    )
    assert response.status_code == 201, response.text
    assert response.json()["text"] == "how can I"
    final = await http.post(
        f"/voice/transcript/relay/{sid}",
        json={**body, "text": "how can I help?", "is_final": True, "timestamp": 6},
    )
    assert final.status_code == 201
    assert final.json()["supersedes"] == response.json()["id"]
    other = await api.new_session()
    mismatch = await http.post(f"/voice/transcript/relay/{other}", json={**body, "timestamp": 7})
    assert assert_problem(mismatch, 422)["type"] == "urn:voxgate:error:session_mismatch"
    assert (await listed(http, other))["transcripts"] == []
    assert [t["text"] for t in (await listed(http, sid))["transcripts"]] == ["how can I help?"]


async def test_bad_bodies_are_refused(api: Api, http: httpx.AsyncClient) -> None:
    sid = await api.new_session()
    good = {"role": "user", "text": "x", "is_final": True, "timestamp": 1}
    bad_bodies: list[Any] = [
        {k: v for k, v in good.items() if k != "role"},
        {k: v for k, v in good.items() if k != "timestamp"},
        {**good, "role": ""},
        {**good, "role": "r" * 65},
        {**good, "text": "x" * 65_537},
        {**good, "is_final": "yes"},
        {**good, "timestamp": True},
        {**good, "timestamp": "t" * 65},
        {**good, "seq": -1},
        {**good, "unknown": 1},
        {**good, "text": "nul \u0000 inside"},
        {**good, "role": "us\u0000er"},
        {**good, "timestamp": "\u0000"},
        [good],
    ]
    for body in bad_bodies:
        response = await http.post(f"/v1/sessions/{sid}/transcripts", json=body)
        assert_problem(response, 400)
    assert (await listed(http, sid))["transcripts"] == []


async def test_auth_unknown_and_deleted_sessions(
    api: Api, http: httpx.AsyncClient, server: Any
) -> None:
    sid = await api.new_session()
    body = {"role": "user", "text": "x", "is_final": True, "timestamp": 1}
    async with httpx.AsyncClient(base_url=http.base_url) as anonymous:
        assert_problem(await anonymous.post(f"/v1/sessions/{sid}/transcripts", json=body), 401)
        assert_problem(await anonymous.get(f"/v1/sessions/{sid}/transcripts"), 401)
        relay = {**body, "session_id": sid}
        assert_problem(await anonymous.post(f"/voice/transcript/relay/{sid}", json=relay), 401)
    unknown = "ses_00000000000000000000000000"
    assert_problem(await http.post(f"/v1/sessions/{unknown}/transcripts", json=body), 404)
    assert_problem(await http.get(f"/v1/sessions/{unknown}/transcripts"), 404)
    await post(http, sid, role="user", text="gone soon", is_final=True)
    assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204
    assert_problem(await http.post(f"/v1/sessions/{sid}/transcripts", json=body), 410)
    assert_problem(await http.get(f"/v1/sessions/{sid}/transcripts"), 410)
