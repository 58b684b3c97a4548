"""Listeners under ``voxgate serve --workers 2`` without Redis: feeds read the shared store.

Connections land on either worker; a listener on the other worker than the
stream's hears it through its feed's store reads (every 0.25 s). With eight
listeners, some are on each worker (all on one has odds of 1 in 128).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from e2e.listening import SseListener, WsListener
from e2e.wire import Api, Sender, payload_for
from servers import Server, start_server

FRAMES = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"VOXGATE_DURABILITY": "process"}
    with start_server(tmp_path_factory.mktemp("workers"), env=env, workers=2) as running:
        yield running


async def test_listeners_on_either_worker_hear_everything(
    api: Api, http: httpx.AsyncClient, server: Server
) -> None:
    sid = await api.new_session()
    listeners = [await WsListener.open(server, sid, audio=True) for _ in range(6)]
    async with SseListener.open(http, sid) as sse_one, SseListener.open(http, sid) as sse_two:
        stream = await api.stream(sid)
        assert stream.hello is not None
        sender = Sender(stream, lambda seq: payload_for(sid, seq, 200), batch=10)
        await sender.run(range(FRAMES), FRAMES - 1)
        assert sender.complete is not None
        texts = [f"line {i}" for i in range(5)]
        for text in texts:
            body = {"role": "user", "text": text, "is_final": True, "timestamp": 0}
            response = await http.post(f"/v1/sessions/{sid}/transcripts", json=body)
            assert response.status_code == 201

        for listener in listeners:
            await listener.until(
                lambda h: (
                    h.next_audio == FRAMES and len(h.transcripts) == 5 and "complete" in h.states
                )
            )
        for sse in (sse_one, sse_two):
            await sse.until(
                lambda s: len(s.heard.transcripts) == 5 and "complete" in s.heard.states
            )
            assert [t["text"] for t in sse.heard.transcripts] == texts
    for listener in listeners:
        await listener.close()
        frames = [(seq, payload) for seq, _, _, payload in listener.heard.frames]
        assert frames == [(seq, payload_for(sid, seq, 200)) for seq in range(FRAMES)]
        assert [t["text"] for t in listener.heard.transcripts] == texts
        assert listener.heard.latest()["missing"] == []
