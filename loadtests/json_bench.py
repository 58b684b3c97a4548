"""One JSON library per job: the cost of each candidate on the messages voxgate handles.

    python loadtests/json_bench.py [--number 200000]

Untyped messages of the hot path (an ``ack`` the server encodes per
acknowledged message, a control message it decodes), and a typed struct (an
archive manifest, as ``msgspec.Struct``). Prints the best of five timeit runs,
nanoseconds per call. docs/architecture.md quotes a run and the rule it backs.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

import msgspec
import orjson

ACK = {"type": "ack", "acked": [[1200, 1204]], "duplicate": [], "window_bytes": 1048576}
CONTROL = b'{"type":"ping","t":1733550000000}'


class Manifest(msgspec.Struct):
    session_id: str
    codec: str
    sample_rate: int
    frames: int
    bytes: int
    stream_crc32c: int


def cases() -> dict[str, Callable[[], object]]:
    manifest = msgspec.json.encode(
        Manifest("ses_0123456789abcdef", "pcm_s16le", 16000, 90000, 57600000, 0xE3069283)
    )
    encoder = msgspec.json.Encoder()
    decoder = msgspec.json.Decoder(Manifest)
    return {
        "ack encode   json.dumps": lambda: json.dumps(ACK),
        "ack encode   msgspec": lambda: encoder.encode(ACK),
        "ack encode   orjson": lambda: orjson.dumps(ACK),
        "ctl decode   json.loads": lambda: json.loads(CONTROL),
        "ctl decode   msgspec": lambda: msgspec.json.decode(CONTROL),
        "ctl decode   orjson": lambda: orjson.loads(CONTROL),
        "struct dec   json + Manifest(**)": lambda: Manifest(**json.loads(manifest)),
        "struct dec   orjson + convert": lambda: msgspec.convert(orjson.loads(manifest), Manifest),
        "struct dec   msgspec typed": lambda: decoder.decode(manifest),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per timeit run")
    args = parser.parse_args()
    print(f"orjson {orjson.__version__}, msgspec {msgspec.__version__}")
    for name, call in cases().items():
        best = min(timeit.repeat(call, number=args.number, repeat=5))
        print(f"{name:<36} {best / args.number * 1e9:7.0f} ns")


if __name__ == "__main__":
    main()
