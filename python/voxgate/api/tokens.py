"""Stream tokens (PROTOCOL section 5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, post
from litestar.params import FromPath, JSONBody

from voxgate.api.auth import require_api_key
from voxgate.api.problems import problem_responses
from voxgate.api.ratelimit import rate_limited
from voxgate.api.sessions import owned_session, runtime_of, strict_body
from voxgate.errors import ApiError
from voxgate.rates import TOKENS


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    ttl_s: int | None = None


class TokenResponse(msgspec.Struct):
    token: str
    expires_at: datetime
    ttl_s: int


@post(
    "/v1/sessions/{session_id:str}/tokens",
    guards=[require_api_key, rate_limited(TOKENS)],
    status_code=201,
    tags=["tokens"],
    responses=problem_responses(400, 401, 404, 410, 413, 422, 429, 503),
)
async def mint_token(
    request: Request[Any, Any, Any],
    session_id: FromPath[str],
    data: JSONBody[TokenRequest | None] = None,
) -> TokenResponse:
    """A single-use stream token bound to the session, valid for ``ttl_s`` seconds."""
    return await issue_token(request, session_id, data, subject=session_id)


async def issue_token(
    request: Request[Any, Any, Any], session_id: str, data: TokenRequest | None, *, subject: str
) -> TokenResponse:
    """Mint a token for ``subject`` (what ``consume`` gives back) on a live session."""
    runtime = runtime_of(request)
    settings = runtime.settings
    data = await strict_body(request, TokenRequest)
    ttl_s = settings.token_ttl_s if data is None or data.ttl_s is None else data.ttl_s
    if not 1 <= ttl_s <= settings.token_max_ttl_s:
        raise ApiError(
            422,
            "ttl_out_of_range",
            f"ttl_s must be between 1 and {settings.token_max_ttl_s}",
        )
    await owned_session(request, session_id)
    minted = await runtime.tokens.mint(subject, ttl_s)
    return TokenResponse(minted.token, minted.expires_at, minted.ttl_s)
