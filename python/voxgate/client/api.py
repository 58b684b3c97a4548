"""Async client for voxgate's management API (docs/api.md), authenticated with an API key."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import httpx

from voxgate.client.errors import ApiError
from voxgate.wire import FRAMES_CONTENT_TYPE

__all__ = ["FRAMES_CONTENT_TYPE", "Api", "TokenFactory"]


TokenFactory = Callable[[], Awaitable[str]]


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"title": response.text or response.reason_phrase, "status": response.status_code}


def _check(response: httpx.Response, *expected: int) -> httpx.Response:
    if response.status_code not in expected:
        raise ApiError.from_problem(response.status_code, _problem(response))
    return response


class Api:
    """Sessions, tokens, missing reports, audio and HTTP upload over HTTP.

    ``base_url`` is the server root (``http://127.0.0.1:8000``), ``api_key`` one
    of the server's ``VOXGATE_API_KEYS``. Every method raises :class:`ApiError`
    on a non-success status and ``httpx.HTTPError`` on transport failures.
    Use as an async context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP connection pool (when this object created it)."""
        if self._own_client:
            await self._client.aclose()

    def _url(self, path: str) -> str:
        # An injected client may have no base_url of its own.
        return f"{self.base_url}{path}"

    async def health(self) -> dict[str, Any]:
        """``GET /health`` (no auth); raises :class:`ApiError` unless 200."""
        response = _check(await self._client.get(self._url("/health")), 200)
        result: dict[str, Any] = response.json()
        return result

    async def create_session(
        self,
        *,
        codec: str | None = None,
        sample_rate: int | None = None,
        channels: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create a session and return it (``id``, ``state``, ...); unset fields take defaults."""
        body: dict[str, Any] = {}
        if codec is not None:
            body["codec"] = codec
        if sample_rate is not None:
            body["sample_rate"] = sample_rate
        if channels is not None:
            body["channels"] = channels
        if metadata is not None:
            body["metadata"] = metadata
        response = await self._client.post(self._url("/v1/sessions"), json=body, headers=self._auth)
        result: dict[str, Any] = _check(response, 201).json()
        return result

    async def get_session(self, session_id: str) -> dict[str, Any]:
        """One session; :class:`ApiError` 404 when unknown, 410 when deleted."""
        response = await self._client.get(
            self._url(f"/v1/sessions/{session_id}"), headers=self._auth
        )
        result: dict[str, Any] = _check(response, 200).json()
        return result

    async def list_sessions(
        self, *, limit: int | None = None, after: str | None = None
    ) -> dict[str, Any]:
        """One page ``{"sessions": [...], "next": id | None}``; pass ``next`` as ``after``."""
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if after is not None:
            params["after"] = after
        response = await self._client.get(
            self._url("/v1/sessions"), params=params, headers=self._auth
        )
        result: dict[str, Any] = _check(response, 200).json()
        return result

    async def delete_session(self, session_id: str) -> None:
        """Delete a session's frames and audio; :class:`ApiError` 404 unknown, 410 already gone."""
        response = await self._client.delete(
            self._url(f"/v1/sessions/{session_id}"), headers=self._auth
        )
        _check(response, 204, 200)

    async def create_token(self, session_id: str, ttl_s: int | None = None) -> dict[str, Any]:
        """Mint a single-use stream token: ``{"token", "expires_at", "ttl_s"}``.

        :class:`ApiError` 422 when ``ttl_s`` is above the server's maximum.
        """
        body: dict[str, Any] = {} if ttl_s is None else {"ttl_s": ttl_s}
        response = await self._client.post(
            self._url(f"/v1/sessions/{session_id}/tokens"), json=body, headers=self._auth
        )
        result: dict[str, Any] = _check(response, 201, 200).json()
        return result

    async def mint_token(self, session_id: str, ttl_s: int | None = None) -> str:
        """Mint a single-use stream token and return just the token string."""
        token: str = (await self.create_token(session_id, ttl_s))["token"]
        return token

    def token_factory(self, session_id: str, ttl_s: int | None = None) -> TokenFactory:
        """A factory minting a fresh token per call, as :class:`StreamClient` wants."""

        async def factory() -> str:
            return await self.mint_token(session_id, ttl_s)

        return factory

    async def missing(self, session_id: str) -> dict[str, Any]:
        """What the server holds: next_seq, missing, frames, bytes, ended, complete."""
        response = await self._client.get(
            self._url(f"/v1/sessions/{session_id}/missing"), headers=self._auth
        )
        result: dict[str, Any] = _check(response, 200).json()
        return result

    async def audio(
        self,
        session_id: str,
        *,
        wav: bool = False,
        allow_gaps: bool = False,
        byte_range: tuple[int, int | None] | None = None,
    ) -> bytes:
        """Stored payloads in seq order (a WAV file for PCM sessions when ``wav``).

        ``byte_range`` is an inclusive ``(first, last)`` (``last`` None: to the
        end). :class:`ApiError` 409 while there are gaps unless ``allow_gaps``.
        """
        params: dict[str, str] = {}
        if wav:
            params["format"] = "wav"
        if allow_gaps:
            params["allow_gaps"] = "true"
        headers = dict(self._auth)
        if byte_range is not None:
            first, last = byte_range
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"
        response = await self._client.get(
            self._url(f"/v1/sessions/{session_id}/audio"), params=params, headers=headers
        )
        return _check(response, 200, 206).content

    async def upload_frames(
        self, session_id: str, token: str, body: bytes | AsyncIterable[bytes]
    ) -> dict[str, Any]:
        """HTTP upload (docs/protocol.md): frames back to back, authenticated by a stream token.

        Returns ``{"acked", "duplicate", "rejected"}`` once every frame is durable
        or refused; :class:`ApiError` 400 for a malformed body, 401/403 for a bad token.
        """
        headers = {"Authorization": f"Bearer {token}", "Content-Type": FRAMES_CONTENT_TYPE}
        response = await self._client.post(
            self._url(f"/v1/sessions/{session_id}/frames"), content=body, headers=headers
        )
        result: dict[str, Any] = _check(response, 200).json()
        return result
