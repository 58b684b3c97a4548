"""Api against a mocked HTTP transport: requests it makes, answers and errors it reports."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from unit.client.fake_server import FakeVoxgate, running
from voxgate import _native
from voxgate.cli.stream import add_stream_command, run_stream_command
from voxgate.client import FRAMES_CONTENT_TYPE, Api, ApiError, stream_file, stream_url

Handler = Callable[[httpx.Request], httpx.Response]


def make_api(handler: Handler) -> Api:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return Api("http://vox.test", "key-1", client=client)


async def test_create_session_sends_only_given_fields_with_api_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "ses_1", "state": "open"})

    api = make_api(handler)
    session = await api.create_session(codec="opus", metadata={"a": 1})
    assert session["id"] == "ses_1"
    request = seen[0]
    assert request.method == "POST"
    assert request.url.path == "/v1/sessions"
    assert request.headers["Authorization"] == "Bearer key-1"
    assert json.loads(request.content) == {"codec": "opus", "metadata": {"a": 1}}


async def test_problem_details_become_api_error() -> None:
    problem = {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no ses_x"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404, json=problem, headers={"content-type": "application/problem+json"}
        )

    api = make_api(handler)
    with pytest.raises(ApiError) as caught:
        await api.get_session("ses_x")
    assert caught.value.status == 404
    assert caught.value.problem == problem
    assert "no ses_x" in str(caught.value)


async def test_non_json_error_body_is_kept_as_title() -> None:
    api = make_api(lambda request: httpx.Response(502, text="bad gateway"))
    with pytest.raises(ApiError) as caught:
        await api.missing("ses_1")
    assert caught.value.status == 502
    assert caught.value.problem["title"] == "bad gateway"


async def test_mint_token_and_factory() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(201, json={"token": f"t{len(bodies)}", "ttl_s": 60})

    api = make_api(handler)
    assert await api.mint_token("ses_1", ttl_s=30) == "t1"
    factory = api.token_factory("ses_1")
    assert await factory() == "t2"
    assert json.loads(bodies[0]) == {"ttl_s": 30}
    assert json.loads(bodies[1]) == {}


async def test_upload_frames_uses_token_and_content_type() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"acked": [[0, 1]], "duplicate": [], "rejected": []})

    api = make_api(handler)
    body = _native.encode_frame(0, b"ab") + _native.encode_frame(1, b"cd", end=True)
    result = await api.upload_frames("ses_1", "tok", body)
    assert result["acked"] == [[0, 1]]
    request = seen[0]
    assert request.url.path == "/v1/sessions/ses_1/frames"
    assert request.headers["Authorization"] == "Bearer tok"
    assert request.headers["Content-Type"] == FRAMES_CONTENT_TYPE
    assert request.content == body


async def test_audio_range_and_query() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(206, content=b"xyz")

    api = make_api(handler)
    assert await api.audio("ses_1", wav=True, allow_gaps=True, byte_range=(10, None)) == b"xyz"
    request = seen[0]
    assert request.headers["Range"] == "bytes=10-"
    assert request.url.params["format"] == "wav"
    assert request.url.params["allow_gaps"] == "true"


async def test_delete_and_list() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            return httpx.Response(204)
        assert request.url.params["limit"] == "5"
        return httpx.Response(200, json={"sessions": [], "next": None})

    api = make_api(handler)
    await api.delete_session("ses_1")
    assert await api.list_sessions(limit=5) == {"sessions": [], "next": None}


def test_stream_url() -> None:
    assert stream_url("http://h:1", "s") == "ws://h:1/v1/sessions/s/stream"
    assert (
        stream_url("https://h/pre/", "s", "a b") == "wss://h/pre/v1/sessions/s/stream?token=a%20b"
    )


async def test_stream_file_splits_paces_and_verifies(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10  # 2560 bytes: 4 full frames of 600 and a 160-byte tail
    path = tmp_path / "audio.raw"
    path.write_bytes(data)

    async def tokens() -> str:
        return "tok"

    async with running(FakeVoxgate()) as fake:
        report = await stream_file(
            path,
            base_url=fake.url,
            session_id=fake.session_id,
            token_factory=tokens,
            frame_bytes=600,
            bytes_per_second=2560 * 10,  # about 0.1 s
        )
    assert report.verified
    assert report.bytes == len(data)
    assert report.stream_crc32c == _native.crc32c(data)
    assert [len(fake.stored[s]) for s in sorted(fake.stored)][:5] == [600, 600, 600, 600, 160]
    assert report.elapsed_s >= 0.08


def test_cli_parses_stream_arguments() -> None:
    parser = argparse.ArgumentParser()
    add_stream_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["stream", "a.raw", "--session", "ses_1", "--frames-per-message", "4", "--realtime"]
    )
    assert args.file == "a.raw"
    assert args.session == "ses_1"
    assert args.url == "http://127.0.0.1:8000"
    assert args.frame_bytes is None  # 20 ms of the file's format, or 640 bytes
    assert args.frames_per_message == 4
    assert args.realtime
    assert args.handler is run_stream_command


async def test_cli_without_api_key_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VOXGATE_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_stream_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stream", "a.raw", "--session", "ses_1"])
    assert await run_stream_command(args) == 2
    assert "no API key" in capsys.readouterr().err
