"""G.711 expansion, G.711 WAV headers and Twilio's request signature, against known values."""

from __future__ import annotations

import base64
import struct
import warnings

import pytest

from voxgate import g711
from voxgate.ingest.stream import Close, StreamLimits
from voxgate.ingest.twilio import (
    compute_signature,
    decode_media,
    parse_message,
    parse_start,
    read_start,
    signature_valid,
)
from voxgate.settings import Settings, SettingsError

# --- G.711 -------------------------------------------------------------------------

# ITU-T G.711 tables 1a/2a: (code, value) pairs at the ends and the middle of the scale
# (the same values CPython's audioop gives).
MULAW = [(0xFF, 0), (0x7F, 0), (0x80, 32124), (0x00, -32124), (0xEF, 132), (0x6F, -132),
         (0xFE, 8), (0x7E, -8), (0xC0, 1884), (0x40, -1884)]  # fmt: skip
ALAW = [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0x54, -24),
        (0xC5, 264), (0x45, -264), (0xE5, 1056), (0x65, -1056)]  # fmt: skip


@pytest.mark.parametrize(("code", "value"), MULAW)
def test_mulaw_expansion(code: int, value: int) -> None:
    assert g711.ulaw_to_linear(code) == value
    assert struct.unpack("<h", g711.decode("mulaw", bytes([code]))) == (value,)


@pytest.mark.parametrize(("code", "value"), ALAW)
def test_alaw_expansion(code: int, value: int) -> None:
    assert g711.alaw_to_linear(code) == value
    assert struct.unpack("<h", g711.decode("alaw", bytes([code]))) == (value,)


def test_expansion_agrees_with_audioop_where_python_still_has_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop", reason="audioop left Python in 3.13")
    codes = bytes(range(256))
    assert g711.decode("mulaw", codes) == audioop.ulaw2lin(codes, 2)
    assert g711.decode("alaw", codes) == audioop.alaw2lin(codes, 2)


def test_every_code_survives_a_round_trip() -> None:
    for code in range(256):
        # mu-law has two zeros (0xFF and 0x7F); the encoder gives the positive one.
        want = 0xFF if code == 0x7F else code
        assert g711.linear_to_ulaw(g711.ulaw_to_linear(code)) == want, hex(code)
        assert g711.linear_to_alaw(g711.alaw_to_linear(code)) == code, hex(code)


def test_encoders_are_monotonic_and_clip() -> None:
    previous = -40000
    for sample in range(-32768, 32768, 7):
        value = g711.ulaw_to_linear(g711.linear_to_ulaw(sample))
        assert value >= previous
        previous = value
    assert g711.linear_to_ulaw(32767) == 0x80
    assert g711.linear_to_ulaw(-32768) == 0x00
    assert g711.linear_to_alaw(32767) == 0xAA
    assert g711.linear_to_alaw(-32768) == 0x2A


def test_decode_is_one_sample_per_byte_in_order() -> None:
    data = bytes(range(256))
    pcm = g711.decode("mulaw", data)
    assert struct.unpack("<256h", pcm) == tuple(g711.ulaw_to_linear(c) for c in data)
    assert g711.decode("alaw", b"") == b""
    with pytest.raises(KeyError):
        g711.decode("opus", data)


def test_wav_header_of_mulaw() -> None:
    header = g711.wav_header("mulaw", 16000, 8000, 2)
    assert len(header) == g711.WAV_HEADER_BYTES
    riff, size, wave, fmt, fmt_size = struct.unpack_from("<4sI4s4sI", header)
    assert (riff, size, wave, fmt, fmt_size) == (b"RIFF", 50 + 16000, b"WAVE", b"fmt ", 18)
    assert struct.unpack_from("<HHIIHHH", header, 20) == (7, 2, 8000, 16000, 2, 8, 0)
    assert struct.unpack_from("<4sII4sI", header, 38) == (b"fact", 4, 8000, b"data", 16000)
    assert struct.unpack_from("<H", g711.wav_header("alaw", 0, 8000, 1), 20) == (6,)


# --- X-Twilio-Signature ----------------------------------------------------------------------

# The vectors of Twilio's own helper library (twilio-python, tests/unit/test_request_validator.py).
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}


def test_signature_matches_twilios_vectors() -> None:
    assert compute_signature(TOKEN, URL, PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert signature_valid(TOKEN, URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", PARAMS)
    # Signed with the default port, or with one a proxy added: both validate.
    assert signature_valid(TOKEN, URL, "kvajT1Ptam85bY51eRf/AJRuM3w=", PARAMS)
    with_port = URL.replace(".com", ".com:1234")
    assert signature_valid(TOKEN, with_port, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", PARAMS)
    http = URL.replace("https", "http")
    assert signature_valid(TOKEN, http, "0ZXoZLH/DfblKGATFgpif+LLRf4=", PARAMS)


def test_signature_refuses_other_urls_tokens_and_garbage() -> None:
    good = compute_signature(TOKEN, "wss://voice.example.com/v1/twilio/stream")
    assert signature_valid(TOKEN, "wss://voice.example.com/v1/twilio/stream", good)
    # Twilio signs the wss:// URL; a server rebuilt from https:// accepts it too.
    assert signature_valid(TOKEN, "https://voice.example.com/v1/twilio/stream", good)
    assert not signature_valid(TOKEN, "wss://voice.example.com/v1/twilio/other", good)
    assert not signature_valid(TOKEN, "wss://evil.example.com/v1/twilio/stream", good)
    assert not signature_valid("54321", "wss://voice.example.com/v1/twilio/stream", good)
    assert not signature_valid(TOKEN, "wss://voice.example.com/v1/twilio/stream", "")
    assert not signature_valid(TOKEN, "wss://voice.example.com/v1/twilio/stream", None)
    assert not signature_valid("", "wss://voice.example.com/v1/twilio/stream", good)


# --- message parsing --------------------------------------------------------------------------

LIMITS = StreamLimits(
    max_message_bytes=4096,
    max_frame_bytes=1024,
    max_seq_ahead=1000,
    max_control_bytes=4096,
    idle_timeout_s=5,
    send_timeout_s=5,
)


def refusal(excinfo: pytest.ExceptionInfo[Close]) -> tuple[int, str]:
    return excinfo.value.code, excinfo.value.error


def test_media_becomes_seq_pts_and_payload() -> None:
    media = {"track": "inbound", "chunk": "3", "timestamp": "52", "payload": "AAEC"}
    assert decode_media(media, 1024) == (2, 52_000, b"\x00\x01\x02")


@pytest.mark.parametrize(
    ("media", "code", "error"),
    [
        ({"chunk": "1", "timestamp": "0", "payload": "!!"}, 4400, "bad_payload"),
        ({"chunk": "1", "timestamp": "0", "payload": ""}, 4400, "bad_payload"),
        ({"chunk": "0", "timestamp": "0", "payload": "AAEC"}, 4400, "bad_message"),
        ({"chunk": "x", "timestamp": "0", "payload": "AAEC"}, 4400, "bad_message"),
        ({"timestamp": "0", "payload": "AAEC"}, 4400, "bad_message"),
        ({"track": "outbound", "chunk": "1", "payload": "AAEC"}, 4400, "bad_track"),
        ({"chunk": "1", "payload": base64.b64encode(bytes(1025)).decode()}, 1009,
         "message_too_big"),
        ("not an object", 4400, "bad_message"),
    ],
)  # fmt: skip
def test_bad_media_is_refused(media: object, code: int, error: str) -> None:
    with pytest.raises(Close) as excinfo:
        decode_media(media, 1024)
    assert refusal(excinfo) == (code, error)


def test_messages_must_be_json_objects_with_an_event() -> None:
    for text in ("{", "[]", '{"event": 5}', '"media"'):
        with pytest.raises(Close) as excinfo:
            parse_message({"type": "websocket.receive", "text": text}, LIMITS)
        assert refusal(excinfo) == (4400, "bad_message"), text
    with pytest.raises(Close) as excinfo:
        parse_message({"type": "websocket.receive", "bytes": b"{}"}, LIMITS)
    assert refusal(excinfo) == (4400, "bad_message")
    with pytest.raises(Close) as excinfo:
        parse_message({"type": "websocket.receive", "text": " " * 10_000}, LIMITS)
    assert refusal(excinfo) == (1009, "message_too_big")


def test_start_must_announce_mulaw_8khz_mono() -> None:
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"session_id": "s", "token": "t"},
        },
        "streamSid": "MZ1",
    }
    parsed = parse_start(start)
    assert (parsed.stream_sid, parsed.call_sid, parsed.custom_parameters) == (
        "MZ1",
        "CA1",
        {"session_id": "s", "token": "t"},
    )
    start["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 16000}  # type: ignore[index]
    with pytest.raises(Close) as excinfo:
        parse_start(start)
    assert refusal(excinfo) == (4400, "media_format")


def test_public_url_setting_needs_a_scheme() -> None:
    assert Settings.from_env({"VOXGATE_PUBLIC_URL": "https://voice.example.com"}).public_url
    with pytest.raises(SettingsError, match="VOXGATE_PUBLIC_URL"):
        Settings.from_env({"VOXGATE_PUBLIC_URL": "voice.example.com"})


async def test_only_a_few_messages_may_come_before_start() -> None:
    async def connected_forever() -> dict[str, object]:
        return {"type": "websocket.receive", "text": '{"event": "connected"}'}

    with pytest.raises(Close) as excinfo:
        await read_start(connected_forever, LIMITS)  # type: ignore[arg-type]
    assert refusal(excinfo) == (4400, "before_start")
