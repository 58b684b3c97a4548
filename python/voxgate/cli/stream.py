"""``voxgate stream FILE --session ID``: stream a file into a session and verify it.

WAV files (16-bit PCM, mu-law, A-law) and raw mu-law / A-law files are recognised
(:mod:`voxgate.client.audiofile`): their audio goes in 20 ms frames, paced at their
own rate with ``--realtime``, and only into a session of their codec.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import orjson

from voxgate.client.api import Api
from voxgate.client.audiofile import AudioFileError, probe
from voxgate.client.errors import ApiError, StreamError
from voxgate.client.file import stream_file
from voxgate.progress import progress


def add_stream_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``stream`` sub-command; its handler is :func:`run_stream_command`."""
    parser = subparsers.add_parser(
        "stream",
        help="stream a file into a session over WebSocket and verify it end to end",
        description=(
            "Send FILE as frames into an existing session, end the stream, wait for "
            "the server's complete and check its stream CRC-32C against the client's."
        ),
    )
    parser.add_argument(
        "file",
        metavar="FILE",
        help=(
            "audio to send: a WAV file (PCM 16-bit, mu-law or A-law: its data chunk is sent), "
            "raw mu-law .ulaw/.mulaw or A-law .alaw (8 kHz mono), or any file as it is"
        ),
    )
    parser.add_argument("--session", required=True, metavar="ID", help="session id")
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="server root (default %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="API key to mint stream tokens with (default: env VOXGATE_API_KEY)",
    )
    parser.add_argument(
        "--frame-bytes",
        type=int,
        default=None,
        help="payload bytes per frame (default: 20 ms of a known format, else 640)",
    )
    parser.add_argument(
        "--frames-per-message", type=int, default=1, help="frames per WebSocket message"
    )
    parser.add_argument("--realtime", action="store_true", help="pace frames like a live capture")
    parser.add_argument(
        "--bytes-per-second",
        type=float,
        default=None,
        help="pacing rate with --realtime (default: the file's own rate, else 32000)",
    )
    parser.add_argument(
        "--token-mode",
        choices=("header", "subprotocol", "query"),
        default="header",
        help="how the stream token is sent (default header)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON (and no progress bar, as when stdout is not a terminal)",
    )
    parser.set_defaults(handler=run_stream_command)


async def run_stream_command(args: argparse.Namespace) -> int:
    """Run ``voxgate stream``; prints the report and returns the exit status.

    0 when the server's complete matched, 1 when the stream failed (the reason
    goes to stderr), 2 for a usage error (no API key, bad sizes).
    """
    api_key = args.api_key or os.environ.get("VOXGATE_API_KEY")
    if not api_key:
        print("voxgate stream: no API key (--api-key or VOXGATE_API_KEY)", file=sys.stderr)
        return 2
    if (args.frame_bytes is not None and args.frame_bytes < 1) or args.frames_per_message < 1:
        print("voxgate stream: sizes must be at least 1", file=sys.stderr)
        return 2
    try:
        audio = probe(args.file)
    except (AudioFileError, OSError) as exc:
        print(f"voxgate stream: {exc}", file=sys.stderr)
        return 2
    frame_bytes = args.frame_bytes or audio.frame_bytes or 640
    bytes_per_second = args.bytes_per_second or audio.bytes_per_second or 32000.0
    async with Api(args.url, api_key) as api:
        try:
            if audio.codec is not None:
                # A file of a known codec goes only into a session of that codec.
                codec = (await api.get_session(args.session)).get("codec")
                if codec not in (None, audio.codec):
                    print(
                        f"voxgate stream: {args.file} is {audio.codec}, session "
                        f"{args.session} is {codec}",
                        file=sys.stderr,
                    )
                    return 2
            size = (
                audio.length
                if audio.length is not None
                else (await asyncio.to_thread(os.path.getsize, args.file)) - audio.offset
            )
            with progress(not args.json) as bar:
                bar.start(f"streaming {os.path.basename(args.file)}", total=size, unit="bytes")
                report = await stream_file(
                    args.file,
                    base_url=args.url,
                    session_id=args.session,
                    token_factory=api.token_factory(args.session),
                    frame_bytes=frame_bytes,
                    frames_per_message=args.frames_per_message,
                    bytes_per_second=bytes_per_second if args.realtime else None,
                    offset=audio.offset,
                    length=audio.length,
                    token_mode=args.token_mode,
                    on_progress=lambda sent: bar.update(completed=sent),
                )
        except (StreamError, ApiError, OSError, ValueError) as exc:
            print(f"voxgate stream: {exc}", file=sys.stderr)
            return 1
    stats = report.stats
    fields = {
        "session": report.session_id,
        "codec": audio.codec or "as is",
        "frames": report.frames,
        "bytes": report.bytes,
        "stream_crc32c": f"0x{report.stream_crc32c:08x}",
        "verified": report.verified,
        "elapsed_s": round(report.elapsed_s, 3),
        "resent": stats.frames_resent,
        "reconnects": stats.reconnects,
    }
    if args.json:
        print(orjson.dumps(fields).decode())
    else:
        for key, value in fields.items():
            print(f"{key}: {value}")
    return 0
