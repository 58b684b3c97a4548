"""The browser client, served by voxgate itself: ``/client/voxgate.js``, its AudioWorklet
processor and a demo page at ``/client/``.

The files live in the package (``voxgate/client/web/``, shipped in the wheel) and are
read once at import. No authentication: they hold no secret. Each answer carries an
ETag (a hash of the content) and ``Cache-Control``; a request whose ``If-None-Match``
names the current ETag gets ``304`` without a body.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from litestar import Request, Response, Router, get
from litestar.response import Redirect

# The SDK may change with a server upgrade: browsers re-check after five minutes.
_SCRIPT_CACHE = "public, max-age=300"
# The page is small and revalidated on every load.
_PAGE_CACHE = "no-cache"
_JAVASCRIPT = "text/javascript"  # Litestar adds the charset


@dataclass(frozen=True, slots=True)
class Asset:
    """One served file: its bytes, content type, strong ETag and caching policy."""

    body: bytes
    media_type: str
    etag: str
    cache_control: str


def _asset(name: str, media_type: str, cache_control: str) -> Asset:
    body = files("voxgate.client").joinpath("web", name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, media_type, etag, cache_control)


SDK = _asset("voxgate.js", _JAVASCRIPT, _SCRIPT_CACHE)
WORKLET = _asset("voxgate-worklet.js", _JAVASCRIPT, _SCRIPT_CACHE)
DEMO_PAGE = _asset("index.html", "text/html", _PAGE_CACHE)


def _not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` (a list of ETags, weak ones too, or ``*``) names ``etag``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _serve(request: Request[Any, Any, Any], asset: Asset) -> Response[bytes]:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": asset.cache_control,
        "X-Content-Type-Options": "nosniff",
    }
    if _not_modified(request.headers.get("if-none-match"), asset.etag):
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@get("/voxgate.js", include_in_schema=False, sync_to_thread=False)
def sdk(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The browser SDK, an ES module."""
    return _serve(request, SDK)


@get("/voxgate-worklet.js", include_in_schema=False, sync_to_thread=False)
def worklet(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The AudioWorklet processor ``captureMicrophone`` loads."""
    return _serve(request, WORKLET)


@get("/", include_in_schema=False, sync_to_thread=False)
def demo(request: Request[Any, Any, Any]) -> Response[bytes] | Redirect:
    """The demo page; ``/client`` redirects to ``/client/`` so its relative imports resolve."""
    # Routing ignores a trailing slash; the raw path still tells them apart.
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
    if not raw_path.endswith(b"/"):
        return Redirect(path="/client/", status_code=308)
    return _serve(request, DEMO_PAGE)


client_router = Router(path="/client", route_handlers=[sdk, worklet, demo])
