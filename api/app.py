"""The ASGI application."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route

from api import config, credits, health, webhooks
from api.errors import HANDLERS
from api.services import Services
from engine.settings import Settings


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the API; settings default to the environment, read here at process entry."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.services = Services.start(settings)
        # Everything alive now lives as long as the process: keep it out of the cyclic
        # collector's sight, whose full passes over it were the API's p99 (bench/).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.services.close()

    routes = [
        Route("/credits/add", credits.add, methods=["POST"]),
        Route("/credits/deduct", credits.deduct, methods=["POST"]),
        Route("/credits/refund", credits.refund, methods=["POST"]),
        Route("/credits/batch", credits.batch, methods=["POST"]),
        Route("/credits/balance", credits.balance, methods=["GET"]),
        Route("/credits/history", credits.history, methods=["GET"]),
        Route("/credits/config", config.get_config, methods=["GET"]),
        Route("/credits/config", config.patch_config, methods=["PATCH"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/webhooks/{provider}/{app_id}", webhooks.receive, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers=HANDLERS, lifespan=lifespan)
