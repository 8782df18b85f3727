"""Request bodies and query strings, validated strictly, with errors that name the field."""

import json
import re
from collections.abc import Iterable
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import Request

from engine.accounts.apps import SETTING_RULES
from engine.accounts.client_tokens import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS
from engine.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from engine.holds.service import DEFAULT_TTL_SECONDS as DEFAULT_HOLD_TTL_SECONDS
from engine.holds.service import MAX_TTL_SECONDS as MAX_HOLD_TTL_SECONDS
from engine.models import (
    MAX_AMOUNT,
    MAX_DESCRIPTION,
    MAX_IDEMPOTENCY_KEY,
    MAX_REFERENCE_ID,
    MAX_USER_ID,
    text_problem,
)

Model = TypeVar("Model", bound=BaseModel)

MAX_BATCH = 1000
MAX_PAGE = 1000
MAX_OFFSET = 1_000_000

_EXPIRES_AT_RULE = (
    "expires_at must be an ISO 8601 date-time with a time zone, e.g. 2027-01-31T00:00:00Z"
)
_FIELD_RULES = {
    "user_id": f"user_id must be a non-empty string of at most {MAX_USER_ID} characters",
    "amount": f"amount must be an integer from 1 to {MAX_AMOUNT}",
    "description": f"description must be a string of at most {MAX_DESCRIPTION} characters",
    "reference_id": f"reference_id must be a string of at most {MAX_REFERENCE_ID} characters",
    "metadata": "metadata must be a JSON object",
    "ledger_id": "ledger_id must be a UUID string",
    "limit": f"limit must be an integer from 1 to {MAX_PAGE}",
    "offset": f"offset must be an integer from 0 to {MAX_OFFSET}",
    "operations": f"operations must be a list of 1 to {MAX_BATCH} operations",
    "type": 'type must be "add" or "deduct"',
    "idempotency_key": (
        f"idempotency_key must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters"
    ),
    **{name: message for name, (_, message) in SETTING_RULES.items()},
    "credits_enabled": "credits_enabled must be true or false",
    "overdraft_enabled": "overdraft_enabled must be true or false",
    "manual_top_up_available": "manual_top_up_available must be true or false",
    "auto_top_up_available": "auto_top_up_available must be true or false",
    "ttl_seconds": f"ttl_seconds must be an integer from 1 to {MAX_TTL_SECONDS}",
    "expires_at": _EXPIRES_AT_RULE,
    "amount_cents": f"amount_cents must be an integer from 1 to {MAX_AMOUNT}",
    "payment_method_id": "payment_method_id must be a string of 1 to 255 characters",
    "payment_method_ids": "payment_method_ids must be a list of payment method ids",
    "setup_intent_id": "setup_intent_id must be a string of 1 to 255 characters",
    "enabled": "enabled must be true or false",
    "threshold_cents": f"threshold_cents must be an integer from 0 to {MAX_AMOUNT}",
    "purchase_amount_cents": f"purchase_amount_cents must be an integer from 0 to {MAX_AMOUNT}",
}


class Strict(BaseModel):
    # Strict: "10", 10.0 and true are not amounts. Unknown fields are refused, so a typo in an
    # optional field is an error instead of silently dropped data.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _user_id(value: str) -> str:
    problem = text_problem("user_id", value, MAX_USER_ID)
    if problem:
        raise ValueError(problem)
    return value


_UserId = Annotated[str, Field(min_length=1, max_length=MAX_USER_ID), AfterValidator(_user_id)]
_Description = Annotated[str, Field(max_length=MAX_DESCRIPTION)]
# Query values arrive as text: numbers are parsed from it, nothing else is coerced.
_Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, strict=False)]
_Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, strict=False)]
_Id = Annotated[str, Field(min_length=1, max_length=255)]
_Cents = Annotated[int, Field(ge=0, le=MAX_AMOUNT)]


class EntryRequest(Strict):
    user_id: _UserId
    amount: Annotated[int, Field(ge=1, le=MAX_AMOUNT)]
    description: _Description | None = None
    reference_id: Annotated[str, Field(max_length=MAX_REFERENCE_ID)] | None = None
    metadata: dict[str, Any] | None = None


def _expires_at(value: str) -> str:
    epoch_ms(value)
    return value


def epoch_ms(value: str) -> int:
    """An ISO 8601 date-time with its time zone, as epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(_EXPIRES_AT_RULE) from None
    if moment.tzinfo is None:
        raise ValueError(_EXPIRES_AT_RULE)
    return int(moment.timestamp() * 1000)


_ExpiresAt = Annotated[str, Field(max_length=64), AfterValidator(_expires_at)]


class AddRequest(EntryRequest):
    # Credits that expire then (a grant); without it, credits never expire.
    expires_at: _ExpiresAt | None = None


class BatchOperation(EntryRequest):
    type: Literal["add", "deduct"]
    expires_at: _ExpiresAt | None = None  # adds only
    idempotency_key: Annotated[str, Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)] | None = (
        None
    )


class BatchRequest(Strict):
    operations: Annotated[list[BatchOperation], Field(min_length=1, max_length=MAX_BATCH)]


class HoldRequest(Strict):
    user_id: _UserId
    amount: Annotated[int, Field(ge=1, le=MAX_AMOUNT)]
    ttl_seconds: Annotated[int, Field(ge=1, le=MAX_HOLD_TTL_SECONDS)] = DEFAULT_HOLD_TTL_SECONDS
    description: _Description | None = None
    reference_id: Annotated[str, Field(max_length=MAX_REFERENCE_ID)] | None = None
    metadata: dict[str, Any] | None = None


class CaptureRequest(Strict):
    amount: Annotated[int, Field(ge=1, le=MAX_AMOUNT)] | None = None  # default: the whole hold
    description: _Description | None = None


class ReleaseRequest(Strict):
    description: _Description | None = None


class RefundRequest(Strict):
    ledger_id: Annotated[str, Field(min_length=1, max_length=64)]
    description: _Description | None = None


class UserQuery(Strict):
    user_id: _UserId


class HistoryQuery(UserQuery):
    limit: _Limit = 50
    offset: _Offset = 0


class ClientTokenRequest(UserQuery):
    ttl_seconds: Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS)] = DEFAULT_TTL_SECONDS


class NoQuery(Strict):
    pass


class TransactionsQuery(Strict):
    limit: _Limit = 50
    offset: _Offset = 0


class PurchaseRequest(Strict):
    amount_cents: Annotated[int, Field(ge=1, le=MAX_AMOUNT)]
    payment_method_id: _Id
    idempotency_key: _Id


class AddPaymentMethodRequest(Strict):
    setup_intent_id: _Id


class ReorderRequest(Strict):
    payment_method_ids: Annotated[list[_Id], Field(max_length=100)]


class AutoTopUpRequest(Strict):
    enabled: bool
    threshold_cents: _Cents
    purchase_amount_cents: _Cents


class ServerAutoTopUpRequest(AutoTopUpRequest):
    user_id: _UserId


def parse_body(model: type[Model], body: bytes) -> Model:
    if _plain(body):
        # The common body (one flat object, no escapes) is parsed in Rust, several times
        # cheaper; it stands if each field it set is named once in the text, so that no key
        # came twice. Anything else, errors included, takes the exact path below.
        try:
            parsed = model.model_validate_json(body)
        except ValidationError:
            pass
        else:
            for name in parsed.model_fields_set:
                if body.count(_quoted(name)) != 1:
                    break
            else:
                return parsed
    value = parse_json(body)
    if not isinstance(value, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidRequestError(_message(exc)) from None


def plain_json(body: bytes) -> Any:
    """A body without escapes read by orjson, else None. Escapes aside, a key reads as it is
    spelt, so a key given twice (which orjson takes silently) shows in the count of the keys'
    names in the text (names_in): the hot bodies' hand checks rely on it."""
    if b"\\" in body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def names_in(body: bytes, quoted: Iterable[bytes]) -> int:
    return sum(body.count(name) for name in quoted)


def plain_entry(fields: dict[str, Any], known: frozenset[str]) -> bool:
    """Whether the model would take an add's or deduct's fields as they are: the hand check of
    the hot bodies (api.hot, api.batch), which send anything else to the model (metadata and
    expires_at only when null; type is the batch's to check)."""
    get = fields.get
    user_id, amount = get("user_id"), get("amount")
    return (
        type(user_id) is str
        and text_problem("user_id", user_id, MAX_USER_ID) is None
        and type(amount) is int
        and 1 <= amount <= MAX_AMOUNT
        and _text(get("description"), 0, MAX_DESCRIPTION)
        and _text(get("reference_id"), 0, MAX_REFERENCE_ID)
        and _text(get("idempotency_key"), 1, MAX_IDEMPOTENCY_KEY)
        and get("metadata") is None
        and get("expires_at") is None
        and fields.keys() <= known
    )


def _text(value: Any, least: int, most: int) -> bool:
    return value is None or (type(value) is str and least <= len(value) <= most)


def _plain(body: bytes) -> bool:
    return body.count(b"{") == 1 and _NOT_PLAIN.search(body) is None


# What sends a body down the exact path: nesting, escapes, and the literals JSON has not.
_NOT_PLAIN = re.compile(rb"[\[\\]|NaN|Infinity")


@cache
def _quoted(name: str) -> bytes:
    return f'"{name}"'.encode()


async def read_json(
    request: Request, model: type[Model], limit: int, *, optional: bool = False
) -> Model:
    """A write's body: at most `limit` bytes, JSON by its Content-Type, valid for `model`;
    with `optional`, an empty body stands for `{}`."""
    body = await read_body(request, limit)
    if optional and not body.strip():
        return model()
    check_json_media_type(request.headers.get("content-type"))
    return parse_body(model, body)


def check_json_media_type(content_type: str | None) -> None:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaTypeError(
            "send the body as JSON with Content-Type: application/json"
            + (f" (not {media_type})" if media_type else "")
        )


def parse_json(body: bytes) -> Any:
    """JSON as RFC 8259 has it, read strictly: UTF-8, no duplicate keys, no NaN, no lone
    surrogates, at most MAX_DEPTH levels. Python's json module alone takes all of these."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidRequestError(_TOO_DEEP) from None
    # A lone surrogate arrives only as a \u escape (UTF-8 cannot carry one), and a body with
    # few brackets cannot nest deep: most bodies need no walk.
    if b"\\u" in body or body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        _check_tree(value, 1)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequestError(f"body has the key {key!r} more than once")
            seen.add(key)
    return found


def _no_constant(name: str) -> Any:
    raise InvalidRequestError(f"body is not valid JSON: {name} is not a JSON number")


def _check_tree(value: Any, depth: int) -> None:
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise InvalidRequestError(_LONE_SURROGATE)
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise InvalidRequestError(_TOO_DEEP)
        for key in value if isinstance(value, dict) else ():
            if _SURROGATE.search(key):
                raise InvalidRequestError(_LONE_SURROGATE)
        for item in value.values() if isinstance(value, dict) else value:
            _check_tree(item, depth + 1)


MAX_DEPTH = 32
# Made once: json.loads with hooks builds a decoder per call, which cost more than the parse.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
_TOO_DEEP = f"body is nested deeper than {MAX_DEPTH} levels"
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = "body holds a lone surrogate escape (\\ud800 to \\udfff): not Unicode text"


def parse_query(model: type[Model], params: QueryParams) -> Model:
    for name in params:
        if len(params.getlist(name)) > 1:
            raise InvalidRequestError(f"query parameter {name} given more than once")
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise InvalidRequestError(_message(exc, where="query parameter ")) from None


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
    return body


def _message(exc: ValidationError, where: str = "") -> str:
    error = exc.errors()[0]
    if not error["loc"]:
        return "invalid query string" if where else "request body must be a JSON object"
    loc = error["loc"]
    prefix = ""
    if loc[0] == "operations" and len(loc) > 2:  # a field of one operation of a batch
        prefix, loc = f"operations[{loc[1]}].", loc[2:]
    field = str(loc[0])
    if error["type"] == "value_error":  # a rule of our own (text_problem), worded by it
        return prefix + str(error["ctx"]["error"])
    if error["type"] == "missing":
        return f"{where}{prefix}{field} is required"
    if error["type"] == "extra_forbidden":
        return f"unknown {where or 'field '}{prefix}{field}"
    return prefix + _FIELD_RULES.get(field, f"{field} is invalid")


async def read_form(request: Request, limit: int) -> dict[str, str]:
    """A dashboard form's fields: at most `limit` bytes, URL-encoded (a field sent twice: the
    last one counts, as for a checkbox after its hidden default)."""
    body = await read_body(request, limit)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaTypeError("send the form as application/x-www-form-urlencoded")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        raise InvalidRequestError("the form is not valid UTF-8") from None
