"""Long CLI commands show a progress bar on a terminal and stay quiet in scripts.

Each command runs as a real process: once with stdout and stderr on a pseudo
terminal (what a person at a shell sees), once with pipes (what a script
gets), and once on the terminal with ``--json``.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import httpx

from servers import Server

BAR = "━"  # what rich draws its bars with
ESCAPE = "\x1b["
PROCESS_BOUND_S = 120.0


def on_terminal(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``command`` with stdout and stderr on a pseudo terminal; its code and output."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], PROCESS_BOUND_S)
            assert ready, f"no output within {PROCESS_BOUND_S} s: {b''.join(chunks)!r}"
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(controller)
    return proc.wait(PROCESS_BOUND_S), b"".join(chunks).decode(errors="replace")


def in_script(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=PROCESS_BOUND_S,
    )


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.update(TERM="xterm-256color", COLUMNS="120", **extra)
    env.pop("NO_COLOR", None)
    return env


def voxgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxgate", *args]


def new_session(server: Server) -> str:
    created = httpx.post(
        f"{server.base_url}/v1/sessions",
        json={"codec": "pcm_s16le"},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def stream_command(server: Server, audio: Path, *flags: str) -> list[str]:
    return voxgate(
        "stream",
        str(audio),
        "--session",
        new_session(server),
        "--url",
        server.base_url,
        "--api-key",
        server.api_key,
        *flags,
    )


def test_stream_shows_a_bar_on_a_terminal_and_nothing_extra_in_a_script(
    server: Server, tmp_path: Path
) -> None:
    audio = tmp_path / "audio.raw"
    audio.write_bytes(os.urandom(400_000))

    code, output = on_terminal(stream_command(server, audio), cli_env())
    assert code == 0, output
    assert BAR in output, f"no progress bar on a terminal: {output!r}"
    assert "streaming audio.raw" in output, output
    assert "verified: True" in output, output

    done = in_script(stream_command(server, audio), cli_env())
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"a script got more than the report: {done.stderr!r}"
    assert ESCAPE not in done.stdout, done.stdout
    assert "verified: True" in done.stdout.splitlines(), done.stdout

    code, output = on_terminal(stream_command(server, audio, "--json"), cli_env())
    assert code == 0, output
    assert BAR not in output, f"--json drew a bar: {output!r}"
    assert ESCAPE not in output, f"--json drew a bar: {output!r}"
    assert json.loads(output)["verified"] is True


def test_retention_run_and_backup_show_progress_only_on_a_terminal(tmp_path: Path) -> None:
    env = cli_env(VOXGATE_DATA_DIR=str(tmp_path / "data"), VOXGATE_LOG_LEVEL="WARNING")
    for command, what in (
        (voxgate("retention", "run"), "retention: moving sessions"),
        (voxgate("db", "backup"), "backing up"),
    ):
        code, output = on_terminal(command, env)
        assert code == 0, output
        assert what in output, f"{command}: no progress on a terminal: {output!r}"

        done = in_script(command, env)
        assert done.returncode == 0, done.stderr
        assert what not in done.stdout + done.stderr, done
        assert ESCAPE not in done.stdout + done.stderr, done
        json.loads(done.stdout.splitlines()[-1])  # the result, as before

        code, output = on_terminal([*command, "--json"], env)
        assert code == 0, output
        assert what not in output, f"--json: {output!r}"
        assert ESCAPE not in output, f"--json: {output!r}"
