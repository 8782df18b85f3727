"""Events out: the app's webhook endpoints, their delivery log, redelivery, and plan usage."""

import time

from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.schemas import Strict, read_json
from api.state import authenticated
from api.views import (
    DeliveriesList,
    Done,
    EndpointCreated,
    EndpointsList,
    Redelivered,
    delivery_view,
    endpoint_view,
    usage_view,
)


class EndpointRequest(Strict):
    """Types only: the rules are the engine's (engine.events.endpoints)."""

    url: str
    # Event types; omitted or ["*"]: every type.
    events: list[str] | None = None


class EndpointPatch(Strict):
    url: str | None = None
    events: list[str] | None = None


async def create_endpoint(request: Request) -> Response:
    engine, app = await authenticated(request)
    body = await read_json(request, EndpointRequest, engine.settings.max_body_bytes)
    endpoint = await engine.bridge.call(engine.endpoints.create, app.app_id, body.url, body.events)
    created: EndpointCreated = {**endpoint_view(endpoint), "secret": endpoint.secret}
    return JSONResponse(created, status_code=201)


async def list_endpoints(request: Request) -> Response:
    engine, app = await authenticated(request)
    endpoints = await engine.bridge.call(engine.endpoints.of_app, app.app_id)
    listed: EndpointsList = {"endpoints": [endpoint_view(e) for e in endpoints]}
    return JSONResponse(listed)


async def update_endpoint(request: Request) -> Response:
    engine, app = await authenticated(request)
    body = await read_json(request, EndpointPatch, engine.settings.max_body_bytes)
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    endpoint = await engine.bridge.call(
        engine.endpoints.update, request.path_params["endpoint_id"], changes, app.app_id
    )
    return JSONResponse(endpoint_view(endpoint))


async def delete_endpoint(request: Request) -> Response:
    engine, app = await authenticated(request)
    endpoint_id = request.path_params["endpoint_id"]
    await engine.bridge.call(engine.endpoints.delete, endpoint_id, app.app_id)
    deleted: Done = {"success": True}
    return JSONResponse(deleted)


async def rotate_secret(request: Request) -> Response:
    engine, app = await authenticated(request)
    endpoint_id = request.path_params["endpoint_id"]
    endpoint = await engine.bridge.call(engine.endpoints.rotate_secret, endpoint_id, app.app_id)
    rotated: EndpointCreated = {**endpoint_view(endpoint), "secret": endpoint.secret}
    return JSONResponse(rotated)


async def deliveries(request: Request) -> Response:
    engine, app = await authenticated(request)
    endpoint = await engine.bridge.call(
        engine.endpoints.get, request.path_params["endpoint_id"], app.app_id
    )
    found = await engine.bridge.call(engine.deliveries.log, endpoint.endpoint_id)
    listed: DeliveriesList = {"deliveries": [delivery_view(d) for d in found]}
    return JSONResponse(listed)


async def redeliver(request: Request) -> Response:
    engine, app = await authenticated(request)
    event_id = request.path_params["event_id"]
    queued = await engine.bridge.call(engine.deliveries.redeliver, event_id, app.app_id)
    answer: Redelivered = {"success": True, "event_id": event_id, "deliveries": len(queued)}
    return JSONResponse(answer)


async def usage(request: Request) -> Response:
    engine, context = await authenticated(request)
    # The plan as stored now, not as the key cache last read it: a plan just changed shows.
    app = await engine.bridge.call(engine.apps.get, context.app_id)
    found = await engine.bridge.call(
        engine.plans.usage,
        app.app_id,
        app.plan_monthly_operations,
        app.plan_max_users,
        time.time_ns() // 1_000_000,
    )
    return JSONResponse(usage_view(found))
