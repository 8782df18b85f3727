"""An app's Users, one user's page, and the operator's adjustments and refunds, applied
through the same engine calls as the API."""

import asyncio
from datetime import datetime
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from api.dashboard.access import PREFIX, Visit, change, new_token, page
from api.errors import status_of
from engine.errors import InvalidRequestError, TallyError
from engine.ledger.credits import REFUNDABLE
from engine.models import MAX_AMOUNT, App

PAGE = 50


@page
async def users(visit: Visit) -> Response:
    app = await visit.app()
    query = visit.request.query_params
    prefix = query.get("q", "")
    after = _cursor(query.get("after", ""))
    accounts = await visit.run(visit.engine.summaries.accounts, app.app_id, prefix, after, PAGE + 1)
    shown = accounts[:PAGE]
    # The live balance: the summary's trails the outbox by the worker's lag.
    context = app.context()
    balances = await asyncio.gather(
        *(visit.engine.credits.balance(context, account.user_id) for account in shown)
    )
    more = None
    if len(accounts) > PAGE:
        last = shown[-1]
        cursor = f"{last.last_activity_at.isoformat()}|{last.user_id}"
        more = urlencode({"q": prefix, "after": cursor})
    return visit.render(
        "users.html",
        app=app,
        tab="users",
        rows=list(zip(shown, balances, strict=True)),
        prefix=prefix,
        more=more,
        first_page=after is None,
    )


@page
async def user(visit: Visit) -> Response:
    return await _user(visit, visit.request.query_params.get("user_id", ""))


@change
async def adjust(visit: Visit) -> Response:
    app = await visit.app()
    form = visit.form
    user_id, kind, reason = (
        form.get("user_id", ""),
        form.get("kind"),
        form.get("reason", "").strip(),
    )
    try:
        amount = _amount(form.get("amount", ""))
        if not reason:
            raise InvalidRequestError("a reason is required: it becomes the entry's description")
        if kind not in ("add", "deduct"):
            raise InvalidRequestError("choose Add credits or Deduct credits")
        apply = visit.engine.credits.add if kind == "add" else visit.engine.credits.deduct
        # The form's idempotency key makes a double submit (or a resent form) apply once.
        result = await apply(
            app.context(), user_id, amount, description=reason,
            metadata={"operator": visit.session.email, "source": "dashboard"},
            idempotency_key=form.get("idempotency_key") or None,
        )  # fmt: skip
    except TallyError as exc:
        return await _user(visit, user_id, error=exc.message, status=status_of(exc))
    if not result.replayed:
        await visit.audit(
            "credits.adjusted", app.app_id, user_id=user_id, amount=result.amount,
            reason=reason, ledger_id=result.ledger_id,
        )  # fmt: skip
    return _back_to(app, user_id)


@change
async def refund(visit: Visit) -> Response:
    app = await visit.app()
    user_id, ledger_id = visit.form.get("user_id", ""), visit.form.get("ledger_id", "")
    try:
        result = await visit.engine.credits.refund(
            app.context(), ledger_id, description=f"Refunded by {visit.session.email}",
            idempotency_key=visit.form.get("idempotency_key") or None,
        )  # fmt: skip
    except TallyError as exc:
        return await _user(visit, user_id, error=exc.message, status=status_of(exc))
    if not result.refund.replayed:
        await visit.audit(
            "credits.refunded", app.app_id, user_id=user_id, ledger_id=ledger_id,
            refund_ledger_id=result.refund.ledger_id, amount=result.refund.amount,
        )  # fmt: skip
    return _back_to(app, user_id)


async def _user(
    visit: Visit, user_id: str, *, error: str | None = None, status: int = 200
) -> Response:
    app = await visit.app()
    engine, context = visit.engine, app.context()
    offset = _page_number(visit.request.query_params.get("page", "0")) * PAGE
    # The holds first: reading them expires what is due, so the balance read next agrees.
    holds = await engine.holds.active(context, user_id)
    balance = await engine.credits.balance(context, user_id)
    history = await engine.credits.history(context, user_id, PAGE, offset)
    shown = [entry.ledger_id for entry in history.entries if entry.kind in REFUNDABLE]
    refunded = await engine.credits.refunded(context, user_id, shown)
    cards, cards_error = [], None
    try:
        cards = await visit.run(engine.purchases.cards, app, user_id)
    except TallyError as exc:
        cards_error = exc.message
    purchases = await visit.run(engine.purchases.history, app, user_id)
    top_up = await visit.run(engine.top_ups.get, app, user_id)
    return visit.render(
        "user.html",
        status,
        app=app,
        tab="users",
        user_id=user_id,
        balance=balance,
        grants=balance.grants,
        holds=holds,
        history=history,
        refunded=refunded,
        refundable=REFUNDABLE,
        cards=cards,
        cards_error=cards_error,
        purchases=purchases,
        top_up=top_up,
        error=error,
        idempotency_key=new_token(),
        page=offset // PAGE,
        user_query=urlencode({"user_id": user_id}),
    )


def _back_to(app: App, user_id: str) -> Response:
    query = urlencode({"user_id": user_id})
    return RedirectResponse(f"{PREFIX}/apps/{app.app_id}/user?{query}", status_code=303)


def _amount(text: str) -> int:
    try:
        amount = int(text)
    except ValueError:
        amount = 0
    if not 1 <= amount <= MAX_AMOUNT:
        raise InvalidRequestError(f"amount must be an integer from 1 to {MAX_AMOUNT}")
    return amount


def _cursor(text: str) -> tuple[datetime, str] | None:
    at, _, user_id = text.partition("|")
    try:
        return (datetime.fromisoformat(at), user_id) if at else None
    except ValueError:
        return None


def _page_number(text: str) -> int:
    return int(text) if text.isdigit() and int(text) < 10_000 else 0
