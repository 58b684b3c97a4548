"""Export: a session's archive, the stored one when warm, built from its frames when hot."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath
from litestar.response import Stream

from voxgate.api.audio import parse_range, refuse_cold
from voxgate.api.auth import require_api_key
from voxgate.api.problems import problem_responses
from voxgate.api.sessions import owned_session, runtime_of
from voxgate.retention.archive import (
    MEDIA_TYPE,
    SUFFIX,
    ArchiveError,
    archive_stream,
    indexed_payloads,
)
from voxgate.store.base import Tier

READ_BYTES = 1024 * 1024


async def _file_bytes(path: Path, first: int, last: int) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset = first
        while offset <= last:
            piece = await asyncio.to_thread(
                os.pread, fd, min(READ_BYTES, last - offset + 1), offset
            )
            if not piece:
                raise ArchiveError(f"{path} ended early")
            offset += len(piece)
            yield piece
    finally:
        os.close(fd)


@get(
    "/v1/sessions/{session_id:str}/archive",
    guards=[require_api_key],
    tags=["sessions"],
    responses=problem_responses(401, 404, 410, 416, 503),
)
async def download_archive(
    request: Request[Any, Any, Any], session_id: FromPath[str]
) -> Response[Any]:
    """The session's ``.tar.zst`` archive (docs/operations.md describes the format).

    Warm: the verified archive file, honouring a single ``Range``. Hot: built
    now from the stored frames and streamed as it is made. Cold: 410.
    """
    runtime = runtime_of(request)
    store = runtime.store
    session = await owned_session(request, session_id)
    refuse_cold(session)
    headers = {"Content-Disposition": f'attachment; filename="{session_id}{SUFFIX}"'}
    if session.tier is Tier.WARM:
        record = await store.archive_record(session_id)
        if record is None:
            raise ArchiveError(f"session {session_id} is warm but has no archive record")
        path = runtime.retention.archive_file(record)
        try:
            total = (await asyncio.to_thread(os.stat, path)).st_size
        except OSError as exc:
            raise ArchiveError(f"cannot read {path}: {exc}") from exc
        wanted = parse_range(request.headers.get("range"), total)
        first, last = wanted if wanted is not None else (0, total - 1)
        headers.update(
            {
                "Accept-Ranges": "bytes",
                "Content-Length": str(last - first + 1),
                "Voxgate-Archive": "stored",
            }
        )
        status = 200
        if wanted is not None:
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{total}"
        return Stream(
            _file_bytes(path, first, last),
            status_code=status,
            media_type=MEDIA_TYPE,
            headers=headers,
        )
    index = await store.frame_index(session_id)
    headers["Voxgate-Archive"] = "built"
    chunks = archive_stream(session, index, indexed_payloads(store, session_id, index))
    return Stream(chunks, media_type=MEDIA_TYPE, headers=headers)
