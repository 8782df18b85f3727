"""The ASGI application."""

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api import client, config, credits, events, health, holds, metrics, openapi, webhooks
from api.cors import ClientCors
from api.dashboard.routes import routes as dashboard_routes
from api.edge import AccessLog, Edge
from api.errors import HANDLERS
from api.hot import HotRoutes
from api.metrics import FLUSH_SECONDS, RequestMetrics, flush_operations
from engine.container import Engine
from engine.errors import UnavailableError
from engine.settings import Settings
from workers.queue import Jobs


def create_app(settings: Settings | None = None) -> "TallyApp":
    """Build the API; settings default to the environment, read here at process entry."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = Engine.build(settings, asyncio.get_running_loop())
        app.state.engine = engine
        app.state.jobs = Jobs(engine.raw_redis)
        # Everything alive now lives as long as the process: keep it out of the cyclic
        # collector's sight, whose full passes over it were the API's p99 (bench/).
        gc.collect()
        gc.freeze()
        counting = asyncio.create_task(_count_refusals(engine))
        flushing = asyncio.create_task(_flush_operations())
        try:
            yield
        finally:
            counting.cancel()
            flushing.cancel()
            flush_operations()
            await _save_refusals(engine)
            await engine.aclose()

    routes = [
        Route("/credits/add", credits.add, methods=["POST"]),
        Route("/credits/deduct", credits.deduct, methods=["POST"]),
        Route("/credits/refund", credits.refund, methods=["POST"]),
        Route("/credits/batch", credits.batch, methods=["POST"]),
        Route("/credits/balance", credits.balance, methods=["GET"]),
        Route("/credits/history", credits.history, methods=["GET"]),
        Route("/credits/holds", holds.create, methods=["POST"]),
        Route("/credits/holds", holds.list_holds, methods=["GET"]),
        Route("/credits/holds/{hold_id}", holds.get_hold, methods=["GET"]),
        Route("/credits/holds/{hold_id}/capture", holds.capture, methods=["POST"]),
        Route("/credits/holds/{hold_id}/release", holds.release, methods=["POST"]),
        Route("/credits/config", config.get_config, methods=["GET"]),
        Route("/credits/config", config.patch_config, methods=["PATCH"]),
        Route("/credits/auto-top-up", client.get_server_auto_top_up, methods=["GET"]),
        Route("/credits/auto-top-up", client.put_server_auto_top_up, methods=["PUT"]),
        Route("/client-tokens", client.create_token, methods=["POST"]),
        Route("/client-tokens/revoke", client.revoke_tokens, methods=["POST"]),
        Route("/client/balance", client.balance, methods=["GET"]),
        Route("/client/transactions", client.transactions, methods=["GET"]),
        Route("/client/config", client.config, methods=["GET"]),
        Route("/client/payment-methods", client.payment_methods, methods=["GET"]),
        Route("/client/payment-methods", client.add_payment_method, methods=["POST"]),
        Route("/client/payment-methods/setup-intent", client.setup_intent, methods=["POST"]),
        Route("/client/payment-methods/order", client.reorder_payment_methods, methods=["PUT"]),
        Route(
            "/client/payment-methods/{payment_method_id}",
            client.delete_payment_method,
            methods=["DELETE"],
        ),
        Route("/client/purchases", client.purchase, methods=["POST"]),
        Route("/client/auto-top-up", client.get_auto_top_up, methods=["GET"]),
        Route("/client/auto-top-up", client.put_auto_top_up, methods=["PUT"]),
        Route("/webhook-endpoints", events.create_endpoint, methods=["POST"]),
        Route("/webhook-endpoints", events.list_endpoints, methods=["GET"]),
        Route("/webhook-endpoints/{endpoint_id}", events.update_endpoint, methods=["PATCH"]),
        Route("/webhook-endpoints/{endpoint_id}", events.delete_endpoint, methods=["DELETE"]),
        Route(
            "/webhook-endpoints/{endpoint_id}/rotate-secret",
            events.rotate_secret,
            methods=["POST"],
        ),
        Route("/webhook-endpoints/{endpoint_id}/deliveries", events.deliveries, methods=["GET"]),
        Route("/events/{event_id}/redeliver", events.redeliver, methods=["POST"]),
        Route("/usage", events.usage, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
        Route("/webhooks/{provider}/{app_id}", webhooks.receive, methods=["POST"]),
        *dashboard_routes(),
    ]
    # The timing outermost, to count every answer; then CORS: a browser can read every answer
    # it grants, the edge's refusals too.
    middleware = [Middleware(RequestMetrics), Middleware(ClientCors), Middleware(Edge)]
    if settings.access_log:
        middleware.append(Middleware(AccessLog))
    app = TallyApp(
        routes=routes,
        middleware=middleware,
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    app.hot = HotRoutes(settings.access_log)
    return app


class TallyApp(Starlette):
    """Starlette, with the hot routes answered on their lean path (api.hot) before it."""

    hot: HotRoutes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.hot.routes.get((scope["method"], scope["path"]))
            if route is not None:
                await self.hot.serve(self.state.engine, route, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


# Refused deducts, counted in memory on the hot path, reach PostgreSQL this often: what a
# crash loses is a few seconds of a chart, never an entry.
_REFUSALS_SECONDS = 5.0


async def _flush_operations() -> None:
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        flush_operations()


async def _count_refusals(engine: Engine) -> None:
    while True:
        await asyncio.sleep(_REFUSALS_SECONDS)
        await _save_refusals(engine)


async def _save_refusals(engine: Engine) -> None:
    counts = engine.credits.refusals.take()
    if not counts:
        return
    try:
        await engine.bridge.call(engine.summaries.add_refusals, counts)
    except UnavailableError:
        # PostgreSQL is away: keep the counts for the next round.
        engine.credits.refusals.restore(counts)
