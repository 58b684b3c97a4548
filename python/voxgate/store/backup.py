"""Backups of the embedded store: online, verified, rotated; and their restore.

A backup is a directory ``<backup dir>/<YYYYMMDDTHHMMSSZ>/`` holding

    voxgate.db      an SQLite online-backup snapshot (journal mode DELETE)
    segments/       the segment files that snapshot names, cut at their last committed byte
    backup.json     when, what, and the size and CRC-32C of every file

It is made in ``.incomplete-<name>/`` and renamed only once it checks out:
``PRAGMA integrity_check``, every frame's payload against its CRC-32C, and
every complete session's stream CRC. Byte ranges of deleted sessions still
waiting to be erased are zeroed in the copy. A retention run and a backup do
not overlap (they share the retention lock); a session deleted while the
segments are copied makes the backup start over.

Rotation keeps the newest backup of each of the last ``daily`` days, ``weekly``
ISO weeks and ``monthly`` months that have backups, and removes the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from voxgate.core import native
from voxgate.durable import fsync_dir
from voxgate.errors import VoxgateError
from voxgate.store.sqlite import DATA_LOCK, DB_NAME, RETENTION_LOCK, SEGMENTS_DIR

crc32c, crc32c_combine = native.crc32c, native.crc32c_combine

MANIFEST = "backup.json"
INCOMPLETE = ".incomplete-"
NAME_FORMAT = "%Y%m%dT%H%M%SZ"
COPY_BYTES = 4 * 1024 * 1024
ATTEMPTS = 5
_ZEROS = bytes(1024 * 1024)


class BackupError(VoxgateError):
    """A backup cannot be made, is unsound, or cannot be restored; the message says why."""


class FileSum(msgspec.Struct, array_like=True):
    bytes: int
    crc32c: int


class BackupInfo(msgspec.Struct, kw_only=True):
    """``backup.json``: what a backup holds."""

    name: str
    created_at: datetime
    schema_version: int
    sessions: int
    frames: int
    payload_bytes: int
    files: dict[str, FileSum]  # path relative to the backup -> size and CRC-32C


class RestoreReport(msgspec.Struct, kw_only=True):
    backup: BackupInfo
    data_dir: str
    set_aside: str | None  # where the data dir's previous files went
    missing_archives: list[str]  # warm sessions whose archive file is absent


# -- helpers -----------------------------------------------------------------------


def _file_sum(path: Path) -> FileSum:
    crc = size = 0
    with path.open("rb") as f:
        while chunk := f.read(COPY_BYTES):
            crc = crc32c(chunk, crc)
            size += len(chunk)
    return FileSum(size, crc)


def _copy_prefix(source: Path, target: Path, length: int) -> None:
    """Copy the first ``length`` bytes of ``source``; BackupError if it is shorter."""
    with source.open("rb") as src, target.open("wb") as dst:
        left = length
        while left:
            chunk = src.read(min(COPY_BYTES, left))
            if not chunk:
                raise _Moved(f"{source} is shorter than its last commit")
            dst.write(chunk)
            left -= len(chunk)
        dst.flush()
        os.fsync(dst.fileno())


class _Moved(Exception):
    """The live store changed under the copy (a delete or a move): start over."""


@contextlib.contextmanager
def _flock(path: Path, mode: int, *, wait_s: float, what: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackupError(what) from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def backup_name(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(NAME_FORMAT)


def _parse_name(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, NAME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


# -- checking ----------------------------------------------------------------------


def check_store_files(root: Path) -> tuple[int, int, int, int]:
    """Check a data dir or backup: integrity, every frame CRC, every complete stream CRC.

    Returns (schema version, sessions, frames, payload bytes); raises
    :class:`BackupError` naming the first problem.
    """
    db_path = root / DB_NAME
    if not db_path.is_file():
        raise BackupError(f"{root} holds no {DB_NAME}")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise BackupError(f"{db_path}: integrity_check: {'; '.join(result[:5])}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if "extents" in tables:
            frames, payload = _check_blocks(conn, root)
        else:  # a backup made before blocks (schema 5 and older)
            frames, payload = _check_frame_rows(conn, root)
            _check_stream_crcs(conn)
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{db_path}: {exc}") from exc
    finally:
        conn.close()
    return version, sessions, frames, payload


def _check_blocks(conn: sqlite3.Connection, root: Path) -> tuple[int, int]:
    """Every block against its extent row and its payloads' CRC-32C; every complete
    session's extents against its stream CRC. Returns (frames, payload bytes)."""
    tier = " AND s.tier = 'hot'"
    expected: dict[str, int] = dict(
        conn.execute(f"SELECT id, stream_crc32c FROM sessions s WHERE state = 'complete'{tier}")
    )
    seen: dict[str, int] = {}
    frames = payload = 0
    files = _SegmentFiles(conn, root)
    try:
        for session_id, first, last, segment, offset, length, nbytes, crc in conn.execute(
            "SELECT session_id, first_seq, last_seq, segment, offset, length, payload_bytes,"
            " crc32c FROM all_extents ORDER BY session_id, first_seq"
        ):
            where = f"{session_id} seqs {first}-{last}"
            data = files.read(segment, offset, length, where)
            try:
                owner, records = native.read_block(data, verify=True)
            except native.BlockError as exc:
                raise BackupError(f"{where}: {exc}") from None
            found = _extent_of(records)
            if (owner, records[0][0], records[-1][0], found[0], found[1]) != (
                session_id,
                first,
                last,
                nbytes,
                crc,
            ):
                raise BackupError(f"{where}: the block is not what the index says")
            frames += len(records)
            payload += nbytes
            if session_id in expected:
                seen[session_id] = crc32c_combine(seen.get(session_id, 0), crc, nbytes)
    finally:
        files.close()
    for session_id, stream_crc in expected.items():
        if seen.get(session_id, 0) != stream_crc:
            raise BackupError(f"{session_id}: frames do not add up to its stream CRC-32C")
    return frames, payload


class _SegmentFiles:
    """The segment files of a copied data dir, opened once each, read by offset."""

    def __init__(self, conn: sqlite3.Connection, root: Path) -> None:
        self._names: dict[int, str] = dict(conn.execute("SELECT id, name FROM segments"))
        self._dir = root / SEGMENTS_DIR
        self._fds: dict[int, int] = {}

    def read(self, segment: int, offset: int, length: int, where: str) -> bytes:
        fd = self._fds.get(segment)
        if fd is None:
            name = self._names.get(segment)
            if name is None:
                raise BackupError(f"{where}: unknown segment {segment}")
            try:
                fd = self._fds[segment] = os.open(self._dir / name, os.O_RDONLY)
            except FileNotFoundError:
                raise BackupError(f"segment {name} is missing") from None
        return os.pread(fd, length, offset)

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def _extent_of(records: list[tuple[int, int, int, int, int, int]]) -> tuple[int, int]:
    """(payload bytes, combined CRC-32C) of a block's records."""
    nbytes = crc = 0
    for _seq, _flags, _pts, length, record_crc, _at in records:
        if length:
            crc = crc32c_combine(crc, record_crc, length)
            nbytes += length
    return nbytes, crc


def _check_frame_rows(conn: sqlite3.Connection, root: Path) -> tuple[int, int]:
    """Schema 5 and older: one index row per frame, bare payloads in the segments."""
    frames = payload = 0
    files = _SegmentFiles(conn, root)
    try:
        for session_id, seq, length, crc, segment, offset in conn.execute(
            "SELECT session_id, seq, length, crc32c, segment, offset FROM frames"
            " ORDER BY segment, offset"
        ):
            frames += 1
            payload += length
            if not length:
                continue
            data = files.read(segment, offset, length, f"{session_id} seq {seq}")
            if len(data) != length or crc32c(data) != crc:
                raise BackupError(f"{session_id} seq {seq}: payload fails its CRC-32C")
    finally:
        files.close()
    return frames, payload


def _check_stream_crcs(conn: sqlite3.Connection) -> None:
    # Retention moves keep a warm or cold session's counters but drop its frames.
    tier_filter = ""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
    if "tier" in columns:
        tier_filter = " AND s.tier = 'hot'"
    current: str | None = None
    crc = 0
    expected: dict[str, int] = {
        session_id: stream_crc
        for session_id, stream_crc in conn.execute(
            f"SELECT id, stream_crc32c FROM sessions s WHERE state = 'complete'{tier_filter}"
        )
    }
    seen: dict[str, int] = {}
    for session_id, length, frame_crc in conn.execute(
        "SELECT f.session_id, f.length, f.crc32c FROM frames f JOIN sessions s"
        f" ON s.id = f.session_id WHERE s.state = 'complete'{tier_filter}"
        " ORDER BY f.session_id, f.seq"
    ):
        if session_id != current:
            if current is not None:
                seen[current] = crc
            current, crc = session_id, 0
        if length:
            crc = crc32c_combine(crc, frame_crc, length)
    if current is not None:
        seen[current] = crc
    for session_id, stream_crc in expected.items():
        if seen.get(session_id, 0) != stream_crc:
            raise BackupError(f"{session_id}: frames do not add up to its stream CRC-32C")


def verify_backup(path: Path) -> BackupInfo:
    """Check a finished backup: its files against ``backup.json``, then its contents."""
    try:
        info = msgspec.json.decode((path / MANIFEST).read_bytes(), type=BackupInfo)
    except (OSError, msgspec.DecodeError) as exc:
        raise BackupError(f"{path}: unreadable {MANIFEST}: {exc}") from exc
    on_disk = {
        str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != MANIFEST
    }
    if on_disk != set(info.files):
        raise BackupError(f"{path}: files differ from {MANIFEST}")
    for relpath, expected in info.files.items():
        if _file_sum(path / relpath) != expected:
            raise BackupError(f"{path}: {relpath} changed since the backup was made")
    version, sessions, frames, payload = check_store_files(path)
    if (version, sessions, frames, payload) != (
        info.schema_version,
        info.sessions,
        info.frames,
        info.payload_bytes,
    ):
        raise BackupError(f"{path}: contents differ from {MANIFEST}")
    return info


# -- making ------------------------------------------------------------------------


def create_backup(
    data_dir: Path,
    backup_dir: Path,
    *,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    lock_wait_s: float = 900.0,
) -> tuple[Path, BackupInfo, list[str]]:
    """Back up the store in ``data_dir`` while it runs; returns (path, info, pruned names)."""
    if not (data_dir / DB_NAME).is_file():
        raise BackupError(f"{data_dir} holds no voxgate store ({DB_NAME})")
    backup_dir.mkdir(parents=True, exist_ok=True)
    for stale in backup_dir.glob(INCOMPLETE + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    with _flock(
        data_dir / RETENTION_LOCK,
        fcntl.LOCK_EX,
        wait_s=lock_wait_s,
        what="a retention run holds the store's retention lock; try again later",
    ):
        for attempt in range(1, ATTEMPTS + 1):
            now = datetime.now(UTC)
            name = backup_name(now)
            while (backup_dir / name).exists():  # two backups within one second
                time.sleep(1)
                now = datetime.now(UTC)
                name = backup_name(now)
            work = backup_dir / f"{INCOMPLETE}{name}"
            try:
                info = _snapshot(data_dir, work, name, now)
            except _Moved as exc:
                shutil.rmtree(work, ignore_errors=True)
                if attempt == ATTEMPTS:
                    raise BackupError(f"the store kept changing under the backup: {exc}") from exc
                continue
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
            final = backup_dir / name
            os.rename(work, final)
            fsync_dir(backup_dir)
            break
    pruned = prune_backups(backup_dir, daily=keep_daily, weekly=keep_weekly, monthly=keep_monthly)
    return final, info, pruned


def _snapshot(data_dir: Path, work: Path, name: str, now: datetime) -> BackupInfo:
    (work / SEGMENTS_DIR).mkdir(parents=True)
    db_copy = work / DB_NAME
    source = sqlite3.connect(data_dir / DB_NAME, timeout=30.0)
    try:
        target = sqlite3.connect(db_copy)
        try:
            source.backup(target)  # one step: a consistent snapshot
            segments = target.execute(
                "SELECT id, name, end_offset, live FROM segments ORDER BY id"
            ).fetchall()
            erasures = target.execute(
                "SELECT segment, offset, length FROM erasures ORDER BY segment, offset"
            ).fetchall()
            for segment_id, segment_name, end_offset, live in segments:
                if not live:
                    target.execute("DELETE FROM segments WHERE id = ?", (segment_id,))
                    continue
                try:
                    _copy_prefix(
                        data_dir / SEGMENTS_DIR / segment_name,
                        work / SEGMENTS_DIR / segment_name,
                        end_offset,
                    )
                except FileNotFoundError:
                    raise _Moved(f"segment {segment_name} went away") from None
            kept = {row[0]: row[1] for row in segments if row[3]}
            _apply_erasures(work, kept, erasures)
            with target:
                target.execute("DELETE FROM erasures")
                target.execute("UPDATE segments SET sealed = 1")
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
    finally:
        source.close()
    fsync_dir(work / SEGMENTS_DIR)
    with db_copy.open("rb+") as f:
        os.fsync(f.fileno())
    try:
        version, sessions, frames, payload = check_store_files(work)
    except BackupError as exc:
        # A frame deleted or archived after the snapshot was zeroed or unlinked live.
        raise _Moved(str(exc)) from exc
    files = {str(p.relative_to(work)): _file_sum(p) for p in sorted(work.rglob("*")) if p.is_file()}
    info = BackupInfo(
        name=name,
        created_at=now,
        schema_version=version,
        sessions=sessions,
        frames=frames,
        payload_bytes=payload,
        files=files,
    )
    manifest = work / MANIFEST
    manifest.write_bytes(msgspec.json.format(msgspec.json.encode(info)))
    with manifest.open("rb+") as f:
        os.fsync(f.fileno())
    fsync_dir(work)
    return info


def _apply_erasures(
    work: Path, names: dict[int, str], erasures: Sequence[tuple[int, int, int]]
) -> None:
    for segment_id, offset, length in erasures:
        name = names.get(segment_id)
        if name is None:
            continue
        path = work / SEGMENTS_DIR / name
        with path.open("rb+") as f:
            size = os.fstat(f.fileno()).st_size
            end = min(offset + length, size)
            at = offset
            while at < end:
                n = min(len(_ZEROS), end - at)
                os.pwrite(f.fileno(), _ZEROS[:n], at)
                at += n
            os.fsync(f.fileno())


# -- rotation ----------------------------------------------------------------------


def backups_to_keep(
    moments: Sequence[datetime], *, daily: int, weekly: int, monthly: int
) -> set[datetime]:
    """The newest backup of each of the last ``daily`` days, ``weekly`` ISO weeks and
    ``monthly`` months that have backups."""
    keep: set[datetime] = set()
    ordered = sorted(moments, reverse=True)
    for count, bucket in (
        (daily, lambda m: m.date()),
        (weekly, lambda m: m.isocalendar()[:2]),
        (monthly, lambda m: (m.year, m.month)),
    ):
        seen: set[object] = set()
        for moment in ordered:
            key = bucket(moment)
            if key in seen:
                continue
            if len(seen) == count:
                break
            seen.add(key)
            keep.add(moment)
    return keep


def list_backups(backup_dir: Path) -> list[tuple[str, datetime]]:
    """Finished backups, newest first."""
    if not backup_dir.is_dir():
        return []
    found = []
    for entry in backup_dir.iterdir():
        moment = _parse_name(entry.name)
        if moment is not None and entry.is_dir() and (entry / MANIFEST).is_file():
            found.append((entry.name, moment))
    return sorted(found, key=lambda item: item[1], reverse=True)


def prune_backups(backup_dir: Path, *, daily: int, weekly: int, monthly: int) -> list[str]:
    """Remove the backups rotation does not keep; returns their names."""
    backups = list_backups(backup_dir)
    keep = backups_to_keep([m for _, m in backups], daily=daily, weekly=weekly, monthly=monthly)
    removed = []
    for name, moment in backups:
        if moment not in keep:
            shutil.rmtree(backup_dir / name)
            removed.append(name)
    return removed


# -- restoring ---------------------------------------------------------------------


def resolve_backup(backup_dir: Path, which: str) -> Path:
    """``which`` as a backup path, a backup name under ``backup_dir``, or ``latest``."""
    if which == "latest":
        backups = list_backups(backup_dir)
        if not backups:
            raise BackupError(f"no backups in {backup_dir}")
        return backup_dir / backups[0][0]
    path = Path(which)
    if not path.is_dir():
        path = backup_dir / which
    if not path.is_dir():
        raise BackupError(f"no backup {which!r} (looked in {backup_dir})")
    return path


def restore_backup(backup: Path, data_dir: Path, archive_dir: Path) -> RestoreReport:
    """Replace the store in ``data_dir`` with a verified backup; the server must be stopped.

    The files it replaces are moved to ``<data_dir>/pre-restore-<time>/``, not
    deleted. The restored store is checked again in place.
    """
    info = verify_backup(backup)
    data_dir.mkdir(parents=True, exist_ok=True)
    set_aside: Path | None = None
    with _flock(
        data_dir / DATA_LOCK,
        fcntl.LOCK_EX,
        wait_s=0,
        what=f"a voxgate process has the store in {data_dir} open: stop it before restoring",
    ):
        current = [
            data_dir / n for n in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", SEGMENTS_DIR)
        ]
        if any(p.exists() for p in current):
            set_aside = data_dir / f"pre-restore-{backup_name(datetime.now(UTC))}"
            set_aside.mkdir()
            for p in current:
                if p.exists():
                    os.rename(p, set_aside / p.name)
            fsync_dir(data_dir)
        incoming = data_dir / f"{SEGMENTS_DIR}.restoring"
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir()
        for segment in (backup / SEGMENTS_DIR).iterdir():
            _copy_prefix(segment, incoming / segment.name, segment.stat().st_size)
        fsync_dir(incoming)
        _copy_prefix(backup / DB_NAME, data_dir / f"{DB_NAME}.restoring", info.files[DB_NAME].bytes)
        os.rename(data_dir / f"{DB_NAME}.restoring", data_dir / DB_NAME)
        os.rename(incoming, data_dir / SEGMENTS_DIR)
        fsync_dir(data_dir)
        restored = check_store_files(data_dir)
        if restored != (info.schema_version, info.sessions, info.frames, info.payload_bytes):
            raise BackupError(f"{data_dir}: restored store differs from backup {info.name}")
    return RestoreReport(
        backup=info,
        data_dir=str(data_dir),
        set_aside=str(set_aside) if set_aside is not None else None,
        missing_archives=_missing_archives(data_dir, archive_dir),
    )


def _missing_archives(data_dir: Path, archive_dir: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
        if "archive_path" not in columns:
            return []
        rows = conn.execute(
            "SELECT id, archive_path FROM sessions WHERE tier = 'warm' AND state != 'deleted'"
        ).fetchall()
    finally:
        conn.close()
    return [session_id for session_id, rel in rows if not (archive_dir / rel).is_file()]
