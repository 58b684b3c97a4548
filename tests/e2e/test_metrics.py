"""Prometheus metrics of a real server, the Grafana dashboard and the alert rules in deploy/."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e.wire import Api, frame, payload_for, raw_frame
from servers import API_KEY, Server, start_server

DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "voxgate-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "voxgate-alerts.yml"
MAX_FRAME = 4096
WINDOW = 4 * MAX_FRAME
SPOOFED = "198.51.100.77"
# A second API key, for the session-creation limit (counted per key).
LIMITED_KEY = "limited-0123456789abcdefghijklmnopqrstuvwxyz"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "VOXGATE_MAX_FRAME_BYTES": str(MAX_FRAME),
        "VOXGATE_WINDOW_BYTES": str(WINDOW),
        "VOXGATE_MAX_MESSAGE_BYTES": str(16 * MAX_FRAME),
        "VOXGATE_API_KEYS": f"{API_KEY},limited:{LIMITED_KEY}",
        "VOXGATE_RATE_LIMIT_SESSIONS": "2/1m",
        "VOXGATE_TRUSTED_PROXIES": "127.0.0.1",
    }
    with start_server(tmp_path_factory.mktemp("metrics"), env=env) as running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    # Each test's own requests come from an address of their own (behind the trusted proxy).
    headers = {"Authorization": f"Bearer {server.api_key}", "X-Forwarded-For": "192.0.2.10"}
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as client:
        yield client


def scrape_text(base_url: str) -> str:
    response = httpx.get(f"{base_url}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def families(text: str) -> set[str]:
    """Every metric name a query may use: TYPE lines, plus histogram series suffixes."""
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


async def test_ingest_refusals_tokens_limits_and_http_are_counted(api: Api, server: Server) -> None:
    before = samples(scrape_text(server.base_url))
    sid = await api.new_session()
    stream = await api.stream(sid)
    payloads = {seq: payload_for(sid, seq, MAX_FRAME) for seq in range(12)}
    # Four acked, then a resend (duplicate), a conflict, a bad CRC and a too-large frame.
    assert (await api.send_all(stream, {s: payloads[s] for s in range(4)})).acked == set(range(4))
    await stream.send(
        frame(0, payloads[0]),
        frame(1, b"another payload"),
        raw_frame(4, payloads[4], crc=1),
        frame(5, b"x" * (MAX_FRAME + 1)),
    )
    answers = await stream.collect([0, 1, 4, 5])
    assert answers.summary() == {
        "acked": [],
        "duplicate": [[0, 0]],
        "conflict": [[1, 1]],
        "checksum": [[4, 4]],
        "too_large": [[5, 5]],
    }
    # Twice the window at once: four admitted, four refused for credit.
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(4, 12)))
    answers = await stream.collect(range(4, 12))
    assert answers.summary() == {"acked": [[4, 7]], "duplicate": [], "window": [[8, 11]]}
    during = samples(scrape_text(server.base_url))
    assert value(during, "voxgate_active_streams") == value(before, "voxgate_active_streams") + 1
    await stream.close()
    # The server finishes its side of the close after ours: wait until it has counted it.
    for _ in range(100):
        now = samples(scrape_text(server.base_url))
        if value(now, "voxgate_active_streams") == value(before, "voxgate_active_streams"):
            break
        await asyncio.sleep(0.05)

    upload = await api.upload(sid, frame(20, b"up" * 10) + frame(21, b"load" * 10))
    assert upload.status_code == 200, upload.text
    refused = await api.connect(sid, "vgt_not-a-token")
    await refused.expect_close(4401)
    spoofed = {"X-Forwarded-For": SPOOFED, "Authorization": f"Bearer {LIMITED_KEY}"}
    statuses = [(await api.http.post("/v1/sessions", json={}, headers=spoofed)).status_code]
    statuses += [(await api.http.post("/v1/sessions", json={}, headers=spoofed)).status_code]
    statuses += [(await api.http.post("/v1/sessions", json={}, headers=spoofed)).status_code]
    assert statuses == [201, 201, 429]

    after = samples(scrape_text(server.base_url))

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("voxgate_frames_ingested_total", transport="websocket") == 8
    assert delta("voxgate_frames_ingested_total", transport="http") == 2
    assert delta("voxgate_bytes_ingested_total", transport="http") == 60
    # Eight acked and one duplicate of MAX_FRAME bytes, and the 15-byte conflicting one.
    assert delta("voxgate_bytes_ingested_total", transport="websocket") == 9 * MAX_FRAME + 15
    assert delta("voxgate_frames_duplicate_total", transport="websocket") == 1
    assert delta("voxgate_frames_conflict_total", transport="websocket") == 1
    for reason, n in (("conflict", 1), ("checksum", 1), ("too_large", 1), ("window", 4)):
        assert delta("voxgate_nacks_total", transport="websocket", reason=reason) == n, reason
    assert delta("voxgate_ack_latency_seconds_count") >= 3
    assert delta("voxgate_ack_window_bytes_count") >= 3
    assert delta("voxgate_commit_batch_frames_count") >= 3
    assert delta("voxgate_commit_batch_frames_sum") == 12  # 8 + duplicate + conflict + 2 uploaded
    assert delta("voxgate_commit_latency_seconds_count") >= 3
    assert delta("voxgate_tokens_minted_total") == 2
    assert delta("voxgate_tokens_consumed_total") == 2
    assert delta("voxgate_tokens_rejected_total") == 1
    assert delta("voxgate_stream_closes_total", code="1000", by="client") == 1
    assert delta("voxgate_stream_closes_total", code="4401", by="server") == 1
    assert delta("voxgate_rate_limited_total", limit="sessions") == 1
    sessions_201 = {"method": "POST", "route": "/v1/sessions", "status": "201"}
    assert delta("voxgate_http_requests_total", **sessions_201) == 3
    sessions_429 = {**sessions_201, "status": "429"}
    assert delta("voxgate_http_requests_total", **sessions_429) == 1
    assert (
        delta("voxgate_http_request_duration_seconds_count", method="POST", route="/v1/sessions")
        == 4
    )
    assert value(after, "voxgate_active_streams") == value(before, "voxgate_active_streams")
    assert value(after, "voxgate_memory_rss_bytes") > 10 * 1024 * 1024
    assert value(after, "voxgate_window_bytes_configured") == WINDOW


async def test_unknown_routes_are_one_label_not_one_per_path(api: Api, server: Server) -> None:
    for n in range(5):
        assert (await api.http.get(f"/probe/{n}")).status_code == 404
    text = scrape_text(server.base_url)
    assert "/probe/" not in text
    after = samples(text)
    assert (
        value(after, "voxgate_http_requests_total", method="GET", route="unmatched", status="404")
        >= 5
    )


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has no panels"
    queries = []
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        queries += [target["expr"] for target in panel["targets"]]
    return queries


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
    return rules


def test_alerts_cover_what_operators_alert_on() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    assert "voxgate_ack_latency_seconds_bucket" in rules["VoxgateAckLatencyHigh"]
    assert "voxgate_http_request_duration_seconds_bucket" in rules["VoxgateHttpLatencyHigh"]
    assert 'status=~"5.."' in rules["VoxgateHttpErrorRate"]
    assert "voxgate_memory_rss_bytes" in rules["VoxgateMemoryHigh"]
    assert "voxgate_backpressure" in rules["VoxgateBackpressureSustained"]


def test_every_metric_the_dashboard_and_alerts_use_exists(server: Server) -> None:
    exposed = families(scrape_text(server.base_url))
    used: dict[str, str] = {}
    for expr in dashboard_queries():
        used |= {name: "dashboard" for name in re.findall(r"\bvoxgate_[a-z0-9_]+", expr)}
    for rule in alert_rules():
        used |= {name: rule["alert"] for name in re.findall(r"\bvoxgate_[a-z0-9_]+", rule["expr"])}
    assert len(used) >= 15
    missing = {name: where for name, where in used.items() if name not in exposed}
    assert not missing, f"queries use metrics /metrics does not have: {missing}"


async def test_two_workers_report_one_sum(tmp_path: Path) -> None:
    with start_server(tmp_path, workers=2) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            for _ in range(40):
                assert (await client.get("/health")).status_code == 200
            pids = {
                path.name.rsplit("_", 1)[-1] for path in (server.data_dir / "metrics").glob("*.db")
            }
            assert len(pids) >= 2, f"metric files of {pids} only"
            for _ in range(6):  # whichever worker answers, it reports both
                text = (await client.get("/metrics")).text
                health = {"method": "GET", "route": "/health", "status": "200"}
                assert value(samples(text), "voxgate_http_requests_total", **health) >= 40


async def test_values_a_client_chooses_never_become_label_values(api: Api, server: Server) -> None:
    """Invented methods and close codes are counted under ``other``: what a client
    sends cannot add series (each would stay in every scrape for good)."""
    invented = [f"BREW{n}X" for n in range(5)]
    for method in invented:
        answer = await api.http.request(method, "/v1/sessions")
        assert 400 <= answer.status_code < 500, answer.status_code
    closes = [4321, 3999, 4999]
    sid = await api.new_session()
    for code in closes:
        stream = await api.stream(sid)
        await stream.ws.close(code)
    text = ""
    for _ in range(100):  # the server counts a close once its side of it is done
        text = scrape_text(server.base_url)
        other = value(samples(text), "voxgate_stream_closes_total", code="other", by="client")
        if other >= len(closes):
            break
        await asyncio.sleep(0.05)
    for word in invented:
        assert word not in text, word
    for code in closes:
        assert f'code="{code}"' not in text, code
    now = samples(text)
    assert value(now, "voxgate_stream_closes_total", code="other", by="client") >= len(closes)
    requests = value(
        now, "voxgate_http_requests_total", method="other", route="unmatched", status="405"
    )
    assert requests >= len(invented)
