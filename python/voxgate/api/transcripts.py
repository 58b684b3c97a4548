"""Transcripts: post, list with paging, and the relay alias existing clients use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from voxgate.api.auth import require_api_key
from voxgate.api.problems import PROBLEM_JSON, Problem, problem_responses
from voxgate.api.ratelimit import rate_limited
from voxgate.api.sessions import live_session, owned_session, runtime_of, strict_body
from voxgate.errors import ApiError
from voxgate.rates import TRANSCRIPTS
from voxgate.store.base import Transcript, TranscriptIn, TranscriptOutcome

if TYPE_CHECKING:
    from voxgate.runtime import Runtime

T = TypeVar("T")

# PostgreSQL text cannot hold NUL: refused on every backend alike.
NO_NUL = "^[^\\x00]*$"
Role = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=NO_NUL)]
Text = Annotated[str, msgspec.Meta(max_length=65_536, pattern=NO_NUL)]
Timestamp = int | float | Annotated[str, msgspec.Meta(max_length=64, pattern=NO_NUL)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class TranscriptPost(msgspec.Struct, forbid_unknown_fields=True):
    role: Role
    text: Text
    is_final: bool
    timestamp: Timestamp
    seq: Seq | None = None


class RelayPost(msgspec.Struct):
    """The relay alias's body; fields voxgate does not know are ignored."""

    session_id: str
    role: Role
    text: Text
    is_final: bool
    timestamp: Timestamp


class TranscriptPage(msgspec.Struct):
    transcripts: list[Transcript]
    next: int | None


# The answers of the two POST routes besides 201, for the OpenAPI schema.
_POST_RESPONSES: dict[int, ResponseSpec] = {
    200: ResponseSpec(
        data_container=Transcript,
        description="A repeat: the key's final is stored already (same text, or a late interim)",
        generate_examples=False,
    ),
    **problem_responses(400, 401, 404, 410, 413, 429, 503),
    409: ResponseSpec(
        data_container=Problem,
        description="A final with another text is stored for this key (transcript: the final)",
        media_type=PROBLEM_JSON,
        generate_examples=False,
    ),
}


async def add_transcript(
    runtime: Runtime, session_id: str, entry: TranscriptIn
) -> Response[Transcript]:
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
    responses=_POST_RESPONSES,
)
async def post_transcript(
    request: Request[Any, Any, Any], session_id: FromPath[str], data: JSONBody[TranscriptPost]
) -> Response[Transcript]:
    """Append a transcript; an interim is superseded by the next entry of its key."""
    body = await required_body(request, TranscriptPost)
    await owned_session(request, session_id)
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
    session_id: FromPath[str],
    # 2**53 - 1: exact as a JSON number, so the schema's bound is the one enforced.
    after: Annotated[int, QueryParameter(ge=0, le=(1 << 53) - 1)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
) -> TranscriptPage:
    """Stored transcripts by id; pass ``next`` back as ``after`` for the next page."""
    runtime = runtime_of(request)
    await owned_session(request, session_id)
    items = await runtime.store.list_transcripts(session_id, after=after, limit=limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return TranscriptPage(items, items[-1].id if more and items else None)


@post(
    "/voice/transcript/relay/{session_id:str}",
    guards=[require_api_key, rate_limited(TRANSCRIPTS)],
    status_code=201,
    tags=["transcripts"],
    responses={
        **_POST_RESPONSES,
        422: ResponseSpec(
            data_container=Problem,
            description="The body's session_id is not the path's",
            media_type=PROBLEM_JSON,
            generate_examples=False,
        ),
    },
)
async def relay_transcript(
    request: Request[Any, Any, Any], session_id: FromPath[str], data: JSONBody[RelayPost]
) -> Response[Transcript]:
    """The relay endpoint of existing clients: the same as posting a transcript without seq."""
    body = await required_body(request, RelayPost)
    if body.session_id != session_id:
        raise ApiError(
            422,
            "session_mismatch",
            f"body session_id {body.session_id!r} does not match the path's {session_id!r}",
        )
    await owned_session(request, session_id)
    entry = TranscriptIn(
        role=body.role, text=body.text, is_final=body.is_final, timestamp=body.timestamp
    )
    return await add_transcript(runtime_of(request), session_id, entry)
