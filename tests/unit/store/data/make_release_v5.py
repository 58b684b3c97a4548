"""Writes ``release-v5.tar.gz``: an embedded data dir made by the release whose schema
is ``user_version`` 5 (one index row per frame, segments of bare payloads), and
``release-v5.json``, what that release answered about it.

Run with that release installed (commit 3187b0f):
``python tests/unit/store/data/make_release_v5.py tests/unit/store/data``.
The migration test opens the unpacked dir with the current store and expects
the same answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tarfile
import tempfile
from pathlib import Path

from voxgate.core import native
from voxgate.store.base import FrameIn, TranscriptIn
from voxgate.store.sqlite import SqliteStore


def payload(tag: str, seq: int) -> bytes:
    size = (seq * 37 + len(tag) * 11) % 700  # 0..699 bytes, some frames empty
    return bytes((seq * 7 + i + ord(tag[0])) % 256 for i in range(size))


def frame(sid: str, tag: str, seq: int, *, end: bool = False) -> FrameIn:
    data = payload(tag, seq)
    if not data and not end:
        data = b"\x00"
    return FrameIn(sid, seq, native.FLAG_END if end else 0, seq * 20_000, native.crc32c(data), data)


async def answers(store: SqliteStore, sid: str) -> dict[str, object]:
    session = await store.get_session(sid)
    assert session is not None
    index = await store.frame_index(sid)
    payloads = [[seq, native.crc32c(p), len(p)] async for seq, p in store.read_payloads(sid)]
    return {
        "state": session.state.value,
        "next_seq": session.next_seq,
        "frames": session.frames,
        "bytes": session.bytes,
        "end_seq": session.end_seq,
        "stream_crc32c": session.stream_crc32c,
        "missing": await store.missing(sid),
        "index": [[e.seq, e.flags, e.pts_us, e.length, e.crc32c] for e in index],
        "payloads": payloads,
        "transcripts": [t.text for t in await store.list_transcripts(sid)],
    }


async def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        tags = ["complete", "gaps", "deleted", "empty", "busy", "zero_end"]
        sids: dict[str, str] = {}
        # Two store lifetimes: frames land in two segment files.
        for life in range(2):
            store = SqliteStore(data, segment_max_bytes=16 * 1024)
            await store.open()
            if life == 0:
                for tag in tags:
                    s = await store.create_session(
                        codec="pcm_s16le", sample_rate=16000, channels=1, metadata={"tag": tag}
                    )
                    sids[tag] = s.id
                batch = [frame(sids["complete"], "complete", q) for q in range(0, 12)]
                batch += [frame(sids["gaps"], "gaps", q) for q in (0, 1, 2, 3, 4, 7, 8)]
                batch += [frame(sids["deleted"], "deleted", q) for q in range(6)]
                batch += [frame(sids["busy"], "busy", q) for q in range(0, 40)]
                await store.commit(batch)
                await store.add_transcript(
                    sids["complete"],
                    TranscriptIn(role="user", text="hello", is_final=True, timestamp=1.5),
                )
            else:
                batch = [frame(sids["complete"], "complete", q) for q in range(12, 19)]
                batch.append(frame(sids["complete"], "complete", 19, end=True))
                batch += [frame(sids["gaps"], "gaps", q) for q in (9, 12)]
                batch += [frame(sids["busy"], "busy", q) for q in range(40, 120)]
                batch.append(frame(sids["gaps"], "gaps", 3))  # a resend: duplicate
                await store.commit(batch)
                await store.commit([frame(sids["zero_end"], "zero_end", 0, end=True)])
                await store.delete_session(sids["deleted"])
            await store.close()
        store = SqliteStore(data)
        await store.open()
        report = {tag: await answers(store, sid) for tag, sid in sids.items() if tag != "deleted"}
        deleted = await store.get_session(sids["deleted"])
        assert deleted is not None
        report["deleted"] = {"state": deleted.state.value}
        await store.close()
        manifest = {"sessions": sids, "answers": report}
        (out / "release-v5.json").write_text(json.dumps(manifest, indent=1))
        with tarfile.open(out / "release-v5.tar.gz", "w:gz") as tar:
            tar.add(data, arcname="data")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
