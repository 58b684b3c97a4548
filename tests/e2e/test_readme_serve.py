"""The README's first command, ``./scripts/serve.sh``, as a new user runs it.

It sets the checkout up (every step already done here, so it only checks) and
serves on the embedded default with no configuration: a generated API key in
the data dir, a session streamed to completion, a clean exit on SIGTERM.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from e2e.wire import Api, frame, stream_crc
from servers import Server

ROOT = Path(__file__).resolve().parents[2]


class ScriptServer(Server):
    """``scripts/serve.sh`` instead of ``python -m voxgate serve``."""

    startup_timeout_s = 120.0  # the script checks the setup before it serves

    def command(self) -> list[str]:
        script = ROOT / "scripts" / "serve.sh"
        return ["bash", str(script), "--host", "127.0.0.1", "--port", str(self.port)]


async def test_serve_script_runs_the_embedded_default_end_to_end(tmp_path: Path) -> None:
    server = ScriptServer(tmp_path, env={"VOXGATE_API_KEYS": ""})
    server.start()
    try:
        key = (server.data_dir / "api_key").read_text().strip()
        assert key, "no generated key in the data dir"
        assert key in server.log_text(), "the generated key is printed at start"
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers) as http:
            api = Api(server, http)
            session_id = await api.new_session()
            payloads = [bytes([seq]) * 640 for seq in range(5)]
            stream = await api.stream(session_id)
            await stream.send(*(frame(s, p, end=s == 4) for s, p in enumerate(payloads)))
            complete = await stream.recv_type("complete")
            assert complete["stream_crc32c"] == stream_crc(payloads)
            await stream.close()
            assert await api.audio_bytes(session_id) == b"".join(payloads)
    finally:
        code = server.stop()
    assert code == 0, f"serve.sh exited with {code} on SIGTERM\n{server.log_tail()}"
