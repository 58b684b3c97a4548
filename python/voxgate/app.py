"""``create_app(settings) -> Litestar``: the one place the application is assembled."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig

from voxgate.api.archive import download_archive
from voxgate.api.audio import audio, missing
from voxgate.api.health import health, ready
from voxgate.api.sessions import SessionController
from voxgate.api.storage import storage
from voxgate.api.tokens import mint_token
from voxgate.errors import EXCEPTION_HANDLERS
from voxgate.ingest.stream import stream
from voxgate.ingest.upload import upload
from voxgate.runtime import Runtime
from voxgate.settings import Settings


def create_app(settings: Settings) -> Litestar:
    """The voxgate ASGI application for ``settings``."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return Litestar(
        route_handlers=[
            health,
            ready,
            SessionController,
            mint_token,
            missing,
            audio,
            upload,
            stream,
            download_archive,
            storage,
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins)),
        openapi_config=OpenAPIConfig(title="voxgate", version="1"),
        request_max_body_size=1024 * 1024,
    )


def app_from_env() -> Litestar:
    """Granian's factory target: settings from ``VOXGATE_*``."""
    return create_app(Settings.from_env())
