"""TLS: ``voxgate serve --ssl-certfile/--ssl-keyfile`` serves https:// and wss:// only.

A self-signed certificate for 127.0.0.1 is made with the ``openssl`` command
line for the module; clients trust exactly that certificate.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2e.wire import payload_for, stream_crc
from servers import Server, ServerError, start_server
from voxgate.client import Api as ClientApi
from voxgate.client.stream import StreamClient

FRAMES = 300
SIZE = 640


def self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in ``directory``."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path]
) -> Iterator[Server]:
    with Server(tmp_path_factory.mktemp("tls-server"), tls=tls_files, workers=2) as running:
        yield running


async def test_a_session_streams_to_completion_over_wss(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.tls is not None
    # websockets builds its default TLS context for wss:// from OpenSSL's default
    # paths, which this variable points at the test's certificate.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.tls[0]))
    async with (
        httpx.AsyncClient(base_url=server.base_url, verify=server.ssl_context() or True) as http,
        ClientApi(server.base_url, server.api_key, client=http) as api,
    ):
        sid = (await api.create_session(codec="pcm_s16le"))["id"]
        payloads = [payload_for(sid, seq, SIZE) for seq in range(FRAMES)]
        async with StreamClient(server.base_url, sid, api.token_factory(sid)) as client:
            for payload in payloads:
                await client.send(payload)
            await client.end()
            completion = await client.wait_complete(60)
        assert completion.verified, completion
        assert completion.frames == FRAMES
        assert completion.stream_crc32c == stream_crc(payloads)
        assert await api.audio(sid) == b"".join(payloads)


def test_plain_http_is_not_served_and_an_untrusted_certificate_is_refused(
    server: Server,
) -> None:
    assert server.base_url.startswith("https://")
    ok = httpx.get(f"{server.base_url}/health", verify=server.ssl_context() or True)
    assert ok.status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/health", timeout=5)  # the system CAs do not know it


class TlsFromEnvironment(Server):
    """A client of ``tls`` as any; the server gets the files from VOXGATE_SSL_* only."""

    def command(self) -> list[str]:
        command = super().command()
        return command[: command.index("--ssl-certfile")]


def test_tls_settings_from_the_environment(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    env = {"VOXGATE_SSL_CERTFILE": str(cert), "VOXGATE_SSL_KEYFILE": str(key)}
    with TlsFromEnvironment(tmp_path, env=env, tls=tls_files) as server:
        ok = httpx.get(f"{server.base_url}/health", verify=server.ssl_context() or True)
        assert ok.status_code == 200


def test_a_key_that_does_not_match_the_certificate_stops_the_start(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    other_cert, _ = self_signed(tmp_path, "other")
    with pytest.raises(ServerError) as failure:
        start_server(
            tmp_path,
            env={"VOXGATE_SSL_CERTFILE": str(other_cert), "VOXGATE_SSL_KEYFILE": str(tls_files[1])},
        )
    message = str(failure.value)
    assert "exited with 1" in message, message
    assert "cannot be used together" in message, message
    assert "Traceback" not in message, message
