"""PROTOCOL.md section 8 over raw WebSocket messages against a real server.

Frames are built by hand (``voxgate._native`` or ``struct`` for broken
fields); what the server stored is checked through ``/missing`` and
``/audio``, as a user would.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest

from e2e.listening import WsListener
from e2e.wire import (
    Api,
    Sender,
    frame,
    payload_for,
    raw_frame,
    stream_crc,
    subset,
    wait_for_acks,
)
from voxgate._native import crc32c
from voxgate.settings import Settings

DEFAULTS = Settings()


def total(payloads: dict[int, bytes]) -> int:
    return sum(len(p) for p in payloads.values())


def joined(payloads: dict[int, bytes]) -> bytes:
    return b"".join(payloads[seq] for seq in sorted(payloads))


# --- hello and acks -------------------------------------------------------------


async def test_hello_on_a_new_session(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.stream(sid)
    assert stream.hello is not None
    expected = {
        "type": "hello",
        "protocol": 1,
        "session_id": sid,
        "next_seq": 0,
        "missing": [],
        "window_bytes": DEFAULTS.window_bytes,
        "max_frame_bytes": DEFAULTS.max_frame_bytes,
        "max_message_bytes": DEFAULTS.max_message_bytes,
    }
    assert subset(stream.hello, expected) == expected


async def test_every_frame_is_acked_and_stored_once(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 100 + seq) for seq in range(10)}
    stream = await api.stream(sid)
    # Several frames per message, then one per message: acks may be coalesced.
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(3)))
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(3, 6)))
    for seq in range(6, 10):
        await stream.send(frame(seq, payloads[seq]))
    answers = await stream.collect(payloads)
    assert answers.summary() == {"acked": [[0, 9]], "duplicate": []}
    assert all(window == DEFAULTS.window_bytes for window in answers.windows)

    expected = {
        "next_seq": 10,
        "missing": [],
        "frames": 10,
        "bytes": total(payloads),
        "ended": False,
        "complete": False,
    }
    assert subset(await api.missing(sid), expected) == expected
    assert await api.audio_bytes(sid) == joined(payloads)


# --- resume -----------------------------------------------------------------------


async def test_resume_after_a_dropped_connection(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 200) for seq in range(20)}
    first = [*range(10), *range(15, 20)]
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(10)))
    await stream.send(*(frame(seq, payloads[seq], end=seq == 19) for seq in range(15, 20)))
    answers = await stream.collect(first)
    assert answers.acked == set(first), answers.summary()
    await stream.drop()

    again = await api.stream(sid)
    assert again.hello is not None
    assert (again.hello["next_seq"], again.hello["missing"]) == (20, [[10, 14]])
    expected = {
        "next_seq": 20,
        "missing": [[10, 14]],
        "frames": 15,
        "bytes": 15 * 200,
        "ended": True,
        "complete": False,
    }
    assert subset(await api.missing(sid), expected) == expected

    # The missing frames, plus some already acked that a client which lost
    # their acks would resend.
    resent = [8, 9, *range(10, 15), 19]
    await again.send(*(frame(seq, payloads[seq], end=seq == 19) for seq in resent))
    answers = await again.collect(resent)
    assert answers.acked == set(range(10, 15)), answers.summary()
    assert answers.duplicate == {8, 9, 19}, answers.summary()
    assert not answers.nacked

    complete = await again.recv_type("complete")
    expected_complete = {
        "type": "complete",
        "last_seq": 19,
        "frames": 20,
        "bytes": 20 * 200,
        "stream_crc32c": stream_crc(payloads[seq] for seq in range(20)),
    }
    assert subset(complete, expected_complete) == expected_complete

    session = await api.get_session(sid)
    expected_session = {
        "state": "complete",
        "next_seq": 20,
        "frames": 20,
        "bytes": 20 * 200,
        "end_seq": 19,
        "stream_crc32c": expected_complete["stream_crc32c"],
    }
    assert subset(session, expected_session) == expected_session
    assert await api.audio_bytes(sid) == joined(payloads)


# --- duplicates and conflicts -----------------------------------------------------


async def test_repeated_frame_is_acked_as_duplicate_and_stored_once(api: Api) -> None:
    sid = await api.new_session()
    payloads = {0: payload_for(sid, 0, 300), 1: payload_for(sid, 1, 300)}
    stream = await api.stream(sid)
    await stream.send(frame(0, payloads[0]), frame(1, payloads[1]))
    assert (await stream.collect([0, 1])).acked == {0, 1}

    await stream.send(frame(0, payloads[0]))
    answers = await stream.collect([0])
    assert answers.summary() == {"acked": [], "duplicate": [[0, 0]]}

    # Idempotent across connections too.
    other = await api.stream(sid)
    await other.send(frame(1, payloads[1]), frame(0, payloads[0]))
    answers = await other.collect([0, 1])
    assert answers.summary() == {"acked": [], "duplicate": [[0, 1]]}

    report = await api.missing(sid)
    assert (report["frames"], report["bytes"], report["next_seq"]) == (2, 600, 2)
    assert await api.audio_bytes(sid) == joined(payloads)


async def test_conflicting_frame_is_refused_and_the_stored_copy_stays(api: Api) -> None:
    sid = await api.new_session()
    payloads = {0: payload_for(sid, 0, 300), 1: payload_for(sid, 1, 300)}
    stream = await api.stream(sid)
    await stream.send(frame(0, payloads[0]), frame(1, payloads[1]))
    assert (await stream.collect([0, 1])).acked == {0, 1}

    # Same length, other bytes; and another length.
    await stream.send(frame(1, payload_for("other", 1, 300)))
    await stream.send(frame(0, payload_for("other", 0, 50)))
    answers = await stream.collect([0, 1])
    assert answers.summary() == {"acked": [], "duplicate": [], "conflict": [[0, 1]]}

    other = await api.stream(sid)
    await other.send(frame(1, payload_for("third", 1, 300)))
    assert (await other.collect([1])).summary() == {
        "acked": [],
        "duplicate": [],
        "conflict": [[1, 1]],
    }

    report = await api.missing(sid)
    assert (report["frames"], report["bytes"]) == (2, 600)
    assert await api.audio_bytes(sid) == joined(payloads)


# --- checksum -----------------------------------------------------------------------


async def test_checksum_mismatch_is_nacked_stored_nowhere_and_resend_is_acked(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 400) for seq in range(3)}
    # Frame 1's payload got corrupted after its CRC was computed.
    corrupted = bytes([payloads[1][0] ^ 0xFF]) + payloads[1][1:]
    bad = raw_frame(1, corrupted, crc=crc32c(payloads[1]))
    stream = await api.stream(sid)
    await stream.send(frame(0, payloads[0]), bad, frame(2, payloads[2]))
    answers = await stream.collect(range(3))
    assert answers.summary() == {"acked": [[0, 0], [2, 2]], "duplicate": [], "checksum": [[1, 1]]}

    expected = {"next_seq": 3, "missing": [[1, 1]], "frames": 2, "bytes": 800}
    assert subset(await api.missing(sid), expected) == expected
    assert await api.audio_bytes(sid, allow_gaps=True) == payloads[0] + payloads[2]

    await stream.send(frame(1, payloads[1]))
    assert (await stream.collect([1])).summary() == {"acked": [[1, 1]], "duplicate": []}
    assert await api.audio_bytes(sid) == joined(payloads)


# --- malformed messages ------------------------------------------------------------

BadFrame = Callable[[int, bytes], bytes]


def reserved_bit(bit: int) -> BadFrame:
    return lambda seq, p: raw_frame(seq, p, flags=1 << bit)


MALFORMED: dict[str, BadFrame] = {
    "bad_magic": lambda seq, p: raw_frame(seq, p, magic=b"FV"),
    "version_2": lambda seq, p: raw_frame(seq, p, version=2),
    "version_0": lambda seq, p: raw_frame(seq, p, version=0),
    **{f"reserved_bit_{bit}": reserved_bit(bit) for bit in range(1, 8)},
    "reserved_bit_with_end": lambda seq, p: raw_frame(seq, p, flags=0x01 | 0x40),
    "payload_runs_past_message": lambda seq, p: frame(seq, p)[:-1],
    "length_far_past_message": lambda seq, p: raw_frame(seq, p, length=len(p) + 1000),
    "truncated_header": lambda seq, p: frame(seq, p)[:10],
    "zero_length_without_end": lambda seq, p: raw_frame(seq, b"", flags=0),
}
# Cases where the broken frame cannot be followed by another one in the message.
MUST_BE_LAST = {"payload_runs_past_message", "length_far_past_message", "truncated_header"}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_message_is_rejected_whole_with_4400(api: Api, case: str) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 120) for seq in range(4)}
    stream = await api.stream(sid)
    await stream.send(frame(0, payloads[0]))
    assert (await stream.collect([0])).acked == {0}

    # A valid frame before the broken one (and one after it when possible):
    # none of this message may be stored.
    message = [frame(1, payloads[1]), MALFORMED[case](2, payloads[2])]
    if case not in MUST_BE_LAST:
        message.append(frame(3, payloads[3]))
    await stream.send(*message)
    messages = await stream.expect_close(4400)
    assert not [m for m in messages if m["type"] == "ack" and m.get("acked")], messages

    expected = {"next_seq": 1, "missing": [], "frames": 1, "bytes": 120}
    assert subset(await api.missing(sid), expected) == expected
    assert await api.audio_bytes(sid, allow_gaps=True) == payloads[0]

    # The session is not harmed: a new connection carries on.
    again = await api.stream(sid)
    assert again.hello is not None
    assert again.hello["next_seq"] == 1
    await again.send(frame(1, payloads[1]))
    assert (await again.collect([1])).acked == {1}


async def test_empty_binary_message_is_malformed(api: Api) -> None:
    # A binary message carries one or more complete frames (PROTOCOL 2.1): none is broken.
    sid = await api.new_session()
    stream = await api.stream(sid)
    await stream.send(frame(0, payload_for(sid, 0, 50)))
    assert (await stream.collect([0])).acked == {0}
    await stream.send()
    messages = await stream.expect_close(4400)
    assert messages[-1]["code"] == "truncated", messages
    assert await api.stored_seqs(sid) == {0}


async def test_zero_length_end_frame_is_accepted(api: Api) -> None:
    sid = await api.new_session()
    payloads = {0: payload_for(sid, 0, 100), 1: payload_for(sid, 1, 100)}
    stream = await api.stream(sid)
    await stream.send(frame(0, payloads[0]), frame(1, payloads[1]), frame(2, b"", end=True))
    assert (await stream.collect(range(3))).acked == {0, 1, 2}
    complete = await stream.recv_type("complete")
    crc = stream_crc([payloads[0], payloads[1]])
    expected = {"last_seq": 2, "frames": 3, "bytes": 200, "stream_crc32c": crc}
    assert subset(complete, expected) == expected


async def test_too_large_frame_is_refused_alone(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.stream(sid)
    assert stream.hello is not None
    max_frame = stream.hello["max_frame_bytes"]
    payloads = {
        0: payload_for(sid, 0, 100),
        1: payload_for(sid, 1, max_frame + 1),
        2: payload_for(sid, 2, 100),
        3: payload_for(sid, 3, max_frame),  # exactly the limit is fine
    }
    message = b"".join(frame(seq, payloads[seq]) for seq in range(4))
    assert len(message) <= stream.hello["max_message_bytes"]
    await stream.send(message)
    answers = await stream.collect(range(4))
    assert answers.summary() == {
        "acked": [[0, 0], [2, 3]],
        "duplicate": [],
        "too_large": [[1, 1]],
    }
    expected = {"next_seq": 4, "missing": [[1, 1]], "frames": 3, "bytes": 200 + max_frame}
    assert subset(await api.missing(sid), expected) == expected


async def test_pts_us_is_stored_exactly_as_sent(api: Api) -> None:
    # PROTOCOL section 1: pts_us is stored, not interpreted; a listener with audio reads
    # the stored frames back in the wire format, header included.
    sid = await api.new_session()
    pts = {0: 2**64 - 1, 1: 0, 2: 2**63, 3: 5, 4: 12_345_678_901}  # not in order, not 20 ms
    payloads = {seq: payload_for(sid, seq, 40) for seq in pts}
    stream = await api.stream(sid)
    await stream.send(*(raw_frame(seq, payloads[seq], pts_us=pts[seq]) for seq in range(3)))
    assert (await stream.collect(range(3))).acked == {0, 1, 2}
    body = b"".join(
        raw_frame(seq, payloads[seq], pts_us=pts[seq], flags=int(seq == 4)) for seq in (3, 4)
    )
    assert (await api.upload(sid, body)).json()["acked"] == [[3, 4]]

    listener = await WsListener.open(api.server, sid, audio=True)
    try:
        await listener.until(lambda heard: heard.next_audio == 5)
    finally:
        await listener.close()
    got = {seq: (flags, pts_us, payload) for seq, flags, pts_us, payload in listener.heard.frames}
    assert got == {seq: (int(seq == 4), pts[seq], payloads[seq]) for seq in pts}


# --- complete and sequence -------------------------------------------------------


async def test_complete_carries_the_stream_crc32c(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 50 + 37 * seq) for seq in range(8)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(4)))
    await stream.send(*(frame(seq, payloads[seq], end=seq == 7) for seq in range(4, 8)))
    assert (await stream.collect(range(8))).acked == set(range(8))
    complete = await stream.recv_type("complete")
    crc = stream_crc(payloads[seq] for seq in range(8))
    assert crc == crc32c(joined(payloads))
    expected = {
        "type": "complete",
        "last_seq": 7,
        "frames": 8,
        "bytes": total(payloads),
        "stream_crc32c": crc,
    }
    assert subset(complete, expected) == expected

    report = await api.missing(sid)
    assert (report["ended"], report["complete"], report["missing"]) == (True, True, [])
    session = await api.get_session(sid)
    assert (session["state"], session["end_seq"], session["stream_crc32c"]) == ("complete", 7, crc)


async def test_complete_waits_for_the_last_gap(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 80) for seq in range(4)}
    stream = await api.stream(sid)
    await stream.send(frame(0, payloads[0]), frame(1, payloads[1]), frame(3, payloads[3], end=True))
    assert (await stream.collect([0, 1, 3])).acked == {0, 1, 3}
    report = await api.missing(sid)
    expected = {"next_seq": 4, "missing": [[2, 2]], "ended": True, "complete": False}
    assert subset(report, expected) == expected
    assert (await api.get_session(sid))["state"] == "ended"
    assert not [m for m in stream.backlog if m["type"] == "complete"], stream.backlog

    # After END: refused as "sequence", below it: accepted.
    await stream.send(frame(4, payload_for(sid, 4, 80)), frame(9, payload_for(sid, 9, 80)))
    answers = await stream.collect([4, 9])
    assert answers.summary() == {"acked": [], "duplicate": [], "sequence": [[4, 4], [9, 9]]}

    await stream.send(frame(2, payloads[2]))
    assert (await stream.collect([2])).acked == {2}
    complete = await stream.recv_type("complete")
    assert subset(complete, {"last_seq": 3, "frames": 4, "bytes": 320}) == {
        "last_seq": 3,
        "frames": 4,
        "bytes": 320,
    }
    assert complete["stream_crc32c"] == crc32c(joined(payloads))


async def test_an_open_stream_gets_complete_when_an_upload_fills_the_last_gap(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 70) for seq in range(3)}
    stream = await api.stream(sid)
    await stream.send(frame(0, payloads[0]), frame(2, payloads[2], end=True))
    assert (await stream.collect([0, 2])).acked == {0, 2}
    response = await api.upload(sid, frame(1, payloads[1]))
    assert response.json()["acked"] == [[1, 1]], response.text
    # The stream's client sends nothing more and still learns that the session is complete.
    complete = await stream.recv_type("complete")
    expected = {"last_seq": 2, "frames": 3, "bytes": 210, "stream_crc32c": crc32c(joined(payloads))}
    assert subset(complete, expected) == expected
    # Once only.
    await stream.send(frame(2, payloads[2], end=True))
    assert (await stream.collect([2])).duplicate == {2}
    await stream.send_json({"type": "ping", "t": 1})
    await stream.recv_type("pong")
    assert not [m for m in stream.backlog if m["type"] == "complete"], stream.backlog


async def test_connecting_to_a_complete_session_gets_complete_at_once(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 64) for seq in range(5)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq], end=seq == 4) for seq in range(5)))
    await stream.collect(range(5))
    first_complete = await stream.recv_type("complete")
    await stream.close()

    again = await api.stream(sid)
    assert again.hello is not None
    assert (again.hello["next_seq"], again.hello["missing"]) == (5, [])
    right_after = await again.recv(within=5)
    assert right_after["type"] == "complete", right_after
    keys = ("last_seq", "frames", "bytes", "stream_crc32c")
    assert {k: right_after.get(k) for k in keys} == {k: first_complete.get(k) for k in keys}

    # Frames sent there: already stored -> duplicate; beyond the END -> sequence.
    await again.send(frame(2, payloads[2]), frame(5, payload_for(sid, 5, 64)))
    answers = await again.collect([2, 5])
    assert answers.verdict(2) == "duplicate", answers.summary()
    assert answers.verdict(5) == "sequence", answers.summary()
    assert (await api.missing(sid))["frames"] == 5


async def test_frame_too_far_ahead_is_refused_as_sequence(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.stream(sid)
    ahead = payload_for(sid, 5, 40)
    await stream.send(frame(5, ahead))
    assert (await stream.collect([5])).acked == {5}
    too_far = 6 + DEFAULTS.max_seq_ahead + 10
    await stream.send(frame(too_far, payload_for(sid, too_far, 40)))
    answers = await stream.collect([too_far])
    assert answers.verdict(too_far) == "sequence", answers.summary()
    expected = {"next_seq": 6, "missing": [[0, 4]], "frames": 1, "bytes": 40}
    assert subset(await api.missing(sid), expected) == expected


async def test_frames_after_end_in_the_same_message_are_refused_as_sequence(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 60) for seq in range(4)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq], end=seq == 1) for seq in range(4)))
    answers = await stream.collect(range(4))
    assert answers.summary() == {"acked": [[0, 1]], "duplicate": [], "sequence": [[2, 3]]}
    complete = await stream.recv_type("complete")
    assert (complete["last_seq"], complete["frames"]) == (1, 2)
    assert complete["stream_crc32c"] == crc32c(payloads[0] + payloads[1])
    assert await api.audio_bytes(sid) == payloads[0] + payloads[1]


async def test_an_end_frame_below_a_stored_frame_is_refused_as_sequence(api: Api) -> None:
    # Storing it would leave seq 5 after the stream's END (docs/api.md, server decisions).
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 60) for seq in range(7)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq]) for seq in (0, 1, 2, 3, 5)))
    assert (await stream.collect([0, 1, 2, 3, 5])).acked == {0, 1, 2, 3, 5}
    await stream.send(frame(4, payloads[4], end=True))
    assert (await stream.collect([4])).verdict(4) == "sequence"
    expected = {"next_seq": 6, "missing": [[4, 4]], "ended": False, "complete": False}
    assert subset(await api.missing(sid), expected) == expected

    await stream.send(frame(6, payloads[6], end=True), frame(4, payloads[4]))
    assert (await stream.collect([4, 6])).acked == {4, 6}
    complete = await stream.recv_type("complete")
    assert (complete["last_seq"], complete["frames"]) == (6, 7)
    assert complete["stream_crc32c"] == crc32c(joined(payloads))


async def test_a_resent_frame_that_adds_or_drops_end_is_a_conflict(api: Api) -> None:
    # Same payload and CRC, other END flag: another frame (docs/api.md, server decisions).
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 60) for seq in range(4)}
    stream = await api.stream(sid)
    await stream.send(*(frame(seq, payloads[seq]) for seq in range(3)))
    assert (await stream.collect(range(3))).acked == {0, 1, 2}
    await stream.send(frame(2, payloads[2], end=True))
    assert (await stream.collect([2])).verdict(2) == "conflict"
    session = await api.get_session(sid)
    assert (session["state"], session["end_seq"]) == ("open", None)

    await stream.send(frame(3, payloads[3], end=True))
    assert (await stream.collect([3])).acked == {3}
    await stream.recv_type("complete")
    await stream.send(frame(3, payloads[3]), frame(2, payloads[2]))
    answers = await stream.collect([2, 3])
    assert answers.summary() == {"acked": [], "duplicate": [[2, 2]], "conflict": [[3, 3]]}
    assert (await api.get_session(sid))["end_seq"] == 3
    assert await api.audio_bytes(sid) == joined(payloads)


# --- superseding connection -------------------------------------------------------


async def test_newer_connection_supersedes_the_older(api: Api) -> None:
    sid = await api.new_session()
    payloads = {seq: payload_for(sid, seq, 90) for seq in range(4)}
    first = await api.stream(sid)
    await first.send(frame(0, payloads[0]))
    assert (await first.collect([0])).acked == {0}

    second = await api.stream(sid)
    assert second.hello is not None
    assert second.hello["next_seq"] == 1
    messages = await first.expect_close(4409)
    assert messages[-1]["code"] == "superseded", messages

    await second.send(*(frame(seq, payloads[seq], end=seq == 3) for seq in range(1, 4)))
    assert (await second.collect(range(1, 4))).acked == {1, 2, 3}
    complete = await second.recv_type("complete")
    assert complete["stream_crc32c"] == crc32c(joined(payloads))


async def test_a_connection_superseded_mid_stream_gets_4409_not_a_reset(api: Api) -> None:
    # The old client is still sending when the newer connection takes over: its close
    # must still arrive as 4409 (a dropped connection would look like a network fault).
    for attempt in range(5):
        sid = await api.new_session()
        old = await api.stream(sid)
        assert old.hello is not None
        sender = Sender(old, functools.partial(payload_for, sid, size=1000))
        task = asyncio.create_task(sender.run(range(5000), end_seq=None))
        await wait_for_acks(sender, task, 100)
        assert not task.done(), f"attempt {attempt}: the old stream ended early"
        new = await api.stream(sid)
        await asyncio.wait_for(task, 30)
        assert old.ws.close_code == 4409, (attempt, old.ws.close_code, sender.closed)
        stored = await api.stored_seqs(sid)
        assert sender.acked <= stored, f"attempt {attempt}: acked frames not stored"
        await new.close()


# --- control messages and limits -------------------------------------------------


async def test_ping_is_answered_with_pong_echoing_t(api: Api) -> None:
    stream = await api.stream(await api.new_session())
    for t in (12345, 1.5, 1_700_000_000_123):
        await stream.send_json({"type": "ping", "t": t})
        pong = await stream.recv_type("pong")
        assert pong == {"type": "pong", "t": t}


async def test_message_above_max_message_bytes_closes_1009(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.stream(sid)
    assert stream.hello is not None
    limit = stream.hello["max_message_bytes"]
    # Small valid frames adding up to one byte over the limit.
    chunk = payload_for(sid, 0, 1000)
    frames = [frame(seq, chunk) for seq in range(limit // 1024 - 1)]
    message = b"".join(frames)
    message += frame(len(frames), b"x" * (limit - len(message) - 24 + 1))
    assert len(message) == limit + 1
    await stream.send(message)
    await stream.expect_close(1009)
    assert (await api.missing(sid))["frames"] == 0


async def test_message_of_exactly_max_message_bytes_is_accepted(api: Api) -> None:
    sid = await api.new_session()
    stream = await api.stream(sid)
    assert stream.hello is not None
    limit = stream.hello["max_message_bytes"]
    max_frame = stream.hello["max_frame_bytes"]
    frames: list[bytes] = []
    size = 0
    while limit - size > 24:
        payload = payload_for(sid, len(frames), min(max_frame, limit - size - 24))
        frames.append(frame(len(frames), payload))
        size += len(frames[-1])
    if size < limit:
        pytest.skip("limit not reachable with whole frames")
    await stream.send(b"".join(frames))
    answers = await stream.collect(range(len(frames)))
    assert answers.acked == set(range(len(frames))), answers.summary()


async def test_malformed_json_control_message_closes_4400(api: Api) -> None:
    stream = await api.stream(await api.new_session())
    await stream.send_text('{"type": "ping", "t": ')
    await stream.expect_close(4400)


# Well-formed JSON that is not a control message a client may send (PROTOCOL section 3:
# a client sends ping only): closed with 4400 like broken JSON, acked frames kept.
NOT_CONTROL = {
    "unknown type": '{"type": "subscribe"}',
    "a server message": '{"type": "ack", "acked": [[0, 0]], "duplicate": [], "window_bytes": 1}',
    "no type": '{"t": 1}',
    "type not a string": '{"type": 5}',
    "an array": '[{"type": "ping", "t": 1}]',
    "a string": '"ping"',
}


@pytest.mark.parametrize("case", sorted(NOT_CONTROL))
async def test_unknown_control_message_closes_4400_and_keeps_acked_frames(
    api: Api, case: str
) -> None:
    sid = await api.new_session()
    payload = payload_for(sid, 0, 100)
    stream = await api.stream(sid)
    await stream.send(frame(0, payload))
    assert (await stream.collect([0])).acked == {0}
    await stream.send_text(NOT_CONTROL[case])
    messages = await stream.expect_close(4400)
    assert messages[-1]["code"] == "bad_control", messages
    assert await api.stored_seqs(sid) == {0}
    assert await api.audio_bytes(sid) == payload
