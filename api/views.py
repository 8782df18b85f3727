"""How engine values are shown over HTTP: the JSON of entries, balances, configs, cards,
purchases and auto top-up settings."""

from datetime import UTC, datetime

from engine.billing.purchases import PurchaseResult
from engine.billing.repository import AutoTopUp
from engine.billing.stripe import Card
from engine.models import CREDITS_CONFIG, App, Balance, LedgerEntry


def entry_view(entry: LedgerEntry) -> dict[str, object]:
    return {
        "ledger_id": entry.ledger_id,
        "kind": entry.kind,
        "amount": entry.amount,
        # The same two under the names the reauth credits API uses.
        "amount_delta": entry.amount,
        "reason": entry.description,
        "balance_after": entry.balance_after,
        "description": entry.description,
        "reference_id": entry.reference_id,
        "metadata": entry.metadata,
        "refund_of": entry.refund_of,
        "created_at": iso8601(entry.created_at_ms),
    }


def balance_view(result: Balance) -> dict[str, object]:
    return {
        "user_id": result.user_id,
        "balance": result.balance,
        "updated_at": iso8601(result.updated_at_ms),
    }


def iso8601(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def config_view(app: App) -> dict[str, object]:
    view: dict[str, object] = {name: getattr(app, name) for name in CREDITS_CONFIG}
    rate = app.credits_per_dollar
    view["credits_per_dollar"] = (
        None if rate is None else (int(rate) if rate == int(rate) else float(rate))
    )
    view["overdraft_limit"] = app.overdraft_limit
    return view


def cards_view(cards: list[Card]) -> list[dict[str, object]]:
    # Priority 1 is charged first.
    return [card_view(card, rank) for rank, card in enumerate(cards, start=1)]


def card_view(card: Card, priority: int | None) -> dict[str, object]:
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


def purchase_view(result: PurchaseResult) -> dict[str, object]:
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


def top_up_view(top_up: AutoTopUp) -> dict[str, object]:
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
