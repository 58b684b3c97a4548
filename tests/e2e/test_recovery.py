"""The recovery procedure of docs/operations.md, step by step, against real processes.

A server takes sessions while ``voxgate db backup`` runs beside it; later the
data dir is damaged; the steps of "Recovering the embedded store from a backup"
bring back every session and frame the backup holds.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from e2e.wire import Api, payload_for
from servers import Server, start_server


def voxgate_db(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``voxgate db ...`` with the server's settings, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "db", *args],
        env=server.environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def stream_session(api: Api, tag: str, frames: int, end: bool) -> tuple[str, bytes]:
    sid = await api.new_session(codec="opus")
    payloads = {seq: payload_for(tag, seq, 4000) for seq in range(frames)}
    stream = await api.stream(sid)
    answers = await api.send_all(stream, payloads, end_seq=frames - 1 if end else None)
    assert answers.acked == set(payloads)
    await stream.close()
    return sid, b"".join(payloads.values())


async def test_the_documented_recovery_procedure_restores_the_backup(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"VOXGATE_RETENTION_AT": "off"})
    try:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"}
        ) as http:
            api = Api(server, http)
            before = [await stream_session(api, f"s{n}", 30, end=n == 0) for n in range(3)]

            # A backup while the server keeps taking frames (online).
            busy, _ = await stream_session(api, "busy", 1, end=False)
            stream = await api.stream(busy)
            backup = asyncio.create_task(asyncio.to_thread(voxgate_db, server, "backup"))
            sent = {0: payload_for("busy", 0, 4000)}
            seq = 1
            while not backup.done():
                sent[seq] = payload_for("busy", seq, 4000)
                assert (await api.send_all(stream, {seq: sent[seq]})).acked == {seq}
                seq += 1
            made = await backup
            assert made.returncode == 0, made.stderr
            assert json.loads(made.stdout)["sessions"] == 4
            await stream.close()

            after, _ = await stream_session(api, "after", 5, end=True)
            await api.close_streams()

            # Restore refuses while the server has the store open (step 1's reason).
            refused = voxgate_db(server, "restore", "latest")
            assert refused.returncode == 1
            assert "stop it before restoring" in refused.stderr
    finally:
        server.kill()

    # The disaster: the database is garbage and a segment file is gone.
    (server.data_dir / "voxgate.db").write_bytes(b"\x00garbage" * 1000)
    shutil.rmtree(server.data_dir / "segments")

    # Step 1: the server is stopped (killed above). Step 2: choose the newest backup.
    listed = voxgate_db(server, "list")
    assert listed.returncode == 0, listed.stderr
    newest = Path(listed.stdout.splitlines()[0])
    assert newest.parent == server.data_dir / "backups"
    # Step 3: check it.
    verified = voxgate_db(server, "verify", newest.name)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    # Step 4: restore it.
    restored = voxgate_db(server, "restore", newest.name)
    assert restored.returncode == 0, restored.stderr
    report = json.loads(restored.stdout)
    assert report["missing_archives"] == []
    set_aside = Path(report["set_aside"])
    assert (set_aside / "voxgate.db").is_file()

    # Step 5: start the server and check.
    server.start()
    try:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {server.api_key}"}
        ) as http:
            api = Api(server, http)
            assert (await http.get("/health")).status_code == 200
            storage = (await http.get("/v1/storage")).json()
            assert storage["tiers"]["hot"]["sessions"] == 4
            for sid, audio in before:
                assert await api.audio_bytes(sid) == audio
            # Step 6: the busy session holds what was acked before the snapshot, and
            # /missing tells the client what to resend; the later session is gone.
            kept = await api.stored_seqs(busy)
            assert kept
            assert kept == set(range(len(kept))), "a backup holds a prefix of what was acked"
            assert await api.audio_bytes(busy) == b"".join(sent[s] for s in sorted(kept))
            assert (await http.get(f"/v1/sessions/{after}")).status_code == 404
    finally:
        server.stop()
    # Step 7: remove the set-aside files.
    shutil.rmtree(set_aside)
