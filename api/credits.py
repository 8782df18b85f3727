"""The /credits endpoints."""

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.batch import apply_batch
from api.metrics import count_operation
from api.responses import JSONResponse
from api.schemas import (
    AddRequest,
    EntryRequest,
    HistoryQuery,
    RefundRequest,
    UserQuery,
    check_json_media_type,
    epoch_ms,
    parse_query,
    read_body,
    read_json,
)
from api.state import authenticated
from api.views import (
    AddResult,
    DeductResult,
    HistoryPage,
    RefundResult,
    balance_view,
    entry_view,
    iso8601,
)
from engine.container import Engine
from engine.errors import InvalidRequestError, TallyError
from engine.models import MAX_IDEMPOTENCY_KEY, AppContext, EntryResult

# A full batch of 1,000 operations with descriptions and metadata.
MAX_BATCH_BYTES = 1_048_576
BATCH_TAKES_NO_KEY = (
    "a batch takes no Idempotency-Key header: give each operation its idempotency_key"
)


async def add(request: Request) -> Response:
    result = await _apply_entry(request, "add")
    return entry_response(entry_body("add", result), result)


async def deduct(request: Request) -> Response:
    result = await _apply_entry(request, "deduct")
    return entry_response(entry_body("deduct", result), result)


def entry_body(kind: str, result: EntryResult) -> AddResult | DeductResult:
    """What an add or a deduct answers."""
    if kind == "deduct":
        deducted: DeductResult = {
            "success": True,
            "ledger_id": result.ledger_id,
            "balance_before": result.balance_before,
            "balance_after": result.balance_after,
        }
        if result.top_up_started:
            deducted["auto_top_up_started"] = True
        return deducted
    added: AddResult = {
        "success": True,
        "ledger_id": result.ledger_id,
        "user_id": result.user_id,
        "amount": result.amount,
        "balance_after": result.balance_after,
    }
    if result.expires_at_ms is not None:
        added["grant_id"] = result.ledger_id
        added["expires_at"] = iso8601(result.expires_at_ms) or ""
    return added


async def batch(request: Request) -> Response:
    engine, app = await authenticated(request)
    if "idempotency-key" in request.headers:
        raise InvalidRequestError(BATCH_TAKES_NO_KEY)
    body = await read_body(request, MAX_BATCH_BYTES)
    check_json_media_type(request.headers.get("content-type"))
    return JSONResponse(await apply_batch(engine, app, body))


async def refund(request: Request) -> Response:
    engine, app = await authenticated(request)
    idempotency_key = idempotency_key_of(request)
    body = await read_json(request, RefundRequest, engine.settings.max_body_bytes)
    try:
        result = await engine.credits.refund(
            app, body.ledger_id, description=body.description, idempotency_key=idempotency_key
        )
    except TallyError as exc:
        count_operation(app.app_id, "refund", exc)
        raise
    count_operation(app.app_id, "refund", result.refund)
    answer: RefundResult = {
        "success": True,
        "ledger_id": result.refund.ledger_id,
        "refunded_ledger_id": result.refunded_ledger_id,
        "user_id": result.refund.user_id,
        "amount": result.refund.amount,
        "balance_after": result.refund.balance_after,
    }
    return entry_response(answer, result.refund)


async def history(request: Request) -> Response:
    engine, app = await authenticated(request)
    query = parse_query(HistoryQuery, request.query_params)
    page = await engine.credits.history(app, query.user_id, query.limit, query.offset)
    body: HistoryPage = {
        "user_id": page.user_id,
        "entries": [entry_view(entry) for entry in page.entries],
        "limit": page.limit,
        "offset": page.offset,
        "has_more": page.has_more,
    }
    return JSONResponse(body)


async def balance(request: Request) -> Response:
    engine, app = await authenticated(request)
    query = parse_query(UserQuery, request.query_params)
    return JSONResponse(balance_view(await engine.credits.balance(app, query.user_id)))


async def _apply_entry(request: Request, kind: str) -> EntryResult:
    engine, app = await authenticated(request)
    idempotency_key = idempotency_key_of(request)
    model = EntryRequest if kind == "deduct" else AddRequest
    body = await read_json(request, model, engine.settings.max_body_bytes)
    return await post_entry(engine, app, kind, body.model_dump(), idempotency_key)


async def post_entry(
    engine: Engine,
    app: AppContext,
    kind: str,
    fields: Mapping[str, Any],
    idempotency_key: str | None,
) -> EntryResult:
    """An add or a deduct of the API, from its checked fields: applied, and counted."""
    try:
        if kind == "deduct":
            result = await engine.credits.deduct(
                app, fields["user_id"], fields["amount"], description=fields.get("description"),
                reference_id=fields.get("reference_id"), metadata=fields.get("metadata"),
                idempotency_key=idempotency_key,
            )  # fmt: skip
        else:
            expires_at = fields.get("expires_at")
            result = await engine.credits.add(
                app, fields["user_id"], fields["amount"], description=fields.get("description"),
                reference_id=fields.get("reference_id"), metadata=fields.get("metadata"),
                idempotency_key=idempotency_key,
                expires_at_ms=None if expires_at is None else epoch_ms(expires_at),
            )  # fmt: skip
    except TallyError as exc:
        count_operation(app.app_id, kind, exc)
        raise
    count_operation(app.app_id, kind, result)
    return result


def entry_response(body: Mapping[str, object], result: EntryResult) -> Response:
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    return JSONResponse(body, headers=headers)


def idempotency_key_of(request: Request) -> str | None:
    return checked_idempotency_key(request.headers.get("idempotency-key"))


def checked_idempotency_key(key: str | None) -> str | None:
    if key is not None and not (
        1 <= len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()
    ):
        raise InvalidRequestError(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    return key
