"""The /credits/holds endpoints: reserve credits, then capture what the work cost or release."""

from starlette.requests import Request
from starlette.responses import Response

from api.credits import entry_response, idempotency_key_of
from api.responses import JSONResponse
from api.schemas import (
    CaptureRequest,
    HoldRequest,
    NoQuery,
    ReleaseRequest,
    UserQuery,
    parse_query,
    read_json,
)
from api.state import authenticated
from api.views import CaptureResult, HoldCreated, HoldReleased, HoldsList, hold_view, iso8601


async def create(request: Request) -> Response:
    engine, app = await authenticated(request)
    idempotency_key = idempotency_key_of(request)
    body = await read_json(request, HoldRequest, engine.settings.max_body_bytes)
    result = await engine.holds.create(
        app,
        body.user_id,
        body.amount,
        ttl_seconds=body.ttl_seconds,
        description=body.description,
        reference_id=body.reference_id,
        metadata=body.metadata,
        idempotency_key=idempotency_key,
    )
    answer: HoldCreated = {
        "success": True,
        "hold_id": result.hold.hold_id,
        "user_id": result.hold.user_id,
        "amount": result.hold.amount,
        "expires_at": iso8601(result.hold.expires_at_ms) or "",
        "balance": result.balance,
        "available": result.available,
    }
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return JSONResponse(answer, headers=headers)


async def capture(request: Request) -> Response:
    engine, app = await authenticated(request)
    idempotency_key = idempotency_key_of(request)
    body = await read_json(request, CaptureRequest, engine.settings.max_body_bytes, optional=True)
    result = await engine.holds.capture(
        app,
        request.path_params["hold_id"],
        body.amount,
        description=body.description,
        idempotency_key=idempotency_key,
    )
    held = -(result.held or 0)
    answer: CaptureResult = {
        "success": True,
        "ledger_id": result.ledger_id,
        "balance_before": result.balance_before,
        "balance_after": result.balance_after,
        "hold_id": result.hold_id or "",
        "user_id": result.user_id,
        "captured": -result.amount,
        "released": held + result.amount,
        "available": result.available if result.available is not None else result.balance_after,
    }
    if result.top_up_started:
        answer["auto_top_up_started"] = True
    return entry_response(answer, result)


async def release(request: Request) -> Response:
    engine, app = await authenticated(request)
    idempotency_key = idempotency_key_of(request)
    body = await read_json(request, ReleaseRequest, engine.settings.max_body_bytes, optional=True)
    result = await engine.holds.release(
        app,
        request.path_params["hold_id"],
        description=body.description,
        idempotency_key=idempotency_key,
    )
    answer: HoldReleased = {
        "success": True,
        "hold_id": result.hold_id or "",
        "user_id": result.user_id,
        "ledger_id": result.ledger_id,
        "released": -(result.held or 0),
        "balance": result.balance_after,
        "available": result.available if result.available is not None else result.balance_after,
    }
    return entry_response(answer, result)


async def list_holds(request: Request) -> Response:
    engine, app = await authenticated(request)
    query = parse_query(UserQuery, request.query_params)
    holds = await engine.holds.active(app, query.user_id)
    body: HoldsList = {"user_id": query.user_id, "holds": [hold_view(hold) for hold in holds]}
    return JSONResponse(body)


async def get_hold(request: Request) -> Response:
    engine, app = await authenticated(request)
    parse_query(NoQuery, request.query_params)
    return JSONResponse(hold_view(await engine.holds.get(app, request.path_params["hold_id"])))
