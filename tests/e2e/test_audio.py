"""Audio download (PROTOCOL section 2.3): seq order, Range, gaps and WAV."""

from __future__ import annotations

import io
import math
import struct
import wave

import pytest

from e2e.wire import Api, assert_problem, frame, payload_for


async def test_audio_is_the_payloads_in_seq_order(api: Api) -> None:
    sid = await api.new_session(codec="opus")
    payloads = {seq: payload_for(sid, seq, 50 + 13 * seq) for seq in range(6)}
    stream = await api.stream(sid)
    order = [3, 1, 5, 0, 4, 2]
    await stream.send(*(frame(seq, payloads[seq], end=seq == 5) for seq in order))
    assert (await stream.collect(order)).acked == set(order)
    response = await api.audio(sid)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/octet-stream")
    assert response.content == b"".join(payloads[seq] for seq in range(6))


async def test_range_request_gets_206_with_the_right_bytes(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 64) for seq in range(5)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(5)))
    await stream.collect(range(5))
    full = b"".join(payloads[seq] for seq in range(5))
    size = len(full)

    for header, first, last in (
        ("bytes=10-99", 10, 99),  # across a frame boundary
        ("bytes=0-0", 0, 0),
        ("bytes=200-", 200, size - 1),
        (f"bytes=100-{size + 500}", 100, size - 1),  # clipped to the end
    ):
        response = await api.audio(sid, headers={"Range": header})
        assert response.status_code == 206, f"{header}: {response.status_code}"
        assert response.headers["content-range"] == f"bytes {first}-{last}/{size}", header
        assert response.content == full[first : last + 1], header

    unsatisfiable = await api.audio(sid, headers={"Range": f"bytes={size + 10}-"})
    assert unsatisfiable.status_code == 416


async def test_gaps_give_409_unless_allowed(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 70) for seq in (0, 1, 3)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, p) for seq, p in payloads.items()))
    await stream.collect(payloads)
    assert_problem(await api.audio(sid), 409)
    allowed = await api.audio(sid, {"allow_gaps": "true"})
    assert allowed.status_code == 200
    assert allowed.content == payloads[0] + payloads[1] + payloads[3]


async def test_audio_of_unknown_session_is_404(api: Api) -> None:
    assert_problem(await api.audio("ses_does_not_exist"), 404)


def pcm_tone(samples: int, offset: int, rate: int, channels: int) -> bytes:
    values = [
        int(12000 * math.sin(2 * math.pi * 440 * (offset + i // channels) / rate))
        for i in range(samples * channels)
    ]
    return struct.pack(f"<{len(values)}h", *values)


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (8000, 2)])
async def test_wav_format_has_a_valid_riff_header_then_the_payloads(
    api: Api, rate: int, channels: int
) -> None:
    sid = await api.new_session(codec="pcm_s16le", sample_rate=rate, channels=channels)
    samples_per_frame = rate // 50  # 20 ms
    payloads = {
        seq: pcm_tone(samples_per_frame, seq * samples_per_frame, rate, channels)
        for seq in range(10)
    }
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq], end=seq == 9) for seq in range(10)))
    await stream.collect(range(10))
    pcm = b"".join(payloads[seq] for seq in range(10))

    response = await api.audio(sid, {"format": "wav"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/wav")
    body = response.content
    assert body[:4] == b"RIFF"
    assert body[8:12] == b"WAVE"
    assert struct.unpack("<I", body[4:8])[0] == len(body) - 8
    assert body.endswith(pcm)
    with wave.open(io.BytesIO(body), "rb") as wav:
        assert wav.getnchannels() == channels
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == rate
        assert wav.getnframes() == len(pcm) // (2 * channels)
        assert wav.readframes(wav.getnframes()) == pcm
