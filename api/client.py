"""End-user routes: client tokens (minted by the app's backend) and /client/... (browsers).

A client token acts for one user of one app and reaches only the routes here: that user's
balance, transactions, the credits configuration, stored cards, purchases and auto top-up. It
can never add, deduct or refund (api.auth refuses it on every server route).
"""

from starlette.requests import Request
from starlette.responses import Response

from api.rate_limits import limited
from api.responses import JSONResponse
from api.schemas import (
    AddPaymentMethodRequest,
    AutoTopUpRequest,
    ClientTokenRequest,
    NoQuery,
    PurchaseRequest,
    ReorderRequest,
    ServerAutoTopUpRequest,
    TransactionsQuery,
    UserQuery,
    parse_query,
    read_json,
)
from api.state import authenticated, engine_of
from api.views import (
    CardDeleted,
    CardsView,
    ClientTokenView,
    Done,
    SetupIntentView,
    TransactionsPage,
    TransactionView,
    balance_view,
    card_view,
    cards_view,
    config_view,
    entry_view,
    iso8601,
    purchase_view,
    top_up_view,
)
from engine.accounts import client_tokens
from engine.accounts.auth import ClientSession
from engine.billing.auto_top_up import TopUpSettings
from engine.container import Engine
from engine.errors import AuthenticationError
from engine.models import App

# Server side: the app's API key.


async def create_token(request: Request) -> Response:
    engine = engine_of(request)
    app = await _server_app(request)
    body = await read_json(request, ClientTokenRequest, engine.settings.max_body_bytes)
    secret = app.client_token_secret
    if secret is None:
        secret = await engine.bridge.call(engine.apps.client_token_secret, app)
        engine.app_cache.forget(app.app_id)
    token = client_tokens.mint(app.app_id, secret, body.user_id, body.ttl_seconds)
    expires = client_tokens.read_unverified(token).expires_at
    view: ClientTokenView = {
        "token": token,
        "user_id": body.user_id,
        "expires_at": iso8601(expires * 1000),
    }
    return JSONResponse(view)


async def revoke_tokens(request: Request) -> Response:
    """Rotate the app's signing secret: every client token issued so far stops working."""
    engine = engine_of(request)
    app = await _server_app(request)
    await engine.bridge.call_outside(engine.apps.rotate_client_secret, app.app_id)
    return JSONResponse(Done(success=True))


async def get_server_auto_top_up(request: Request) -> Response:
    engine = engine_of(request)
    app = await _server_app(request)
    query = parse_query(UserQuery, request.query_params)
    return JSONResponse(
        top_up_view(await engine.bridge.call_outside(engine.top_ups.get, app, query.user_id))
    )


async def put_server_auto_top_up(request: Request) -> Response:
    engine = engine_of(request)
    app = await _server_app(request)
    body = await read_json(request, ServerAutoTopUpRequest, engine.settings.max_body_bytes)
    wanted = TopUpSettings(body.enabled, body.threshold_cents, body.purchase_amount_cents)
    saved = await engine.bridge.call_outside(engine.top_ups.update, app, body.user_id, wanted)
    return JSONResponse(top_up_view(saved))


# Browser side: a client token.


async def balance(request: Request) -> Response:
    engine, session = await _session(request)
    parse_query(NoQuery, request.query_params)  # a user_id here would be a mistake: refuse it
    return JSONResponse(
        balance_view(await engine.credits.balance(session.app.context(), session.user_id))
    )


async def transactions(request: Request) -> Response:
    engine, session = await _session(request)
    query = parse_query(TransactionsQuery, request.query_params)
    page = await engine.credits.history(
        session.app.context(), session.user_id, query.limit, query.offset
    )
    view: TransactionsPage = {
        "user_id": session.user_id,
        "transactions": [TransactionView(id=e.ledger_id, **entry_view(e)) for e in page.entries],
        "limit": page.limit,
        "offset": page.offset,
        "has_more": page.has_more,
    }
    return JSONResponse(view)


async def config(request: Request) -> Response:
    _, session = await _session(request)
    return JSONResponse(config_view(session.app))


async def payment_methods(request: Request) -> Response:
    engine, session = await _session(request)
    cards = await engine.bridge.call_outside(engine.purchases.cards, session.app, session.user_id)
    return JSONResponse(CardsView(payment_methods=cards_view(cards)))


async def setup_intent(request: Request) -> Response:
    """A SetupIntent for Stripe.js to save a card with (stripe.confirmCardSetup)."""
    engine, session = await _session(request)
    intent = await engine.bridge.call_outside(
        engine.purchases.setup_intent, session.app, session.user_id
    )
    return JSONResponse(
        SetupIntentView(setup_intent_id=intent.setup_intent_id, client_secret=intent.client_secret)
    )


async def add_payment_method(request: Request) -> Response:
    """Record the card of a SetupIntent the browser confirmed."""
    engine, session = await _session(request)
    body = await read_json(request, AddPaymentMethodRequest, 4_096)
    card = await engine.bridge.call_outside(
        engine.purchases.add_card, session.app, session.user_id, body.setup_intent_id
    )
    cards = await engine.bridge.call_outside(engine.purchases.cards, session.app, session.user_id)
    view = next((c for c in cards_view(cards) if c["id"] == card.id), card_view(card, None))
    return JSONResponse(view, status_code=201)


async def delete_payment_method(request: Request) -> Response:
    engine, session = await _session(request)
    payment_method_id = request.path_params["payment_method_id"]
    await engine.bridge.call_outside(
        engine.purchases.delete_card, session.app, session.user_id, payment_method_id
    )
    return JSONResponse(CardDeleted(success=True, deleted=payment_method_id))


async def reorder_payment_methods(request: Request) -> Response:
    engine, session = await _session(request)
    body = await read_json(request, ReorderRequest, 16_384)
    cards = await engine.bridge.call_outside(
        engine.purchases.reorder, session.app, session.user_id, body.payment_method_ids
    )
    return JSONResponse(CardsView(payment_methods=cards_view(cards)))


async def purchase(request: Request) -> Response:
    engine, session = await _session(request)
    body = await read_json(request, PurchaseRequest, 4_096)
    result = await engine.bridge.call_outside(
        engine.purchases.purchase,
        session.app,
        session.user_id,
        body.amount_cents,
        body.payment_method_id,
        body.idempotency_key,
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    # 202: paid later (the card holder must authenticate first), credited by the webhook then.
    status = 200 if result.status == "succeeded" else 202
    return JSONResponse(purchase_view(result), status_code=status, headers=headers)


async def get_auto_top_up(request: Request) -> Response:
    engine, session = await _session(request)
    return JSONResponse(
        top_up_view(
            await engine.bridge.call_outside(engine.top_ups.get, session.app, session.user_id)
        )
    )


async def put_auto_top_up(request: Request) -> Response:
    engine, session = await _session(request)
    body = await read_json(request, AutoTopUpRequest, 4_096)
    wanted = TopUpSettings(body.enabled, body.threshold_cents, body.purchase_amount_cents)
    saved = await engine.bridge.call_outside(
        engine.top_ups.update, session.app, session.user_id, wanted
    )
    return JSONResponse(top_up_view(saved))


async def _session(request: Request) -> tuple[Engine, ClientSession]:
    engine = engine_of(request)
    session = await engine.app_cache.client_session(
        request.headers.get("authorization"), request.headers.get("origin")
    )
    rate = engine.settings.client_rate_limit
    if rate:
        # Checked after the token is: a forged one cannot spend its user's requests.
        user = (session.app.app_id, session.user_id)
        limited(request, engine.rate_limiter.take(user, rate, " per user"))
    return engine, session


async def _server_app(request: Request) -> App:
    engine, context = await authenticated(request)
    app = await engine.app_cache.get(context.app_id)
    if app is None:
        raise AuthenticationError("invalid API key")
    return app
