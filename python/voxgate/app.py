"""``create_app(settings) -> Litestar``: the one place the application is assembled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig

from voxgate import logs, metrics
from voxgate.api.archive_download import download_archive
from voxgate.api.audio import audio, missing
from voxgate.api.auth import check_origin
from voxgate.api.client import client_router
from voxgate.api.health import health, ready
from voxgate.api.listen import events, listen, mint_listen_token
from voxgate.api.openapi import openapi_config
from voxgate.api.problems import EXCEPTION_HANDLERS
from voxgate.api.prometheus import prometheus_metrics
from voxgate.api.sessions import SessionController, refuse_deep_json
from voxgate.api.stats import stats
from voxgate.api.storage import storage
from voxgate.api.stream import stream
from voxgate.api.tokens import mint_token
from voxgate.api.transcripts import list_transcripts, post_transcript, relay_transcript
from voxgate.api.twilio import twilio_stream
from voxgate.api.upload import upload
from voxgate.observe import Observed
from voxgate.runtime import Runtime
from voxgate.settings import Settings


def create_app(settings: Settings) -> Litestar:
    """The voxgate ASGI application for ``settings``."""
    logs.configure(settings.log_level, secrets=[k.secret for k in settings.configured_keys()])

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        runtime = Runtime(settings)
        app.state.runtime = runtime
        logs.register_secrets([key.secret for key in runtime.api_keys])
        await runtime.start()
        sampler = asyncio.create_task(runtime.sample_metrics())
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await runtime.stop()
            metrics.worker_exited(settings.metrics_dir)

    app = Litestar(
        route_handlers=[
            health,
            ready,
            prometheus_metrics,
            SessionController,
            mint_token,
            missing,
            audio,
            upload,
            stream,
            twilio_stream,
            stats,
            *(post_transcript, list_transcripts, relay_transcript),
            *(events, listen, mint_listen_token),
            download_archive,
            storage,
            client_router,
        ],
        lifespan=[lifespan],
        guards=[check_origin],
        before_request=refuse_deep_json,
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=CORSConfig(
            allow_origins=list(settings.cors_origins),
            # Browsers may read these: the request id, and what a 429 says about retrying.
            expose_headers=[
                "X-Request-ID",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "RateLimit-Policy",
            ],
        ),
        openapi_config=openapi_config(settings),
        request_max_body_size=1024 * 1024,
        logging_config=None,  # voxgate.logs configures logging: JSON lines
    )
    return app


def app_from_env() -> Observed:
    """Granian's factory target: settings from ``VOXGATE_*``, behind request ids and metrics."""
    settings = Settings.from_env()
    return Observed(create_app(settings), settings)
