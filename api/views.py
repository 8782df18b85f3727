"""How engine values are shown over HTTP: the JSON of entries, balances, configs, cards,
purchases and auto top-up settings."""

from datetime import UTC, datetime
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict

from engine.billing.purchases import PurchaseResult
from engine.billing.repository import AutoTopUp
from engine.billing.stripe import Card
from engine.events.repository import Delivery, Endpoint
from engine.models import App, Balance, Hold, LedgerEntry
from engine.plans.usage import Usage

# Each body the API answers with, as a type: mypy holds the views to it and /openapi.json is
# generated from it (api/openapi.py), so the description cannot drift from the answers.


class ErrorBody(TypedDict):
    success: Literal[False]
    error: str
    balance: NotRequired[int]  # 402 Insufficient credits
    available: NotRequired[int]  # 402 Insufficient credits: balance less active holds
    floor: NotRequired[int]  # 402 with overdraft: how far the balance may go
    decline_code: NotRequired[str]  # 402 card declined
    payment_intent_id: NotRequired[str | None]
    refund_ledger_id: NotRequired[str]  # 409 already refunded
    limit: NotRequired[str]  # 402 Plan limit reached: "monthly_operations" or "max_users"
    used: NotRequired[int]
    allowed: NotRequired[int]


class Done(TypedDict):
    success: Literal[True]


class AddResult(TypedDict):
    success: Literal[True]
    ledger_id: str
    user_id: str
    amount: int
    balance_after: int
    grant_id: NotRequired[str]  # credits that expire: the grant's id (its ledger_id)
    expires_at: NotRequired[str]


class DeductResult(TypedDict):
    success: Literal[True]
    ledger_id: str
    balance_before: int
    balance_after: int
    auto_top_up_started: NotRequired[bool]


class CaptureResult(DeductResult):
    hold_id: str
    user_id: str
    captured: int
    released: int  # what the hold kept and this capture gave back
    available: int


class HoldCreated(TypedDict):
    success: Literal[True]
    hold_id: str
    user_id: str
    amount: int
    expires_at: str
    balance: int
    available: int  # balance less every active hold, this one included


class HoldReleased(TypedDict):
    success: Literal[True]
    hold_id: str
    user_id: str
    ledger_id: str
    released: int
    balance: int
    available: int


class HoldView(TypedDict):
    hold_id: str
    user_id: str
    amount: int
    status: Literal["active", "captured", "released", "expired"]
    expires_at: str
    created_at: str
    description: str | None
    reference_id: str | None
    metadata: dict[str, Any] | None
    ledger_id: str  # the hold's own entry
    settled_by: str | None  # the entry that captured or released it
    captured: int | None


class HoldsList(TypedDict):
    user_id: str
    holds: list[HoldView]


class RefundResult(TypedDict):
    success: Literal[True]
    ledger_id: str
    refunded_ledger_id: str
    user_id: str
    amount: int
    balance_after: int


class BatchApplied(TypedDict):
    success: Literal[True]
    ledger_id: str
    user_id: str
    amount: int
    balance_before: int
    balance_after: int
    replayed: bool


class BatchRefused(ErrorBody):
    status: int


class BatchResult(TypedDict):
    success: Literal[True]
    results: list[BatchApplied | BatchRefused]


class GrantPart(TypedDict):
    grant_id: str
    amount: int  # grant credits taken (negative) or given back; on a hold, reserved


class GrantView(TypedDict):
    grant_id: str
    remaining: int  # not reserved by a hold
    expires_at: str


class EntryView(TypedDict):
    ledger_id: str
    kind: str
    amount: int
    amount_delta: int
    reason: str | None
    balance_after: int
    description: str | None
    reference_id: str | None
    metadata: dict[str, Any] | None
    refund_of: str | None
    created_at: str | None
    hold_id: str | None
    held: int | None  # change of held credits: +amount by a hold, -amount when it is settled
    expires_at: str | None  # a grant's or a hold's
    grants: list[GrantPart] | None


class TransactionView(EntryView):
    id: str


class HistoryPage(TypedDict):
    user_id: str
    entries: list[EntryView]
    limit: int
    offset: int
    has_more: bool


class TransactionsPage(TypedDict):
    user_id: str
    transactions: list[TransactionView]
    limit: int
    offset: int
    has_more: bool


class BalanceView(TypedDict):
    user_id: str
    balance: int
    updated_at: str | None
    available: int  # balance less active holds: what a deduct may spend (down to the floor)
    held: int
    grants: list[GrantView]  # active grants, soonest expiry first


class ConfigView(TypedDict):
    credits_enabled: bool
    credits_per_dollar: int | float | None
    display_name: str
    display_symbol: str | None
    display_symbol_position: str  # "left" or "right"
    display_decimals: int
    min_purchase_cents: int
    max_purchase_cents: int
    overdraft_enabled: bool
    overdraft_limit: int
    manual_top_up_available: bool
    auto_top_up_available: bool
    currency: str
    low_balance_thresholds: list[int]


class CardView(TypedDict):
    id: str
    provider: str
    method_type: str
    card_brand: str | None
    card_last4: str | None
    card_exp_month: int | None
    card_exp_year: int | None
    priority: int | None


class CardsView(TypedDict):
    payment_methods: list[CardView]


class CardDeleted(TypedDict):
    success: Literal[True]
    deleted: str


class SetupIntentView(TypedDict):
    setup_intent_id: str
    client_secret: str


class PurchaseView(TypedDict):
    success: bool
    purchase_id: int
    status: str
    amount_cents: int
    credits_purchased: int
    new_balance: int | None
    payment_intent_id: str | None
    client_secret: NotRequired[str]  # requires_action: for stripe.handleCardAction


class TopUpView(TypedDict):
    user_id: str
    enabled: bool
    threshold_cents: int
    purchase_amount_cents: int
    status: str
    last_failure_reason: str | None
    retries_remaining: int
    next_retry_at: str | None


class ClientTokenView(TypedDict):
    token: str
    user_id: str
    expires_at: str | None


class WebhookReceipt(TypedDict):
    success: Literal[True]
    event_id: str
    status: str
    reason: str | None


class OutboxShard(TypedDict):
    shard: int
    depth: int
    oldest_age_seconds: float


class OutboxView(TypedDict):
    depth: int
    oldest_age_seconds: float
    shards: list[OutboxShard]


class RedisNodeView(TypedDict):
    node: str  # host:port
    role: str  # master, replica, unknown (it does not answer)
    state: str  # ok, oom, unavailable


class HealthView(TypedDict):
    status: Literal["ok", "unavailable"]
    redis: str
    postgres: NotRequired[Literal["ok", "unavailable"]]
    outbox: NotRequired[OutboxView]
    redis_nodes: NotRequired[list[RedisNodeView]]  # on a Redis Cluster


class ReadyView(TypedDict):
    ready: bool
    redis: Literal["ok", "unavailable"]
    scripts: Literal["ok", "missing", "unknown"]  # unknown: Redis did not answer
    missing: list[Literal["redis", "scripts"]]


def entry_view(entry: LedgerEntry) -> EntryView:
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
        "hold_id": entry.hold_id,
        "held": entry.held,
        "expires_at": iso8601(entry.expires_at_ms),
        "grants": [
            {"grant_id": part["grant_id"], "amount": int(part["amount"])} for part in entry.grants
        ]
        if entry.grants
        else None,
    }


def balance_view(result: Balance) -> BalanceView:
    return {
        "user_id": result.user_id,
        "balance": result.balance,
        "updated_at": iso8601(result.updated_at_ms),
        "available": result.available,
        "held": result.held,
        "grants": [
            {
                "grant_id": grant.grant_id,
                "remaining": grant.remaining,
                "expires_at": iso8601(grant.expires_at_ms) or "",
            }
            for grant in result.grants
        ],
    }


def hold_view(hold: Hold) -> HoldView:
    return {
        "hold_id": hold.hold_id,
        "user_id": hold.user_id,
        "amount": hold.amount,
        "status": hold.status,  # type: ignore[typeddict-item]
        "expires_at": iso8601(hold.expires_at_ms) or "",
        "created_at": iso8601(hold.created_at_ms) or "",
        "description": hold.description,
        "reference_id": hold.reference_id,
        "metadata": hold.metadata,
        "ledger_id": hold.ledger_id,
        "settled_by": hold.settled_by,
        "captured": hold.captured,
    }


def iso8601(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def config_view(app: App) -> ConfigView:
    rate = app.credits_per_dollar
    return {
        "credits_enabled": app.credits_enabled,
        "credits_per_dollar": (
            None if rate is None else (int(rate) if rate == int(rate) else float(rate))
        ),
        "display_name": app.display_name,
        "display_symbol": app.display_symbol,
        "display_symbol_position": app.display_symbol_position,
        "display_decimals": app.display_decimals,
        "min_purchase_cents": app.min_purchase_cents,
        "max_purchase_cents": app.max_purchase_cents,
        "overdraft_enabled": app.overdraft_enabled,
        "overdraft_limit": app.overdraft_limit,
        "manual_top_up_available": app.manual_top_up_available,
        "auto_top_up_available": app.auto_top_up_available,
        "currency": app.currency,
        "low_balance_thresholds": app.low_balance_thresholds,
    }


def cards_view(cards: list[Card]) -> list[CardView]:
    # Priority 1 is charged first.
    return [card_view(card, rank) for rank, card in enumerate(cards, start=1)]


def card_view(card: Card, priority: int | None) -> CardView:
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


def purchase_view(result: PurchaseResult) -> PurchaseView:
    view: PurchaseView = {
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


def top_up_view(top_up: AutoTopUp) -> TopUpView:
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


class EndpointView(TypedDict):
    id: str
    url: str
    events: list[str]  # ["*"]: every type
    created_at: str
    updated_at: str
    # While a rotated secret still signs too (24 h), when it stops.
    previous_secret_expires_at: str | None


class EndpointCreated(EndpointView):
    secret: str  # whsec_...: shown once, here


class EndpointsList(TypedDict):
    endpoints: list[EndpointView]


class DeliveryView(TypedDict):
    id: int
    event_id: str
    event_type: str
    user_id: str | None
    status: str  # pending, delivered or failed (gave up after a day of retries)
    attempts: int
    response_code: int | None
    last_error: str | None
    next_attempt_at: str | None  # pending only
    delivered_at: str | None
    created_at: str


class DeliveriesList(TypedDict):
    deliveries: list[DeliveryView]


class Redelivered(TypedDict):
    success: Literal[True]
    event_id: str
    deliveries: int  # queued again, one per endpoint the event was for


class PlanFigure(TypedDict):
    used: int
    allowed: int | None  # null: unlimited


class UsageView(TypedDict):
    month: str  # YYYY-MM, UTC
    operations: PlanFigure  # adds, deducts and holds made with the app's API keys
    users: PlanFigure


def endpoint_view(endpoint: Endpoint) -> EndpointView:
    expires = endpoint.previous_secret_expires_at
    return {
        "id": endpoint.endpoint_id,
        "url": endpoint.url,
        "events": endpoint.events or ["*"],
        "created_at": _iso(endpoint.created_at),
        "updated_at": _iso(endpoint.updated_at),
        "previous_secret_expires_at": _iso(expires)
        if expires is not None and expires > datetime.now(UTC)
        else None,
    }


def delivery_view(delivery: Delivery) -> DeliveryView:
    return {
        "id": delivery.delivery_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "user_id": delivery.user_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "response_code": delivery.response_code,
        "last_error": delivery.last_error,
        "next_attempt_at": _iso(delivery.next_attempt_at) if delivery.next_attempt_at else None,
        "delivered_at": _iso(delivery.delivered_at) if delivery.delivered_at else None,
        "created_at": _iso(delivery.created_at),
    }


def usage_view(usage: Usage) -> UsageView:
    return {
        "month": usage.month,
        "operations": {"used": usage.operations, "allowed": usage.operations_allowed},
        "users": {"used": usage.users, "allowed": usage.users_allowed},
    }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
