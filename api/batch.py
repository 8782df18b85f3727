"""POST /credits/batch after its request is authenticated and its body read: the body checked,
the operations applied, the answer built. Starlette's route (api.credits.batch) and the lean
path (api.hot) both end here.

A batch is up to 1,000 operations, so what one costs in Python counts a thousand times: the
common body (plain adds and deducts, no escapes, no metadata, no grants) is read with orjson and
checked by hand; every other body, and every body the hand checks refuse, takes the pydantic
model (api.schemas.BatchRequest), whose errors are the API's. So an invalid body is always
refused with the model's own message (tests/test_batch_parse.py compares the two paths).
"""

from api.errors import error_body, status_of
from api.metrics import count_operation
from api.schemas import (
    MAX_BATCH,
    BatchOperation,
    BatchRequest,
    epoch_ms,
    names_in,
    parse_body,
    plain_entry,
    plain_json,
)
from api.views import BatchApplied, BatchRefused, BatchResult
from engine.container import Engine
from engine.errors import InvalidRequestError, TallyError
from engine.models import (
    AppContext,
    EntryResult,
    Operation,
)

_TYPES = ("add", "deduct")  # a tuple: `in` compares, and never hashes a list or a dict
# Every field an operation may have; the hand checks take those that are null or absent in all
# but the commonest operations (metadata, expires_at) only when null.
_FIELDS = (
    "type", "user_id", "amount", "description", "reference_id", "idempotency_key", "metadata",
    "expires_at",
)  # fmt: skip
_QUOTED = [f'"{name}"'.encode() for name in (*_FIELDS, "operations")]


async def apply_batch(engine: Engine, app: AppContext, body: bytes) -> BatchResult:
    """The answer to a batch whose request is authenticated and whose body is read (and known
    to be JSON by its Content-Type): every operation applied or refused on its own."""
    operations = parse_operations(body)
    outcomes = await engine.credits.batch(app, operations)
    app_id = app.app_id
    for operation, outcome in zip(operations, outcomes, strict=True):
        count_operation(app_id, operation.kind, outcome)
    return {"success": True, "results": [_outcome(o) for o in outcomes]}


def parse_operations(body: bytes) -> list[Operation]:
    """The batch's operations; InvalidRequestError, worded as the model words it, for a body
    that is not a valid batch."""
    operations = _plain_operations(body)
    return model_operations(body) if operations is None else operations


def model_operations(body: bytes) -> list[Operation]:
    """parse_operations by the model alone: any body, at pydantic's pace."""
    request = parse_body(BatchRequest, body)
    return [
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
        for index, op in enumerate(request.operations)
    ]


def _plain_operations(body: bytes) -> list[Operation] | None:
    """The operations of a body every operation of which the hand checks accept, else None
    (the model decides)."""
    value = plain_json(body)
    if type(value) is not dict or len(value) != 1:
        return None
    ops = value.get("operations")
    if type(ops) is not list or not 1 <= len(ops) <= MAX_BATCH:
        return None
    operations = []
    keys = 1
    for op in ops:
        if type(op) is not dict or op.get("type") not in _TYPES or not plain_entry(op, _KNOWN):
            return None
        get = op.get
        operations.append(Operation(
            op["type"], op["user_id"], op["amount"], get("description"), get("reference_id"),
            None, get("idempotency_key"),
        ))  # fmt: skip
        keys += len(op)
    if names_in(body, _QUOTED) != keys:
        return None  # a key twice, or a string that reads as a key's name: the model decides
    return operations


_KNOWN = frozenset(_FIELDS)


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
