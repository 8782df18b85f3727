"""GET /openapi.json: the API described as OpenAPI 3.1, generated from the routes, the request
models the API validates with (api/schemas.py) and the body types its views are held to
(api/views.py). `tally openapi` prints it; docs/openapi.json is a copy."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api import client, config, credits, events, health, holds, metrics, webhooks
from api.config import ConfigPatch
from api.events import EndpointPatch, EndpointRequest
from api.responses import JSONResponse
from api.schemas import (
    AddPaymentMethodRequest,
    AddRequest,
    AutoTopUpRequest,
    BatchRequest,
    CaptureRequest,
    ClientTokenRequest,
    EntryRequest,
    HistoryQuery,
    HoldRequest,
    PurchaseRequest,
    RefundRequest,
    ReleaseRequest,
    ReorderRequest,
    ServerAutoTopUpRequest,
    TransactionsQuery,
    UserQuery,
)
from api.views import (
    AddResult,
    BalanceView,
    BatchResult,
    CaptureResult,
    CardDeleted,
    CardsView,
    CardView,
    ClientTokenView,
    ConfigView,
    DeductResult,
    DeliveriesList,
    Done,
    EndpointCreated,
    EndpointsList,
    EndpointView,
    ErrorBody,
    HealthView,
    HistoryPage,
    HoldCreated,
    HoldReleased,
    HoldsList,
    HoldView,
    PurchaseView,
    ReadyView,
    Redelivered,
    RefundResult,
    SetupIntentView,
    TopUpView,
    TransactionsPage,
    UsageView,
    WebhookReceipt,
)
from engine.models import MAX_IDEMPOTENCY_KEY

Auth = Literal["api_key", "client_token"] | None

_ERRORS = {
    400: "The request breaks an input rule; `error` names it (docs/api.md#input-rules)",
    401: "No valid credentials",
    402: "Not enough credits, the card was declined, or the app's plan limit is reached"
    " (`limit`, `used`, `allowed`)",
    403: "Authenticated, but not allowed (a setting of the app, an origin, the wrong token)",
    404: "Nothing by that id",
    409: "Conflicts with what happened before (already refunded; a hold settled or expired)",
    413: "The body is too large",
    415: "The body is not `Content-Type: application/json`",
    422: "The Idempotency-Key was used before with a different request",
    429: "Over the API key's rate limit, or the user's (client tokens): retry after `Retry-After`"
    " seconds",
    502: "The payment provider failed or refused the request",
    503: "Redis or PostgreSQL is unavailable: retry after `Retry-After` seconds",
}


# On every answer to a caller with a rate limit (IETF draft-ietf-httpapi-ratelimit-headers-06),
# described on the successes and the 429.
_RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {"schema": {"type": "string"}, "description": "The burst: twice the rate"},
    "RateLimit-Remaining": {
        "schema": {"type": "string"},
        "description": "Requests left now (an estimate when several API processes share it)",
    },
    "RateLimit-Reset": {
        "schema": {"type": "string"},
        "description": "Seconds until all of the burst is back",
    },
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    429: {
        "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"},
        **_RATE_LIMIT_HEADERS,
    },
    503: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"}},
}


@dataclass(frozen=True, slots=True)
class Doc:
    """What one operation takes and answers, beyond the input rules every one follows."""

    summary: str
    answers: dict[int, Any]  # status -> body type
    auth: Auth = "api_key"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    idempotent: bool = False  # takes an Idempotency-Key header
    replays: bool = False  # answers a repeated key with the first answer (header or body key)
    errors: tuple[int, ...] = ()
    path: dict[str, str] = field(default_factory=dict)  # path parameter -> description
    media_type: str = "application/json"  # of the answers in `answers`


async def openapi(request: Request) -> Response:
    state = request.app.state
    if not hasattr(state, "openapi"):
        state.openapi = document(request.app.routes)  # the same for the process's lifetime
    return JSONResponse(state.openapi)


_HOLD_ID = "the hold's id, as POST /credits/holds answered it"
_ENDPOINT = "the endpoint's id (we_...), as POST /webhook-endpoints answered it"

DOCS: dict[Callable[..., Any], Doc] = {
    credits.add: Doc(
        "Add credits to a user's balance (creates the user); with expires_at they are a grant",
        {200: AddResult}, body=AddRequest, idempotent=True, errors=(402, 409),
    ),
    credits.deduct: Doc(
        "Deduct credits atomically; 402 and nothing written when the balance is short",
        {200: DeductResult}, body=EntryRequest, idempotent=True, errors=(402,),
    ),
    credits.refund: Doc(
        "Reverse an entry by its ledger id",
        {200: RefundResult}, body=RefundRequest, idempotent=True, errors=(404, 409),
    ),
    credits.batch: Doc(
        "Up to 1000 adds and deducts; each operation has its own outcome and idempotency_key",
        {200: BatchResult}, body=BatchRequest,
    ),
    credits.balance: Doc("A user's balance, what holds keep of it, and its grants",
                         {200: BalanceView}, query=UserQuery),
    holds.create: Doc(
        "Hold credits for work whose cost is known only afterwards; 402 when available is short",
        {200: HoldCreated}, body=HoldRequest, idempotent=True, errors=(402, 409),
    ),
    holds.list_holds: Doc("A user's active holds, soonest expiry first", {200: HoldsList},
                          query=UserQuery),
    holds.get_hold: Doc("One hold, active or settled", {200: HoldView}, errors=(404,),
                        path={"hold_id": _HOLD_ID}),
    holds.capture: Doc(
        "Spend amount of the hold (default: all of it) and release the rest, as one deduct",
        {200: CaptureResult}, body=CaptureRequest, idempotent=True, errors=(404, 409),
        path={"hold_id": _HOLD_ID},
    ),
    holds.release: Doc(
        "Release the whole hold", {200: HoldReleased}, body=ReleaseRequest, idempotent=True,
        errors=(404, 409), path={"hold_id": _HOLD_ID},
    ),
    credits.history: Doc("A user's ledger entries, newest first", {200: HistoryPage},
                         query=HistoryQuery),
    config.get_config: Doc("The app's credits configuration", {200: ConfigView}),
    config.patch_config: Doc("Change the app's credits configuration", {200: ConfigView},
                             body=ConfigPatch),
    client.get_server_auto_top_up: Doc("A user's auto top-up", {200: TopUpView}, query=UserQuery,
                                       errors=(403,)),
    client.put_server_auto_top_up: Doc("Set a user's auto top-up", {200: TopUpView},
                                       body=ServerAutoTopUpRequest, errors=(403, 502)),
    client.create_token: Doc("Mint a client token for one user's browser",
                             {200: ClientTokenView}, body=ClientTokenRequest),
    client.revoke_tokens: Doc("Revoke every client token of the app", {200: Done}),
    client.balance: Doc("The user's balance", {200: BalanceView}, auth="client_token",
                        errors=(403,)),
    client.transactions: Doc("The user's transactions, newest first", {200: TransactionsPage},
                             auth="client_token", query=TransactionsQuery, errors=(403,)),
    client.config: Doc("The app's credits configuration", {200: ConfigView},
                       auth="client_token", errors=(403,)),
    client.payment_methods: Doc("The user's stored cards, first charged first", {200: CardsView},
                                auth="client_token", errors=(403, 502)),
    client.add_payment_method: Doc(
        "Store the card of a SetupIntent the browser confirmed", {201: CardView},
        auth="client_token", body=AddPaymentMethodRequest, errors=(402, 403, 404, 502),
    ),
    client.setup_intent: Doc("A SetupIntent for Stripe.js to save a card with",
                             {200: SetupIntentView}, auth="client_token", errors=(403, 502)),
    client.reorder_payment_methods: Doc(
        "Set the order cards are charged in", {200: CardsView}, auth="client_token",
        body=ReorderRequest, errors=(403, 502),
    ),
    client.delete_payment_method: Doc(
        "Remove a stored card", {200: CardDeleted}, auth="client_token", errors=(403, 404, 502),
        path={"payment_method_id": "the card's id, as GET /client/payment-methods lists it"},
    ),
    client.purchase: Doc(
        "Buy credits with a stored card (202: the card holder must authenticate first)",
        {200: PurchaseView, 202: PurchaseView}, auth="client_token", body=PurchaseRequest,
        replays=True, errors=(402, 403, 404, 409, 422, 502),
    ),
    client.get_auto_top_up: Doc("The user's auto top-up", {200: TopUpView},
                                auth="client_token", errors=(403,)),
    client.put_auto_top_up: Doc("Set the user's auto top-up", {200: TopUpView},
                                auth="client_token", body=AutoTopUpRequest, errors=(403, 502)),
    events.create_endpoint: Doc(
        "Send the app's events to a URL; the answer has its signing secret, shown once",
        {201: EndpointCreated}, body=EndpointRequest,
    ),
    events.list_endpoints: Doc("The app's webhook endpoints", {200: EndpointsList}),
    events.update_endpoint: Doc("Change an endpoint's url or events", {200: EndpointView},
                                body=EndpointPatch, errors=(404,), path={"endpoint_id": _ENDPOINT}),
    events.delete_endpoint: Doc("Stop sending events to an endpoint", {200: Done},
                                errors=(404,), path={"endpoint_id": _ENDPOINT}),
    events.rotate_secret: Doc(
        "A new signing secret (shown once); the previous one also signs for 24 hours",
        {200: EndpointCreated}, errors=(404,), path={"endpoint_id": _ENDPOINT},
    ),
    events.deliveries: Doc("An endpoint's deliveries, newest first", {200: DeliveriesList},
                           errors=(404,), path={"endpoint_id": _ENDPOINT}),
    events.redeliver: Doc("Send an event again to each endpoint it was for", {200: Redelivered},
                          errors=(404,), path={"event_id": "the event's id (webhook-id, evt_...)"}),
    events.usage: Doc("This month's operations and the app's users, against its plan",
                      {200: UsageView}),
    health.healthz: Doc("Whether this process can serve the hot path",
                        {200: HealthView, 503: HealthView}, auth=None),
    health.readyz: Doc("Whether a load balancer should send this process requests: Redis answers"
                       " and holds every script", {200: ReadyView, 503: ReadyView}, auth=None),
    metrics.metrics: Doc("Prometheus metrics of every process of this API (docs/operations.md)",
                         {200: str}, auth=None, media_type=metrics.MEDIA_TYPE),
    webhooks.receive: Doc(
        "A payment provider's event, signed with the app's webhook secret",
        {200: WebhookReceipt}, auth=None, errors=(404, 413),
        path={"provider": "stripe, polar or lemonsqueezy", "app_id": "the app's id"},
    ),
    openapi: Doc("This document", {200: dict[str, Any]}, auth=None),
}  # fmt: skip


def document(routes: Iterable[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of these routes; a route without a Doc is an error."""
    bodies: list[tuple[str, Literal["validation", "serialization"], TypeAdapter[Any]]] = []
    operations: list[tuple[str, str, Doc]] = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        doc = DOCS[route.endpoint]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            operations.append((route.path, method.lower(), doc))
        if doc.body is not None:
            bodies.append((doc.body.__name__, "validation", TypeAdapter(doc.body)))
        for answer in doc.answers.values():
            bodies.append((_name(answer), "serialization", TypeAdapter(answer)))
    bodies.append(("ErrorBody", "serialization", TypeAdapter(ErrorBody)))
    refs, definitions = TypeAdapter.json_schemas(
        bodies, ref_template="#/components/schemas/{model}"
    )
    schemas = dict(definitions.get("$defs", {}))
    ref = {name: refs[(name, mode)] for name, mode, _ in bodies}

    paths: dict[str, dict[str, Any]] = {}
    for path, method, doc in operations:
        paths.setdefault(path, {})[method] = _operation(path, method, doc, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": "1",
            "description": (
                "Self-hosted credits engine. Input rules: docs/api.md#input-rules. Every route"
                " also answers 405 to a method it does not take and 401 to a request with more"
                " than one Authorization header; /client/ routes answer CORS preflights"
                " (OPTIONS) with 204, or 403 for an origin no app allows."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "api_key": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The app's API key, tally_... (server side only)",
                },
                "client_token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client token, tct_..., minted by POST /client-tokens",
                },
            },
        },
    }


def _operation(path: str, method: str, doc: Doc, ref: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": doc.summary, "operationId": _operation_id(path, method)}
    parameters = [
        {"name": name, "in": "path", "required": True, "description": text,
         "schema": {"type": "string"}}
        for name, text in doc.path.items()
    ]  # fmt: skip
    if doc.query is not None:
        for name, info in doc.query.model_fields.items():
            schema = TypeAdapter(info.annotation or str).json_schema()
            for constraint in info.metadata:
                schema |= _constraint(constraint)
            if info.default is not None and not info.is_required():
                schema["default"] = info.default
            parameters.append(
                {"name": name, "in": "query", "required": info.is_required(), "schema": schema}
            )
    if doc.idempotent:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Retries with the same key return the first answer",
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY,
                           "pattern": "^[\\x20-\\x7e]+$"},
            }
        )  # fmt: skip
    if parameters:
        operation["parameters"] = parameters
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref[doc.body.__name__]}},
        }
    if doc.auth is not None:
        operation["security"] = [{doc.auth: []}]
    headers = {"X-Request-Id": {"schema": {"type": "string"}, "description": "Names the request"}}
    if doc.idempotent or doc.replays:
        headers["Idempotent-Replayed"] = {
            "schema": {"type": "string", "enum": ["true"]},
            "description": "Present when this is the stored answer of an earlier request",
        }
    responses: dict[str, Any] = {}
    for status, answer in sorted(doc.answers.items()):
        responses[str(status)] = {
            "description": "OK" if status < 300 else _ERRORS.get(status, "See the body"),
            "headers": headers | (_RATE_LIMIT_HEADERS if doc.auth and status < 300 else {}),
            "content": {doc.media_type: {"schema": ref[_name(answer)]}},
        }
    for status in _errors(doc):
        extra = _ERROR_HEADERS.get(status, {})
        responses.setdefault(
            str(status),
            {
                "description": _ERRORS[status],
                "headers": headers | extra,
                "content": {"application/json": {"schema": ref["ErrorBody"]}},
            },
        )
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _errors(doc: Doc) -> Iterable[int]:
    if doc.answers.keys() == {200} and doc.auth is None and doc.body is None and not doc.path:
        return ()  # this document: nothing to refuse
    statuses = {400, 503, *doc.errors}
    if doc.auth is not None:
        statuses |= {401, 429}
    if doc.auth == "api_key":
        statuses.add(403)  # a client token where the API key belongs
    if doc.body is not None:
        statuses |= {413, 415}
    if doc.idempotent or doc.replays:
        statuses.add(422)
    return sorted(statuses)


def _constraint(metadata: object) -> dict[str, Any]:
    names = {"ge": "minimum", "le": "maximum", "min_length": "minLength", "max_length": "maxLength"}
    return {
        key: getattr(metadata, attribute)
        for attribute, key in names.items()
        if getattr(metadata, attribute, None) is not None
    }


def _name(answer: Any) -> str:
    return "Document" if answer == dict[str, Any] else str(answer.__name__)


def _operation_id(path: str, method: str) -> str:
    words = path.strip("/").replace("{", "").replace("}", "").replace("-", "_").split("/")
    return "_".join([method, *words]).replace(".", "_")
