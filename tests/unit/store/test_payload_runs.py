"""``Store.payload_runs`` and the audio download's byte mapping over it, on both stores.

The audio endpoint sizes its body from one snapshot of the runs and reads byte
ranges through them; frames stored after the snapshot must not shift the bytes.
"""

from __future__ import annotations

from voxgate.api.audio import _payload_bytes
from voxgate.store.base import Outcome, Store

from .conftest import frame, payload_of


async def _session(store: Store) -> str:
    session = await store.create_session(codec=None, sample_rate=None, channels=None, metadata={})
    return session.id


async def _collect(
    store: Store, sid: str, runs: list[tuple[int, int, int]], a: int, b: int
) -> bytes:
    return b"".join([piece async for piece in _payload_bytes(store, sid, runs, a, b)])


async def test_runs_describe_what_is_stored_without_reading_it(store: Store) -> None:
    sid = await _session(store)
    assert await store.payload_runs(sid) == []
    # Seqs 0-2 in one commit (one run), 3 alone, 6-7 after a gap at 4-5.
    sizes = {0: 10, 1: 20, 2: 30, 3: 40, 6: 5, 7: 7}
    payloads = {seq: payload_of(sid, seq, size) for seq, size in sizes.items()}
    await store.commit([frame(sid, seq, payloads[seq]) for seq in (0, 1, 2)])
    await store.commit([frame(sid, 3, payloads[3])])
    await store.commit([frame(sid, seq, payloads[seq]) for seq in (6, 7)])
    runs = await store.payload_runs(sid)
    assert runs == [(0, 2, 60), (3, 3, 40), (6, 7, 12)]
    assert await store.payload_runs("no-such-session") == []

    whole = b"".join(payloads[seq] for seq in sorted(payloads))
    # Every range, including ones that start and end inside a frame or a run.
    for first in range(len(whole)):
        for last in (first, first + 1, first + 25, first + 61, len(whole) - 1):
            if first <= last < len(whole):
                assert await _collect(store, sid, runs, first, last) == whole[first : last + 1]

    # The gap fills after the snapshot: the snapshot's bytes stay what they were.
    filled = await store.commit([frame(sid, seq, payload_of(sid, seq, 50)) for seq in (4, 5)])
    assert filled.outcomes == [Outcome.STORED, Outcome.STORED]
    assert await _collect(store, sid, runs, 0, len(whole) - 1) == whole
    assert await _collect(store, sid, runs, 95, 104) == whole[95:105]
    later = await store.payload_runs(sid)
    assert later == [(0, 2, 60), (3, 3, 40), (4, 5, 100), (6, 7, 12)]
    assert await _collect(store, sid, later, 0, 211) == (
        whole[:100] + payload_of(sid, 4, 50) + payload_of(sid, 5, 50) + whole[100:]
    )
    # An empty END frame is a run without bytes: the audio ends where it did.
    ended = await store.commit([frame(sid, 8, b"", end=True)])
    assert ended.outcomes == [Outcome.STORED]
    final = await store.payload_runs(sid)
    assert final == [*later, (8, 8, 0)]
    assert await _collect(store, sid, final, 200, 211) == whole[-12:]
    assert await _collect(store, sid, final, 211, 211) == whole[-1:]
