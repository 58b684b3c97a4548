"""The archive format: a plain tar.zst, seekable, verified down to every frame's CRC."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from voxgate._native import FLAG_END, crc32c
from voxgate.retention.archive import (
    BLOCK_BYTES,
    ArchiveError,
    ArchiveReader,
    archive_stream,
    verify_archive,
)
from voxgate.store.base import FrameEntry, Session, SessionState


def make_session(index: Sequence[FrameEntry], payloads: dict[int, bytes]) -> Session:
    end = next((e.seq for e in index if e.flags & FLAG_END), None)
    seqs = [e.seq for e in index]
    complete = end is not None and seqs == list(range(end + 1))
    now = datetime.now(UTC)
    return Session(
        id="ses_01HZZZZZZZZZZZZZZZZZZZZZZZ",
        state=SessionState.COMPLETE if complete else SessionState.OPEN,
        created_at=now,
        updated_at=now,
        codec="opus",
        metadata={"caller": "+15550100"},
        next_seq=max(seqs, default=-1) + 1,
        frames=len(index),
        bytes=sum(len(p) for p in payloads.values()),
        end_seq=end,
        stream_crc32c=crc32c(b"".join(payloads[s] for s in seqs)) if complete else None,
    )


def frames_of(
    sizes: dict[int, int], end: int | None = None
) -> tuple[list[FrameEntry], dict[int, bytes]]:
    payloads = {seq: os.urandom(size) for seq, size in sizes.items()}
    index = [
        FrameEntry(seq, FLAG_END if seq == end else 0, seq * 20_000, len(p), crc32c(p))
        for seq, p in sorted(payloads.items())
    ]
    return index, payloads


async def write(
    path: Path, session: Session, index: Sequence[FrameEntry], payloads: dict[int, bytes]
) -> None:
    async def source() -> AsyncIterator[bytes]:
        for entry in index:
            yield payloads[entry.seq]

    with path.open("wb") as f:
        async for chunk in archive_stream(session, index, source()):
            f.write(chunk)


async def test_an_archive_is_a_plain_tar_zst_with_manifest_index_and_audio(tmp_path: Path) -> None:
    # Three blocks' worth of audio, frames straddling block boundaries, a gap at seq 3.
    sizes = {seq: 700_000 + seq for seq in range(6) if seq != 3}
    index, payloads = frames_of(sizes, end=5)
    session = make_session(index, payloads)
    path = tmp_path / "a.tar.zst"
    await write(path, session, index, payloads)

    # Any zstd decoder and tar reader unpack it: the seek table is a skippable frame.
    with path.open("rb") as f:
        tar_bytes = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert tar.getnames() == ["manifest.json", "frames.jsonl", "audio.bin"]
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        lines = tar.extractfile("frames.jsonl").read().decode().splitlines()  # type: ignore[union-attr]
        audio = tar.extractfile("audio.bin").read()  # type: ignore[union-attr]
    full = b"".join(payloads[e.seq] for e in index)
    assert audio == full
    assert [json.loads(line) for line in lines] == [
        [e.seq, e.flags, e.pts_us, e.length, e.crc32c] for e in index
    ]
    assert manifest["session"]["id"] == session.id
    assert manifest["session"]["metadata"] == {"caller": "+15550100"}
    assert manifest["frames"] == 5
    assert manifest["audio_bytes"] == len(full)
    assert manifest["payload_crc32c"] == crc32c(full)
    assert manifest["stream_crc32c"] is None  # not complete: seq 3 is missing
    assert manifest["missing"] == [[3, 3]]

    summary = verify_archive(path, session_id=session.id, index=index)
    assert summary.bytes == path.stat().st_size
    assert summary.manifest.payload_crc32c == crc32c(full)


async def test_a_complete_session_carries_its_stream_crc(tmp_path: Path) -> None:
    index, payloads = frames_of({seq: 1000 for seq in range(4)}, end=3)
    session = make_session(index, payloads)
    path = tmp_path / "c.tar.zst"
    await write(path, session, index, payloads)
    manifest = verify_archive(path).manifest
    assert manifest.stream_crc32c == crc32c(b"".join(payloads[s] for s in range(4)))
    assert manifest.stream_crc32c == session.stream_crc32c


async def test_byte_ranges_of_the_audio_decompress_only_what_they_need(tmp_path: Path) -> None:
    index, payloads = frames_of({seq: 900_000 for seq in range(4)})
    session = make_session(index, payloads)
    path = tmp_path / "r.tar.zst"
    await write(path, session, index, payloads)
    full = b"".join(payloads[s] for s in range(4))
    with ArchiveReader(path) as reader:
        offset, size = reader.audio_span()
        assert size == len(full)
        for first, length in (
            (0, 1),
            (BLOCK_BYTES - 100, 300),
            (1_234_567, 2 * BLOCK_BYTES),
            (size - 5, 5),
        ):
            assert reader.read_exact(offset + first, length) == full[first : first + length]
        assert reader.manifest().frames == 4


async def test_an_empty_session_archives_too(tmp_path: Path) -> None:
    session = make_session([], {})
    path = tmp_path / "e.tar.zst"
    await write(path, session, [], {})
    summary = verify_archive(path, session_id=session.id, index=[])
    assert (summary.manifest.frames, summary.manifest.audio_bytes) == (0, 0)


@pytest.mark.parametrize("where", ["compressed block", "seek table", "truncated"])
async def test_damage_to_the_file_is_detected(tmp_path: Path, where: str) -> None:
    index, payloads = frames_of({seq: 600_000 for seq in range(3)})
    path = tmp_path / "d.tar.zst"
    await write(path, make_session(index, payloads), index, payloads)
    data = bytearray(path.read_bytes())
    if where == "compressed block":
        data[len(data) // 2] ^= 0x40
    elif where == "seek table":
        data[-12] ^= 0x01  # a block's recorded size
    else:
        del data[-5000:]
    path.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        verify_archive(path)


async def test_a_payload_that_does_not_match_its_crc_is_detected(tmp_path: Path) -> None:
    index, payloads = frames_of({seq: 500 for seq in range(3)})
    session = make_session(index, payloads)
    payloads[1] = bytes(500)  # the archive gets other bytes than the index describes
    path = tmp_path / "p.tar.zst"
    await write(path, session, index, payloads)
    with pytest.raises(ArchiveError, match="frame 1 fails its CRC-32C"):
        verify_archive(path)


async def test_verify_compares_with_the_expected_session_and_index(tmp_path: Path) -> None:
    index, payloads = frames_of({seq: 500 for seq in range(3)})
    session = make_session(index, payloads)
    path = tmp_path / "x.tar.zst"
    await write(path, session, index, payloads)
    with pytest.raises(ArchiveError, match="archive of"):
        verify_archive(path, session_id="ses_01HAAAAAAAAAAAAAAAAAAAAAAA")
    with pytest.raises(ArchiveError, match="differ from the store"):
        verify_archive(path, session_id=session.id, index=index[:2])


def test_a_file_that_is_no_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"hello" * 100))
    with pytest.raises(ArchiveError, match="no seek table"):
        verify_archive(path)
    with pytest.raises(ArchiveError):
        verify_archive(tmp_path / "missing.tar.zst")
