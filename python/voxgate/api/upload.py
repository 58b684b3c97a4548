"""HTTP upload of frames (PROTOCOL section 2.2), decoded incrementally as the body arrives."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, post
from litestar.exceptions import InternalServerException
from litestar.params import FromPath

from voxgate import metrics
from voxgate.api.auth import auth_failed, bearer, refuse_if_blocked
from voxgate.api.problems import body_cut_short, problem, problem_responses
from voxgate.api.ratelimit import enforce
from voxgate.core import native as _native
from voxgate.errors import ApiError
from voxgate.ingest.tally import Tally, precheck
from voxgate.rates import UPLOADS
from voxgate.store.base import FrameIn, SessionState, Tier

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

MEDIA_TYPE = "application/vnd.voxgate.frames"


def _answer(tally: Tally) -> dict[str, Any]:
    acked, duplicate = tally.take_acks()
    rejections = tally.take_rejections()
    metrics.record_acks("http", acked, duplicate)
    for reason, ranges in rejections:
        metrics.record_nack("http", reason, ranges)
    rejected = [{"ranges": ranges, "reason": reason} for reason, ranges in rejections]
    return {"acked": acked, "duplicate": duplicate, "rejected": rejected}


@post(
    "/v1/sessions/{session_id:str}/frames",
    name="upload",
    status_code=200,
    request_max_body_size=None,  # checked below against VOXGATE_MAX_UPLOAD_BYTES while streaming
    tags=["frames"],
    responses=problem_responses(400, 401, 403, 404, 410, 413, 415, 429, 503),
)
async def upload(request: Request[Any, Any, Any], session_id: FromPath[str]) -> Response[Any]:
    """Store the frames of a request body; answers once each is durable or rejected."""
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    token = bearer(request.headers.get("authorization"))
    if token is None:
        raise ApiError(
            401, "unauthorized", "missing stream token: send Authorization: Bearer <token>"
        )
    # Checked before the token is used up, so a wrong Content-Type does not cost one.
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != MEDIA_TYPE:
        raise ApiError(415, "unsupported_media_type", f"Content-Type must be {MEDIA_TYPE}")
    await refuse_if_blocked(request)
    await enforce(request, UPLOADS)  # per client IP
    # The token is used up only once the body has begun to arrive: a client that
    # goes away before sending any of it keeps its token for the retry.
    body = request.stream()
    try:
        first = await anext(body)
    except InternalServerException:  # Litestar's word for the client's disconnect
        raise body_cut_short(request.scope) from None
    token_session = await runtime.tokens.consume(token)
    if token_session is None:
        await auth_failed(request)
        raise ApiError(401, "unauthorized", "invalid, expired or already used stream token")
    session = await runtime.store.get_session(session_id)
    if session is None:
        raise ApiError(404, "not_found", f"unknown session {session_id}")
    if session.state is SessionState.DELETED:
        raise ApiError(410, "gone", "session deleted: it no longer accepts frames")
    if session.tier is not Tier.HOT:
        raise ApiError(410, "gone", f"session archived ({session.tier}): it takes no frames")
    if not hmac.compare_digest(token_session, session_id):
        raise ApiError(403, "forbidden", "stream token is for another session")

    decoder = _native.StreamDecoder(settings.max_frame_bytes)
    tally = Tally()
    end_seq, next_seq = session.end_seq, session.next_seq
    batch: list[FrameIn] = []
    batch_bytes = 0
    received = 0

    async def commit() -> None:
        nonlocal batch, batch_bytes, end_seq, next_seq
        if not batch:
            return
        result = await runtime.writer.commit(batch)
        metrics.INGESTED_BYTES["http"].inc(batch_bytes)
        tally.record(batch, result.outcomes)
        progress = result.progress.get(session_id)
        if progress is not None:
            end_seq, next_seq = progress.end_seq, max(next_seq, progress.next_seq)
            runtime.streams.progressed(session_id, progress)
        batch, batch_bytes = [], 0

    async def chunks() -> AsyncIterator[bytes]:
        yield first
        async for rest in body:
            yield rest

    try:
        async for chunk in chunks():
            received += len(chunk)
            if received > settings.max_upload_bytes:
                await commit()
                return problem(
                    413,
                    "body_too_large",
                    f"body above {settings.max_upload_bytes} bytes; frames before it are stored",
                    extra=_answer(tally),
                )
            for seq, flags, pts_us, payload, crc, verdict in decoder.feed(chunk):
                reason = precheck(seq, verdict, end_seq, next_seq + settings.max_seq_ahead)
                if reason is not None:
                    tally.reject(seq, reason)
                    continue
                assert payload is not None  # only too-large frames come without payload
                batch.append(FrameIn(session_id, seq, flags, pts_us, crc, payload))
                batch_bytes += len(payload)
            # Bounded memory: commit as the body streams in rather than at its end.
            if batch_bytes >= settings.window_bytes:
                await commit()
        decoder.finish()
    except _native.FrameError as exc:
        await commit()
        return problem(
            400,
            exc.kind,
            f"{exc}; frames before offset {exc.offset} were handled as reported",
            extra=_answer(tally),
        )
    await commit()
    if tally.gone:
        raise ApiError(410, "gone", "session archived or deleted: it takes no frames")
    return Response(_answer(tally), status_code=200)
