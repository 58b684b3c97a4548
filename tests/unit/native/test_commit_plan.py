"""CommitPlan (the per-frame work of an embedded-store commit) follows SessionTally's rules.

The embedded store judges frames with ``CommitPlan`` from the core; the
PostgreSQL store with :class:`~voxgate.store.commit_rules.SessionTally`. Both must
answer every batch alike, and the Rust and pure-Python cores must agree to
the byte on the JSON they hand to SQLite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unit.native import pynative as _pynative
from voxgate import _native
from voxgate.store.base import FrameIn, Outcome
from voxgate.store.commit_rules import SessionTally

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


def _run_plan(core: Any, case: Case) -> dict[str, Any]:
    """What a store does with a plan, against ``case.stored`` as its database."""
    plan = core.CommitPlan(case.frames, case.rows)
    lookups = plan.lookups()
    for session_id, seqs in lookups:
        for seq in seqs:
            if seq in case.stored[session_id]:
                crc, length, flags = case.stored[session_id][seq]
                plan.known(session_id, seq, crc, length, flags)
    rows_json, payloads, nrows, end = plan.judge(3, 1000)
    rows = json.loads(rows_json)
    after = {sid: dict(stored) for sid, stored in case.stored.items()}
    for sid, seq, flags, _pts, length, crc, _segment, _offset in rows:
        after[sid][seq] = (crc, length, flags)
    walks = plan.advance()
    for session_id, prefix_seq in walks:
        db = after[session_id]
        plan.extend(session_id, [(s, db[s][0], db[s][1]) for s in sorted(db) if s >= prefix_seq])
    return {
        "lookups": lookups,
        "rows": rows_json,
        "payloads": [id(p) for p in payloads],
        "nrows": nrows,
        "end": end,
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
    offset = 1000
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
            pts = frame.pts_us - U64 if frame.pts_us >= 1 << 63 else frame.pts_us
            rows.append(
                [frame.session_id, frame.seq, frame.flags, pts, length, frame.crc32c, 3, offset]
            )
            offset += length
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
        "end": offset,
        "outcomes": outcomes,
        "updates": updates,
        "progress": progress,
    }


@settings(max_examples=400, deadline=None)
@given(case=cases())
def test_rust_and_python_cores_agree(case: Case) -> None:
    assert _run_plan(_native, case) == _run_plan(_pynative, case)


@settings(max_examples=400, deadline=None)
@given(case=cases())
def test_plan_follows_the_session_tally_rules(case: Case) -> None:
    plan = _run_plan(_native, case)
    tally = _run_tally(case)
    assert plan["outcomes"] == tally["outcomes"]
    assert json.loads(plan["rows"]) == tally["rows"]
    assert plan["nrows"] == len(tally["rows"])
    assert plan["end"] == tally["end"]
    assert (json.loads(plan["updates"]) if plan["nrows"] else []) == tally["updates"]
    assert plan["progress"] == tally["progress"]


def test_a_batch_completing_a_stream_gives_its_crc() -> None:
    frames = [
        FrameIn("s", 0, 0, 0, _native.crc32c(b"he"), b"he"),
        FrameIn("s", 1, _native.FLAG_END, 0, _native.crc32c(b"llo"), memoryview(b"llo")),
    ]
    for core in (_native, _pynative):
        plan = core.CommitPlan(frames, [["s", 0, 0, 0, None, None, 0, 0]])
        rows, payloads, nrows, end = plan.judge(1, 0)
        assert (nrows, end, [bytes(p) for p in payloads]) == (2, 5, [b"he", b"llo"])
        assert [row[:2] + row[6:] for row in json.loads(rows)] == [["s", 0, 1, 0], ["s", 1, 1, 2]]
        assert plan.advance() == []
        (update,) = json.loads(plan.finish(7))
        assert update[0] == "complete"
        assert update[5] == _native.crc32c(b"hello")
        assert plan.outcomes(OUTCOMES) == [Outcome.STORED, Outcome.STORED]
        assert plan.progress() == [("s", 2, 2, 5, 1, True, _native.crc32c(b"hello"))]


def test_known_needs_a_session_of_the_commit() -> None:
    for core in (_native, _pynative):
        plan = core.CommitPlan([], [["s", 0, 0, 0, None, None, 0, 0]])
        with pytest.raises(KeyError):
            plan.known("other", 0, 0, 0, 0)
