"""Transcripts: post, list with paging, and the relay alias existing clients use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.params import Parameter

from voxgate.api.sessions import live_session, runtime_of, strict_body
from voxgate.auth import require_api_key
from voxgate.errors import ApiError, problem_responses
from voxgate.limits import rate_limited
from voxgate.rates import TRANSCRIPTS
from voxgate.store.base import Transcript, TranscriptIn, TranscriptOutcome

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

T = TypeVar("T")

Role = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=65_536)]
Timestamp = int | float | Annotated[str, msgspec.Meta(max_length=64)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


def _no_nul(role: str, text: str, timestamp: object) -> None:
    # PostgreSQL text cannot hold NUL; refuse it on every backend alike.
    if "\x00" in role or "\x00" in text or (isinstance(timestamp, str) and "\x00" in timestamp):
        raise ValueError("role, text and timestamp must not contain NUL characters")


class TranscriptPost(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    text: Text
    is_final: bool
    timestamp: Timestamp
    seq: Seq | None = None

    def __post_init__(self) -> None:
        _no_nul(self.role, self.text, self.timestamp)


class RelayPost(msgspec.Struct):
    """The relay alias's body; fields voxgate does not know are ignored."""

    session_id: str
    role: Role
    text: Text
    is_final: bool
    timestamp: Timestamp

    def __post_init__(self) -> None:
        _no_nul(self.role, self.text, self.timestamp)


class TranscriptPage(msgspec.Struct):
    transcripts: list[Transcript]
    next: int | None


async def add_transcript(runtime: Runtime, session_id: str, entry: TranscriptIn) -> Response[Any]:
    """Store ``entry``: 201 and publish it, 200 for a repeat, 409 for a conflicting final."""
    result = await runtime.store.add_transcript(session_id, entry)
    outcome, transcript = result.outcome, result.transcript
    if outcome is TranscriptOutcome.GONE or transcript is None:
        await live_session(runtime, session_id)  # 404 or 410
        raise ApiError(410, "gone", f"session {session_id} was deleted")
    if outcome is TranscriptOutcome.CONFLICT:
        raise ApiError(
            409,
            "transcript_conflict",
            f"the final transcript of role {entry.role!r} seq {entry.seq} is stored with"
            " another text; finals are never replaced",
            extra={"transcript": msgspec.to_builtins(transcript)},
        )
    if outcome is TranscriptOutcome.STORED:
        runtime.hub.transcript_added(transcript)
        return Response(transcript, status_code=201)
    return Response(transcript, status_code=200)  # DUPLICATE or STALE: the stored final


async def required_body(request: Request[Any, Any, Any], kind: type[T]) -> T:
    body = await strict_body(request, kind)
    if body is None:
        raise ApiError(400, "invalid_body", "the request needs a JSON body")
    return body


@post(
    "/v1/sessions/{session_id:str}/transcripts",
    guards=[require_api_key, rate_limited(TRANSCRIPTS)],
    status_code=201,
    tags=["transcripts"],
    responses=problem_responses(400, 401, 404, 409, 410, 413, 429, 503),
)
async def post_transcript(
    request: Request[Any, Any, Any], session_id: str, data: TranscriptPost
) -> Response[Any]:
    """Append a transcript; an interim is superseded by the next entry of its key."""
    body = await required_body(request, TranscriptPost)
    entry = TranscriptIn(
        role=body.role,
        text=body.text,
        is_final=body.is_final,
        timestamp=body.timestamp,
        seq=body.seq,
    )
    return await add_transcript(runtime_of(request), session_id, entry)


@get(
    "/v1/sessions/{session_id:str}/transcripts",
    guards=[require_api_key],
    tags=["transcripts"],
    responses=problem_responses(400, 401, 404, 410, 503),
)
async def list_transcripts(
    request: Request[Any, Any, Any],
    session_id: str,
    after: int = Parameter(default=0, ge=0),
    limit: int = Parameter(default=100, ge=1, le=1000),
) -> TranscriptPage:
    """Stored transcripts by id; pass ``next`` back as ``after`` for the next page."""
    runtime = runtime_of(request)
    await live_session(runtime, session_id)
    items = await runtime.store.list_transcripts(session_id, after=after, limit=limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return TranscriptPage(items, items[-1].id if more and items else None)


@post(
    "/voice/transcript/relay/{session_id:str}",
    guards=[require_api_key, rate_limited(TRANSCRIPTS)],
    status_code=201,
    tags=["transcripts"],
    responses=problem_responses(400, 401, 404, 409, 410, 413, 422, 429, 503),
)
async def relay_transcript(
    request: Request[Any, Any, Any], session_id: str, data: RelayPost
) -> Response[Any]:
    """The relay endpoint of existing clients: the same as posting a transcript without seq."""
    body = await required_body(request, RelayPost)
    if body.session_id != session_id:
        raise ApiError(
            422,
            "session_mismatch",
            f"body session_id {body.session_id!r} does not match the path's {session_id!r}",
        )
    entry = TranscriptIn(
        role=body.role, text=body.text, is_final=body.is_final, timestamp=body.timestamp
    )
    return await add_transcript(runtime_of(request), session_id, entry)
