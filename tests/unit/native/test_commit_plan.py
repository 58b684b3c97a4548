"""CommitPlan (the per-frame work of an embedded-store commit) follows SessionTally's rules.

Both stores judge frames with ``CommitPlan`` from the core; ``tally_model.py``
states the same rules plainly, one session at a time. The two must answer
every batch alike, and the blocks the plan lays out must read back as exactly
the frames it stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unit.native.tally_model import SessionTally
from voxgate import _native
from voxgate.store.base import FrameIn, Outcome

U64 = 1 << 64
OUTCOMES = tuple(Outcome)
Stored = dict[int, tuple[int, int, int]]  # seq -> (crc32c, length, flags)


@dataclass
class Case:
    """Sessions as stored before a commit, and the commit's frames."""

    stored: dict[str, Stored] = field(default_factory=dict)
    rows: list[list[Any]] = field(default_factory=list)
    frames: list[FrameIn] = field(default_factory=list)


def _session_row(session_id: str, stored: Stored) -> list[Any]:
    """The counters a store holds for ``stored``: the invariants commits maintain."""
    next_seq = max(stored, default=-1) + 1
    ends = [seq for seq, (_, _, flags) in stored.items() if flags & _native.FLAG_END]
    end_seq = max(ends) if ends else None
    prefix_seq, prefix_crc = 0, 0
    while prefix_seq in stored:
        crc, length, _ = stored[prefix_seq]
        if length:
            prefix_crc = _native.crc32c_combine(prefix_crc, crc, length)
        prefix_seq += 1
    complete = end_seq is not None and prefix_seq == end_seq + 1
    nbytes = sum(length for _, length, _ in stored.values())
    return [
        session_id,
        next_seq,
        len(stored),
        nbytes,
        end_seq,
        prefix_crc if complete else None,
        prefix_seq,
        prefix_crc,
    ]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    case = Case()
    payloads = [b"", b"a", b"bc", b"def", b"\x00" * 7]
    ids = draw(st.lists(st.sampled_from(["s1", 's\u00e9"2\\', "s\n3"]), unique=True, max_size=3))
    for session_id in ids:
        stored: Stored = {}
        for seq in draw(st.sets(st.integers(0, 9), max_size=6)):
            payload = draw(st.sampled_from(payloads[1:]))
            stored[seq] = (_native.crc32c(payload), len(payload), 0)
        with_end = draw(st.booleans())
        if stored and with_end:  # the highest stored frame is the END
            top = max(stored)
            stored[top] = (*stored[top][:2], _native.FLAG_END)
        case.stored[session_id] = stored
        case.rows.append(_session_row(session_id, stored))
    frame_ids = [*ids, "gone"]
    for _ in range(draw(st.integers(0, 25))):
        session_id = draw(st.sampled_from(frame_ids))
        seq = draw(st.integers(0, 12))
        payload = draw(st.sampled_from(payloads))
        end = draw(st.integers(0, 5)) == 0
        if not payload and not end:
            payload = b"z"
        pts = draw(st.sampled_from([0, 20_000, (1 << 63) + 5, U64 - 1]))
        crc = _native.crc32c(payload)
        view: bytes | memoryview = memoryview(b"xx" + payload)[2:] if seq % 2 else payload
        case.frames.append(FrameIn(session_id, seq, int(end), pts, crc, view))
    return case


def _run_plan(case: Case) -> dict[str, Any]:
    """What a store does with a plan, against ``case.stored`` as its database."""
    plan = _native.CommitPlan(case.frames, case.rows)
    lookups = plan.lookups()
    for session_id, seqs in lookups:
        for seq in seqs:
            if seq in case.stored[session_id]:
                crc, length, flags = case.stored[session_id][seq]
                plan.known(session_id, seq, crc, length, flags)
    extents, buffers, end = plan.judge(1000)
    written = b"".join(bytes(b) for b in buffers)
    assert len(written) == end - 1000
    # The bytes describe themselves: scanning them finds the extents the plan gave.
    scanned, damaged, stop, why = _native.scan_blocks(written, 1000)
    assert ([s[:7] for s in scanned], damaged, stop, why) == (extents, [], end, None)
    rows = []
    after = {sid: dict(stored) for sid, stored in case.stored.items()}
    for _sid, _first, _last, offset, length, _bytes, _crc in extents:
        data = written[offset - 1000 : offset - 1000 + length]
        sid, records = _native.read_block(data, verify=True)
        for seq, flags, pts, size, crc, _at in records:
            rows.append([sid, seq, flags, pts, size, crc])
            after[sid][seq] = (crc, size, flags)
    walks = plan.advance()
    for session_id, prefix_seq in walks:
        db = after[session_id]
        plan.extend(session_id, [(s, s, db[s][0], db[s][1]) for s in sorted(db) if s >= prefix_seq])
    return {
        "lookups": lookups,
        "rows": rows,
        "outcomes": plan.outcomes(OUTCOMES),
        "walks": walks,
        "updates": plan.finish(42),
        "progress": plan.progress(),
    }


def _run_tally(case: Case) -> dict[str, Any]:
    """The same commit by SessionTally's rules (what the PostgreSQL store does)."""
    tallies = {row[0]: SessionTally(tuple(row[1:])) for row in case.rows}
    known: dict[tuple[str, int], tuple[int, int, int]] = {}
    for frame in case.frames:
        tally = tallies.get(frame.session_id)
        if tally is not None and frame.seq < tally.next_seq:
            hit = case.stored[frame.session_id].get(frame.seq)
            if hit is not None:
                known[frame.session_id, frame.seq] = hit
    outcomes: list[Outcome] = []
    rows = []
    after = {sid: dict(stored) for sid, stored in case.stored.items()}
    for frame in case.frames:
        tally = tallies.get(frame.session_id)
        if tally is None:
            outcomes.append(Outcome.GONE)
            continue
        length = len(frame.payload)
        key = (frame.session_id, frame.seq)
        outcome = tally.judge(frame.seq, frame.flags, frame.crc32c, length, known.get(key))
        outcomes.append(outcome)
        if outcome is Outcome.STORED:
            known[key] = (frame.crc32c, length, frame.flags)
            after[frame.session_id][frame.seq] = known[key]
            rows.append(
                [frame.session_id, frame.seq, frame.flags, frame.pts_us, length, frame.crc32c]
            )
    updates = []
    if rows:
        for session_id, tally in tallies.items():
            if not tally.changed:
                continue
            if tally.advance_in_batch():
                db = after[session_id]
                for seq in sorted(s for s in db if s >= tally.prefix_seq):
                    if not tally.extend(seq, db[seq][0], db[seq][1]):
                        break
            tally.finish()
            updates.append(
                [
                    tally.state.value,
                    tally.next_seq,
                    tally.frames,
                    tally.bytes,
                    tally.end_seq,
                    tally.stream_crc32c,
                    tally.prefix_seq,
                    tally.prefix_crc,
                    42,
                    session_id,
                ]
            )
    progress = [
        (sid, p.next_seq, p.frames, p.bytes, p.end_seq, p.complete, p.stream_crc32c)
        for sid, p in ((sid, t.progress()) for sid, t in tallies.items())
    ]
    return {
        "rows": rows,
        "outcomes": outcomes,
        "updates": updates,
        "progress": progress,
    }


@settings(max_examples=400, deadline=None)
@given(case=cases())
def test_plan_follows_the_session_tally_rules(case: Case) -> None:
    plan = _run_plan(case)
    tally = _run_tally(case)
    assert plan["outcomes"] == tally["outcomes"]
    # Blocks group a session's frames, so compare the stored frames as sets of rows.
    assert sorted(plan["rows"], key=repr) == sorted(tally["rows"], key=repr)
    assert (json.loads(plan["updates"]) if plan["rows"] else []) == tally["updates"]
    assert plan["progress"] == tally["progress"]


def test_a_batch_completing_a_stream_gives_its_crc() -> None:
    frames = [
        FrameIn("s", 0, 0, 0, _native.crc32c(b"he"), b"he"),
        FrameIn("s", 1, _native.FLAG_END, 0, _native.crc32c(b"llo"), memoryview(b"llo")),
    ]
    plan = _native.CommitPlan(frames, [["s", 0, 0, 0, None, None, 0, 0]])
    extents, buffers, end = plan.judge(0)
    # One block: its header, then each frame as header and payload.
    header = _native.block_header("s", 0, 2, 2 * _native.HEADER_SIZE + 5)
    record_0 = _native.encode_frame(0, b"he")
    record_1 = _native.encode_frame(1, b"llo", 0, True)
    assert b"".join(bytes(b) for b in buffers) == header + record_0 + record_1
    assert extents == [("s", 0, 1, 0, end, 5, _native.crc32c(b"hello"))]
    assert plan.advance() == []
    (update,) = json.loads(plan.finish(7))
    assert update[0] == "complete"
    assert update[5] == _native.crc32c(b"hello")
    assert plan.outcomes(OUTCOMES) == [Outcome.STORED, Outcome.STORED]
    assert plan.progress() == [("s", 2, 2, 5, 1, True, _native.crc32c(b"hello"))]


def test_a_stored_block_judges_resends() -> None:
    """A resend is judged against the record stored in the block, header included."""
    first = _native.CommitPlan(
        [FrameIn("s", 0, 0, 9, _native.crc32c(b"ab"), b"ab")], [["s", 0, 0, 0, None, None, 0, 0]]
    )
    _, buffers, _ = first.judge(0)
    block = b"".join(bytes(b) for b in buffers)
    resends = [
        FrameIn("s", 0, 0, 9, _native.crc32c(b"ab"), b"ab"),
        FrameIn("s", 0, _native.FLAG_END, 9, _native.crc32c(b"ab"), b"ab"),
        FrameIn("s", 0, 0, 9, _native.crc32c(b"ax"), b"ax"),
    ]
    crc = _native.crc32c(b"ab")
    plan = _native.CommitPlan(resends, [["s", 1, 1, 2, None, None, 1, crc]])
    plan.known_block("s", block)
    plan.judge(0)
    assert plan.outcomes(OUTCOMES) == [Outcome.DUPLICATE, Outcome.CONFLICT, Outcome.CONFLICT]
    with pytest.raises(_native.BlockError):
        plan.known_block("s", block[:-1])
    with pytest.raises(_native.BlockError):
        plan.known_block("s", block.replace(b"s", b"t", 1))  # the header's CRC breaks


def test_known_needs_a_session_of_the_commit() -> None:
    plan = _native.CommitPlan([], [["s", 0, 0, 0, None, None, 0, 0]])
    with pytest.raises(KeyError):
        plan.known("other", 0, 0, 0, 0)
