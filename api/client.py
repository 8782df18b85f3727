"""End-user routes: client tokens (minted by the app's backend) and /client/... (browsers).

A client token acts for one user of one app and reaches only the routes here: that user's
balance, transactions, the credits configuration, stored cards, purchases and auto top-up. It
can never add, deduct or refund (api.auth refuses it on every server route).
"""

from starlette.requests import Request
from starlette.responses import Response

from api.auth import ClientSession
from api.config import config_view
from api.credits import balance_view, entry_view, iso8601
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
    parse_body,
    parse_query,
    read_body,
)
from api.services import Services, services
from engine import client_tokens
from engine.auto_top_up import TopUpSettings
from engine.billing_repository import AutoTopUp
from engine.errors import AuthenticationError
from engine.models import App
from engine.purchases import PurchaseResult
from engine.stripe_gateway import Card

# Server side: the app's API key.


async def create_token(request: Request) -> Response:
    svc = services(request)
    app = await _server_app(request)
    body = parse_body(ClientTokenRequest, await read_body(request, svc.settings.max_body_bytes))
    token = client_tokens.mint(app.app_id, app.client_token_secret, body.user_id, body.ttl_seconds)
    expires = client_tokens.read_unverified(token).expires_at
    return JSONResponse(
        {
            "token": token,
            "user_id": body.user_id,
            "expires_at": iso8601(expires * 1000),
        }
    )


async def revoke_tokens(request: Request) -> Response:
    """Rotate the app's signing secret: every client token issued so far stops working."""
    svc = services(request)
    app = await _server_app(request)
    await svc.billing(svc.apps.rotate_client_secret, app.app_id)
    return JSONResponse({"success": True})


async def get_server_auto_top_up(request: Request) -> Response:
    svc = services(request)
    app = await _server_app(request)
    query = parse_query(UserQuery, request.query_params)
    return JSONResponse(_top_up_view(await svc.billing(svc.top_ups.get, app, query.user_id)))


async def put_server_auto_top_up(request: Request) -> Response:
    svc = services(request)
    app = await _server_app(request)
    body = parse_body(ServerAutoTopUpRequest, await read_body(request, svc.settings.max_body_bytes))
    wanted = TopUpSettings(body.enabled, body.threshold_cents, body.purchase_amount_cents)
    saved = await svc.billing(svc.top_ups.update, app, body.user_id, wanted)
    return JSONResponse(_top_up_view(saved))


# Browser side: a client token.


async def balance(request: Request) -> Response:
    svc, session = await _session(request)
    parse_query(NoQuery, request.query_params)  # a user_id here would be a mistake: refuse it
    return JSONResponse(
        balance_view(await svc.credits.balance(session.app.context(), session.user_id))
    )


async def transactions(request: Request) -> Response:
    svc, session = await _session(request)
    query = parse_query(TransactionsQuery, request.query_params)
    page = await svc.credits.history(
        session.app.context(), session.user_id, query.limit, query.offset
    )
    return JSONResponse(
        {
            "user_id": session.user_id,
            "transactions": [{"id": e.ledger_id} | entry_view(e) for e in page.entries],
            "limit": page.limit,
            "offset": page.offset,
            "has_more": page.has_more,
        }
    )


async def config(request: Request) -> Response:
    _, session = await _session(request)
    return JSONResponse(config_view(session.app))


async def payment_methods(request: Request) -> Response:
    svc, session = await _session(request)
    cards = await svc.billing(svc.purchases.cards, session.app, session.user_id)
    return JSONResponse({"payment_methods": _cards_view(cards)})


async def setup_intent(request: Request) -> Response:
    """A SetupIntent for Stripe.js to save a card with (stripe.confirmCardSetup)."""
    svc, session = await _session(request)
    intent = await svc.billing(svc.purchases.setup_intent, session.app, session.user_id)
    return JSONResponse(
        {"setup_intent_id": intent.setup_intent_id, "client_secret": intent.client_secret}
    )


async def add_payment_method(request: Request) -> Response:
    """Record the card of a SetupIntent the browser confirmed."""
    svc, session = await _session(request)
    body = parse_body(AddPaymentMethodRequest, await read_body(request, 4_096))
    card = await svc.billing(
        svc.purchases.add_card, session.app, session.user_id, body.setup_intent_id
    )
    cards = await svc.billing(svc.purchases.cards, session.app, session.user_id)
    view = next((c for c in _cards_view(cards) if c["id"] == card.id), _card_view(card, None))
    return JSONResponse(view, status_code=201)


async def delete_payment_method(request: Request) -> Response:
    svc, session = await _session(request)
    payment_method_id = request.path_params["payment_method_id"]
    await svc.billing(svc.purchases.delete_card, session.app, session.user_id, payment_method_id)
    return JSONResponse({"success": True, "deleted": payment_method_id})


async def reorder_payment_methods(request: Request) -> Response:
    svc, session = await _session(request)
    body = parse_body(ReorderRequest, await read_body(request, 16_384))
    cards = await svc.billing(
        svc.purchases.reorder, session.app, session.user_id, body.payment_method_ids
    )
    return JSONResponse({"payment_methods": _cards_view(cards)})


async def purchase(request: Request) -> Response:
    svc, session = await _session(request)
    body = parse_body(PurchaseRequest, await read_body(request, 4_096))
    result = await svc.billing(
        svc.purchases.purchase,
        session.app,
        session.user_id,
        body.amount_cents,
        body.payment_method_id,
        body.idempotency_key,
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else None
    # 202: paid later (the card holder must authenticate first), credited by the webhook then.
    status = 200 if result.status == "succeeded" else 202
    return JSONResponse(_purchase_view(result), status_code=status, headers=headers)


async def get_auto_top_up(request: Request) -> Response:
    svc, session = await _session(request)
    return JSONResponse(
        _top_up_view(await svc.billing(svc.top_ups.get, session.app, session.user_id))
    )


async def put_auto_top_up(request: Request) -> Response:
    svc, session = await _session(request)
    body = parse_body(AutoTopUpRequest, await read_body(request, 4_096))
    wanted = TopUpSettings(body.enabled, body.threshold_cents, body.purchase_amount_cents)
    saved = await svc.billing(svc.top_ups.update, session.app, session.user_id, wanted)
    return JSONResponse(_top_up_view(saved))


async def _session(request: Request) -> tuple[Services, ClientSession]:
    svc = services(request)
    session = await svc.apps_cache.client_session(
        request.headers.get("authorization"), request.headers.get("origin")
    )
    return svc, session


async def _server_app(request: Request) -> App:
    svc = services(request)
    context = await svc.auth.authenticate(request.headers.get("authorization"))
    app = await svc.apps_cache.get(context.app_id)
    if app is None:
        raise AuthenticationError("invalid API key")
    return app


def _cards_view(cards: list[Card]) -> list[dict[str, object]]:
    # Priority 1 is charged first.
    return [_card_view(card, rank) for rank, card in enumerate(cards, start=1)]


def _card_view(card: Card, priority: int | None) -> dict[str, object]:
    return {
        "id": card.id,
        "provider": card.provider,
        "method_type": card.method_type,
        "card_brand": card.card_brand,
        "card_last4": card.card_last4,
        "card_exp_month": card.card_exp_month,
        "card_exp_year": card.card_exp_year,
        "priority": priority,
    }


def _purchase_view(result: PurchaseResult) -> dict[str, object]:
    view: dict[str, object] = {
        "success": result.status == "succeeded",
        "purchase_id": result.purchase_id,
        "status": result.status,
        "amount_cents": result.amount_cents,
        "credits_purchased": result.credits_purchased,
        "new_balance": result.new_balance,
        "payment_intent_id": result.payment_intent_id,
    }
    if result.client_secret is not None and result.status == "requires_action":
        view["client_secret"] = result.client_secret
    return view


def _top_up_view(top_up: AutoTopUp) -> dict[str, object]:
    next_retry = top_up.next_retry_at
    return {
        "user_id": top_up.user_id,
        "enabled": top_up.enabled,
        "threshold_cents": top_up.threshold_cents,
        "purchase_amount_cents": top_up.purchase_amount_cents,
        "status": top_up.status,
        "last_failure_reason": top_up.last_failure_reason,
        "retries_remaining": top_up.retries_remaining,
        "next_retry_at": iso8601(int(next_retry.timestamp() * 1000)) if next_retry else None,
    }
