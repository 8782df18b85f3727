"""The /credits endpoints."""

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from api.errors import error_body, status_of
from api.metrics import count_operation
from api.responses import JSONResponse
from api.schemas import (
    AddRequest,
    BatchOperation,
    BatchRequest,
    EntryRequest,
    HistoryQuery,
    RefundRequest,
    UserQuery,
    epoch_ms,
    parse_query,
    read_json,
)
from api.state import authenticated
from api.views import (
    AddResult,
    BatchApplied,
    BatchRefused,
    BatchResult,
    DeductResult,
    HistoryPage,
    RefundResult,
    balance_view,
    entry_view,
    iso8601,
)
from engine.errors import InvalidRequestError, TallyError
from engine.models import MAX_IDEMPOTENCY_KEY, EntryResult, Operation

# A full batch of 1,000 operations with descriptions and metadata.
MAX_BATCH_BYTES = 1_048_576


async def add(request: Request) -> Response:
    result = await _apply_entry(request, "add")
    body: AddResult = {
        "success": True,
        "ledger_id": result.ledger_id,
        "user_id": result.user_id,
        "amount": result.amount,
        "balance_after": result.balance_after,
    }
    if result.expires_at_ms is not None:
        body["grant_id"] = result.ledger_id
        body["expires_at"] = iso8601(result.expires_at_ms) or ""
    return entry_response(body, result)


async def deduct(request: Request) -> Response:
    result = await _apply_entry(request, "deduct")
    body: DeductResult = {
        "success": True,
        "ledger_id": result.ledger_id,
        "balance_before": result.balance_before,
        "balance_after": result.balance_after,
    }
    if result.top_up_started:
        body["auto_top_up_started"] = True
    return entry_response(body, result)


async def batch(request: Request) -> Response:
    engine, app = await authenticated(request)
    if "idempotency-key" in request.headers:
        raise InvalidRequestError(
            "a batch takes no Idempotency-Key header: give each operation its idempotency_key"
        )
    body = await read_json(request, BatchRequest, MAX_BATCH_BYTES)
    operations = [
        Operation(
            kind=op.type,
            user_id=op.user_id,
            amount=op.amount,
            description=op.description,
            reference_id=op.reference_id,
            metadata=op.metadata,
            idempotency_key=op.idempotency_key,
            expires_at_ms=_grant_expiry(index, op),
        )
        for index, op in enumerate(body.operations)
    ]
    outcomes = await engine.credits.batch(app, operations)
    for operation, outcome in zip(operations, outcomes, strict=True):
        count_operation(app.app_id, operation.kind, outcome)
    result: BatchResult = {"success": True, "results": [_outcome(o) for o in outcomes]}
    return JSONResponse(result)


def _grant_expiry(index: int, op: BatchOperation) -> int | None:
    if op.expires_at is None:
        return None
    if op.type != "add":
        raise InvalidRequestError(f"operations[{index}].expires_at applies to adds only")
    return epoch_ms(op.expires_at)


def _outcome(outcome: EntryResult | TallyError) -> BatchApplied | BatchRefused:
    if isinstance(outcome, TallyError):
        return BatchRefused(**error_body(outcome), status=status_of(outcome))
    return {
        "success": True,
        "ledger_id": outcome.ledger_id,
        "user_id": outcome.user_id,
        "amount": outcome.amount,
        "balance_before": outcome.balance_before,
        "balance_after": outcome.balance_after,
        "replayed": outcome.replayed,
    }


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
    try:
        if kind == "deduct":
            body = await read_json(request, EntryRequest, engine.settings.max_body_bytes)
            result = await engine.credits.deduct(
                app, body.user_id, body.amount, description=body.description,
                reference_id=body.reference_id, metadata=body.metadata,
                idempotency_key=idempotency_key,
            )  # fmt: skip
        else:
            grant = await read_json(request, AddRequest, engine.settings.max_body_bytes)
            result = await engine.credits.add(
                app, grant.user_id, grant.amount, description=grant.description,
                reference_id=grant.reference_id, metadata=grant.metadata,
                idempotency_key=idempotency_key,
                expires_at_ms=None if grant.expires_at is None else epoch_ms(grant.expires_at),
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
    key = request.headers.get("idempotency-key")
    if key is not None and not (
        1 <= len(key) <= MAX_IDEMPOTENCY_KEY and key.isascii() and key.isprintable()
    ):
        raise InvalidRequestError(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )
    return key
