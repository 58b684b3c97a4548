"""HTTP upload of frames (PROTOCOL section 2.2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from e2e.wire import (
    FRAMES_CONTENT_TYPE,
    Api,
    assert_problem,
    check_ranges,
    frame,
    payload_for,
    raw_frame,
    subset,
)
from servers import Server
from voxgate._native import crc32c


async def odd_chunks(body: bytes) -> AsyncIterator[bytes]:
    """``body`` in chunks that split headers and payloads anywhere."""
    sizes = (1, 7, 13, 23, 25, 2, 300, 5, 1000, 11)
    offset = 0
    for i in range(len(body)):
        if offset >= len(body):
            break
        size = sizes[i % len(sizes)]
        yield body[offset : offset + size]
        offset += size


def check_upload_answer(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 200, f"{response.status_code} {response.text[:500]}"
    answer = response.json()
    assert isinstance(answer, dict), answer
    check_ranges(answer.get("acked"), "acked")
    check_ranges(answer.get("duplicate"), "duplicate")
    rejected = answer.get("rejected")
    assert isinstance(rejected, list), answer
    for entry in rejected:
        assert isinstance(entry, dict), entry
        check_ranges(entry.get("ranges"), "rejected.ranges")
        assert entry.get("reason") in {"checksum", "conflict", "too_large", "sequence"}, entry
    return answer


def rejected_by_reason(answer: dict[str, object]) -> dict[str, list[list[int]]]:
    out: dict[str, list[list[int]]] = {}
    rejected = answer["rejected"]
    assert isinstance(rejected, list)
    for entry in rejected:
        out.setdefault(entry["reason"], []).extend(entry["ranges"])
    return {reason: sorted(ranges) for reason, ranges in out.items()}


async def test_body_split_anywhere_is_decoded_and_acked(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 37 + 61 * seq) for seq in range(10)}
    body = b"".join(frame(seq, payloads[seq]) for seq in range(10))
    answer = check_upload_answer(await api.upload(sid, odd_chunks(body)))
    assert subset(answer, {"acked": [[0, 9]], "duplicate": [], "rejected": []}) == {
        "acked": [[0, 9]],
        "duplicate": [],
        "rejected": [],
    }
    expected = {
        "next_seq": 10,
        "missing": [],
        "frames": 10,
        "bytes": sum(map(len, payloads.values())),
    }
    assert subset(await api.missing(sid), expected) == expected
    assert await api.audio_bytes(sid) == b"".join(payloads[seq] for seq in range(10))


async def test_upload_reports_duplicates_and_rejections(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 100) for seq in range(10)}
    first = b"".join(frame(seq, payloads[seq]) for seq in range(5))
    assert check_upload_answer(await api.upload(sid, first))["acked"] == [[0, 4]]

    stream = await api.stream(sid)
    assert stream.hello is not None
    max_frame = stream.hello["max_frame_bytes"]
    await stream.close()

    corrupted = b"!" + payloads[5][1:]
    body = b"".join(
        [
            frame(3, payloads[3]),
            frame(4, payloads[4]),
            raw_frame(5, corrupted, crc=crc32c(payloads[5])),
            frame(6, payloads[6]),
            frame(2, payload_for("other", 2, 100)),
            frame(8, payload_for(sid, 8, max_frame + 1)),
            frame(9, payloads[9], end=True),
        ]
    )
    answer = check_upload_answer(await api.upload(sid, odd_chunks(body)))
    assert answer["acked"] == [[6, 6], [9, 9]], answer
    assert answer["duplicate"] == [[3, 4]], answer
    assert rejected_by_reason(answer) == {
        "checksum": [[5, 5]],
        "conflict": [[2, 2]],
        "too_large": [[8, 8]],
    }, answer

    expected = {"next_seq": 10, "missing": [[5, 5], [7, 8]], "frames": 7, "ended": True}
    assert subset(await api.missing(sid), expected) == expected
    stored = b"".join(payloads[seq] for seq in (0, 1, 2, 3, 4, 6, 9))
    assert await api.audio_bytes(sid, allow_gaps=True) == stored


BROKEN: dict[str, Callable[[int, bytes], bytes]] = {
    "bad_magic": lambda seq, p: raw_frame(seq, p, magic=b"XX"),
    "version_2": lambda seq, p: raw_frame(seq, p, version=2),
    "reserved_flag": lambda seq, p: raw_frame(seq, p, flags=0x02),
    "zero_length_without_end": lambda seq, p: raw_frame(seq, b""),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_malformed_body_is_400_and_nothing_from_the_bad_frame_on_is_stored(
    api: Api, case: str
) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 90) for seq in range(4)}
    body = b"".join(
        [
            frame(0, payloads[0]),
            frame(1, payloads[1]),
            BROKEN[case](2, payloads[2]),
            frame(3, payloads[3]),
        ]
    )
    assert_problem(await api.upload(sid, odd_chunks(body)), 400)
    stored = await api.stored_seqs(sid)
    assert stored <= {0, 1}, f"stored {sorted(stored)} from or after the malformed frame"
    report = await api.missing(sid)
    assert report["bytes"] == 90 * len(stored)


async def test_body_ending_inside_a_frame_is_400_and_the_partial_frame_is_not_stored(
    api: Api,
) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 90) for seq in range(2)}
    body = frame(0, payloads[0]) + frame(1, payloads[1])[:-10]
    assert_problem(await api.upload(sid, odd_chunks(body)), 400)
    assert 1 not in await api.stored_seqs(sid)


async def test_upload_needs_a_stream_token(api: Api, server: Server) -> None:
    sid = await api.new_session()
    body = frame(0, payload_for(sid, 0))
    url = f"{server.base_url}/v1/sessions/{sid}/frames"
    headers = {"Content-Type": FRAMES_CONTENT_TYPE}
    async with httpx.AsyncClient() as bare:
        assert_problem(await bare.post(url, content=body, headers=headers), 401)
        wrong = {**headers, "Authorization": "Bearer not-a-token"}
        assert_problem(await bare.post(url, content=body, headers=wrong), 401)
        with_key = {**headers, "Authorization": f"Bearer {server.api_key}"}
        assert_problem(await bare.post(url, content=body, headers=with_key), 401)
    other = await api.new_session()
    response = await api.upload(sid, body, token=await api.mint_token(other))
    assert response.status_code == 403, response.text
    assert (await api.missing(sid))["frames"] == 0


async def test_missing_agrees_with_hello(api: Api) -> None:
    sid = await api.new_session()
    seqs = [0, 1, 2, 3, 6, 9]
    body = b"".join(frame(seq, payload_for(sid, seq)) for seq in seqs)
    assert check_upload_answer(await api.upload(sid, body))["acked"] == [[0, 3], [6, 6], [9, 9]]
    report = await api.missing(sid)
    assert (report["next_seq"], report["missing"]) == (10, [[4, 5], [7, 8]])
    stream = await api.stream(sid)
    assert stream.hello is not None
    assert (stream.hello["next_seq"], stream.hello["missing"]) == (10, [[4, 5], [7, 8]])

    # And frames sent by upload are duplicates on the stream.
    await stream.send(frame(6, payload_for(sid, 6)), frame(4, payload_for(sid, 4)))
    answers = await stream.collect([4, 6])
    assert answers.summary() == {"acked": [[4, 4]], "duplicate": [[6, 6]]}
