"""Stored cards and credit purchases on the app's Stripe account.

Stripe holds the cards and the money; Tally holds the customer of each (app, user), the order
cards are charged in, and a record of every purchase under its idempotency key. A purchase is
settled like its `payment_intent.succeeded` webhook (engine.payments.settle), so whichever of
the two comes second credits nothing.

Everything here blocks (PostgreSQL, Stripe over HTTP): the API runs it on the bridge's threads,
workers directly; the credit itself goes back through the bridge to the event loop.
"""

import secrets
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal

from redis import Redis
from redis.exceptions import LockError

from engine.billing.defaults import PURCHASE_LOCK_SECONDS
from engine.billing.repository import BillingRepository, Purchase
from engine.billing.stripe import Card, Charge, StripeGateway, gateway
from engine.bridge import Bridge
from engine.errors import (
    ConflictError,
    ForbiddenError,
    IdempotencyConflictError,
    InvalidRequestError,
    NotFoundError,
    PaymentDeclinedError,
    TallyError,
)
from engine.ledger.credits import Credits
from engine.models import MAX_AMOUNT, App
from engine.payments.providers import credits_for
from engine.payments.repository import WebhookRepository
from engine.payments.settle import settle
from engine.settings import Settings
from engine.store.keys import purchase_lock_key


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    purchase_id: int
    # succeeded (credited), requires_action (the card holder must authenticate: use
    # client_secret with Stripe.js; the webhook credits once paid), or processing.
    status: str
    amount_cents: int
    credits_purchased: int
    new_balance: int | None
    payment_intent_id: str | None
    client_secret: str | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class SetupIntentView:
    setup_intent_id: str
    client_secret: str


class Purchases:
    def __init__(
        self,
        billing: BillingRepository,
        events: WebhookRepository,
        redis: "Redis",
        credits: Credits,
        bridge: Bridge,
        settings: Settings,
    ) -> None:
        self._billing = billing
        self._events = events
        self._redis = redis
        self._credits = credits
        self._bridge = bridge
        self._api_base = settings.stripe_api_base

    # Cards.

    def cards(self, app: App, user_id: str) -> list[Card]:
        """The user's cards in the order they are charged."""
        customer = self._billing.customer_id(app.app_id, user_id)
        if customer is None:
            return []
        cards = self._gateway(app).cards(customer)
        order = self._billing.priorities(app.app_id, user_id)
        # Cards attached outside Tally go last, in Stripe's order (sorted() is stable).
        return sorted(cards, key=lambda card: order.get(card.id, len(order)))

    def history(self, app: App, user_id: str, limit: int = 20) -> list[Purchase]:
        return self._billing.purchases_of(app.app_id, user_id, limit)

    def setup_intent(self, app: App, user_id: str) -> SetupIntentView:
        gateway = self._gateway(app)
        customer = self._customer(app, user_id, gateway)
        intent = gateway.create_setup_intent(customer, f"tally-setup:{secrets.token_hex(16)}")
        assert intent.client_secret is not None
        return SetupIntentView(intent.id, intent.client_secret)

    def add_card(self, app: App, user_id: str, setup_intent_id: str) -> Card:
        """Record the card a confirmed SetupIntent saved; it is charged after the others."""
        gateway = self._gateway(app)
        customer = self._billing.customer_id(app.app_id, user_id)
        intent = gateway.setup_intent(setup_intent_id)
        if customer is None or intent.customer_id != customer:
            raise NotFoundError(f"no setup intent {setup_intent_id} for this user")
        if intent.status != "succeeded" or intent.payment_method_id is None:
            raise InvalidRequestError(
                f"setup intent {setup_intent_id} is {intent.status}: confirm it with Stripe.js"
                " (stripe.confirmCardSetup) first"
            )
        card = gateway.card(intent.payment_method_id)
        if card.customer_id is None:
            # Stripe attaches a SetupIntent's card to its customer; attach it if that has not
            # happened (yet), so that the card can be charged off-session.
            card = gateway.attach(card.id, customer)
        elif card.customer_id != customer:
            raise NotFoundError(f"no setup intent {setup_intent_id} for this user")
        self._billing.add_method(app.app_id, user_id, card.id)
        return card

    def delete_card(self, app: App, user_id: str, payment_method_id: str) -> None:
        gateway = self._gateway(app)
        self._own_card(app, user_id, payment_method_id, gateway)
        gateway.detach(payment_method_id)
        self._billing.remove_method(app.app_id, user_id, payment_method_id)

    def reorder(self, app: App, user_id: str, payment_method_ids: list[str]) -> list[Card]:
        cards = {card.id: card for card in self.cards(app, user_id)}
        if len(set(payment_method_ids)) != len(payment_method_ids) or set(
            payment_method_ids
        ) != set(cards):
            raise InvalidRequestError(
                "payment_method_ids must name each of the user's payment methods exactly once"
                f" (they are: {', '.join(cards) or 'none'})"
            )
        self._billing.reorder(app.app_id, user_id, payment_method_ids)
        return [cards[pm] for pm in payment_method_ids]

    # Purchases.

    def purchase(
        self,
        app: App,
        user_id: str,
        amount_cents: int,
        payment_method_id: str,
        idempotency_key: str,
        *,
        source: str = "client",
    ) -> PurchaseResult:
        """Charge a stored card off-session and credit what it bought, at most once per
        idempotency key: a repeat returns the first outcome, a decline included."""
        credits = self.credits_for(app, amount_cents, source)
        gateway = self._gateway(app)
        lock = self._redis.lock(
            purchase_lock_key(app.app_id, user_id, idempotency_key),
            timeout=PURCHASE_LOCK_SECONDS,
            blocking=False,
        )
        if not lock.acquire():
            raise ConflictError(
                "a purchase with this idempotency_key is in progress; retry in a moment"
            )
        try:
            purchase, created = self._billing.begin_purchase(
                app.app_id, user_id, idempotency_key, source, amount_cents, app.currency,
                credits, payment_method_id,
            )  # fmt: skip
            if created:
                try:
                    customer = self._own_card(app, user_id, payment_method_id, gateway)
                except NotFoundError:
                    self._billing.update_purchase(
                        purchase.purchase_id,
                        status="failed",
                        failure_code="payment_method_not_found",
                        failure_message=f"no payment method {payment_method_id} for this user",
                    )
                    raise
                return self._charge(app, gateway, purchase, customer)
            same = (purchase.amount_cents, purchase.payment_method_id, purchase.source) == (
                amount_cents, payment_method_id, source,
            )  # fmt: skip
            if not same:
                raise IdempotencyConflictError()
            return self._resume(app, gateway, purchase)
        finally:
            with suppress(LockError):
                lock.release()

    def credits_for(self, app: App, amount_cents: int, source: str) -> int:
        """What `amount_cents` buys, once the app allows the purchase at all."""
        if not app.credits_enabled:
            raise ForbiddenError("credits are disabled for this app")
        if source == "client" and not app.manual_top_up_available:
            raise ForbiddenError("buying credits is not available for this app")
        if source == "auto_top_up" and not app.auto_top_up_available:
            raise ForbiddenError("auto top-up is not available for this app")
        if app.credits_per_dollar is None:
            raise InvalidRequestError("the app has no credits_per_dollar: purchases are off")
        if not app.min_purchase_cents <= amount_cents <= app.max_purchase_cents:
            raise InvalidRequestError(
                f"amount_cents must be from {app.min_purchase_cents} to {app.max_purchase_cents}"
            )
        credits = credits_for(amount_cents, app.currency, Decimal(app.credits_per_dollar))
        if not 1 <= credits <= MAX_AMOUNT:
            raise InvalidRequestError(f"{amount_cents} cents buys {credits} credits")
        return credits

    def _charge(
        self, app: App, gateway: StripeGateway, purchase: Purchase, customer: str
    ) -> PurchaseResult:
        try:
            charge = gateway.charge(
                customer,
                purchase.payment_method_id,
                purchase.amount_cents,
                purchase.currency,
                metadata={
                    # What the payment_intent.succeeded webhook needs to credit the same
                    # payment by itself, should this request die before it does.
                    "tally_app_id": app.app_id,
                    "tally_user_id": purchase.user_id,
                    "tally_credits": str(purchase.credits),
                    "tally_purchase_id": str(purchase.purchase_id),
                },
                # Per purchase, not per request: a retried request resumes the same charge.
                idempotency_key=f"tally-purchase:{app.app_id}:{purchase.purchase_id}",
            )
        except PaymentDeclinedError as exc:
            self._billing.update_purchase(
                purchase.purchase_id,
                status="failed",
                failure_code=exc.decline_code,
                failure_message=exc.message,
                payment_intent_id=exc.payment_intent_id,
            )
            raise
        return self._settle(app, purchase, charge, replayed=False)

    def _resume(self, app: App, gateway: StripeGateway, purchase: Purchase) -> PurchaseResult:
        if purchase.status == "succeeded":
            return _result(purchase, replayed=True)
        if purchase.status == "failed":
            raise _stored_failure(purchase)
        if purchase.payment_intent_id is None:
            # The first request died before Stripe answered: ask again with the same key.
            customer = self._billing.customer_id(app.app_id, purchase.user_id)
            assert customer is not None
            return self._charge(app, gateway, purchase, customer)
        charge = gateway.payment_intent(purchase.payment_intent_id)
        return self._settle(app, purchase, charge, replayed=True)

    def _settle(
        self, app: App, purchase: Purchase, charge: Charge, *, replayed: bool
    ) -> PurchaseResult:
        if charge.status in ("requires_payment_method", "canceled"):
            # Stripe raises on an off-session decline; an intent left in these states failed
            # all the same.
            message = f"the payment is {charge.status}"
            self._billing.update_purchase(
                purchase.purchase_id,
                payment_intent_id=charge.payment_intent_id,
                status="failed",
                failure_code=charge.status,
                failure_message=message,
            )
            raise PaymentDeclinedError(message, charge.status, charge.payment_intent_id)
        status = charge.status if charge.status in ("succeeded", "processing") else (
            "requires_action"
        )  # fmt: skip
        if status != "succeeded":
            purchase = self._billing.update_purchase(
                purchase.purchase_id, payment_intent_id=charge.payment_intent_id, status=status
            )
            return _result(purchase, replayed=replayed, client_secret=charge.client_secret)
        purchase = self._billing.update_purchase(
            purchase.purchase_id, payment_intent_id=charge.payment_intent_id
        )
        self._credit(app, purchase, charge.payment_intent_id)
        credited = self._billing.purchase(purchase.purchase_id)
        return _result(credited, replayed=replayed)

    def _credit(self, app: App, purchase: Purchase, payment_intent_id: str) -> None:
        """Credit a paid purchase unless its webhook already did."""
        with settle(
            self._events, self._credits, self._bridge, app, "stripe", payment_intent_id
        ) as payment:
            earlier = payment.prior_credit()
            if earlier is None:
                payment.credit(purchase.user_id, purchase.credits)
                return
            # Its webhook came first (a no-op if that already marked the purchase).
            balance = self._bridge.run(self._credits.balance(app.context(), purchase.user_id))
            payment.mark_purchase(earlier.ledger_id, balance.balance)

    def _own_card(
        self, app: App, user_id: str, payment_method_id: str, gateway: StripeGateway
    ) -> str:
        """The user's customer id, once `payment_method_id` is known to be one of their cards."""
        missing = NotFoundError(f"no payment method {payment_method_id} for this user")
        customer = self._billing.customer_id(app.app_id, user_id)
        if customer is None:
            raise missing
        try:
            card = gateway.card(payment_method_id)
        except NotFoundError:
            raise missing from None
        if card.customer_id != customer:
            raise missing
        return customer

    def _customer(self, app: App, user_id: str, gateway: StripeGateway) -> str:
        customer = self._billing.customer_id(app.app_id, user_id)
        if customer is None:
            created = gateway.create_customer(app.app_id, user_id)
            customer = self._billing.save_customer(app.app_id, user_id, created)
        return customer

    def _gateway(self, app: App) -> StripeGateway:
        if not app.stripe_secret_key:
            raise InvalidRequestError(
                "the app has no Stripe secret key: set one with"
                " `tally apps update APP_ID --stripe-secret-key sk_...`"
            )
        return gateway(app.stripe_secret_key, self._api_base)


def _stored_failure(purchase: Purchase) -> TallyError:
    """The failure a purchase ended with, replayed for a repeat of its idempotency key."""
    error: TallyError
    if purchase.failure_code == "payment_method_not_found":
        error = NotFoundError(purchase.failure_message or "no such payment method")
    else:
        error = PaymentDeclinedError(
            purchase.failure_message or "the card was declined",
            purchase.failure_code or "card_declined",
            purchase.payment_intent_id,
        )
    error.replayed = True
    return error


def _result(
    purchase: Purchase, *, replayed: bool, client_secret: str | None = None
) -> PurchaseResult:
    return PurchaseResult(
        purchase_id=purchase.purchase_id,
        status=purchase.status,
        amount_cents=purchase.amount_cents,
        credits_purchased=purchase.credits if purchase.status == "succeeded" else 0,
        new_balance=purchase.balance_after,
        payment_intent_id=purchase.payment_intent_id,
        client_secret=client_secret,
        replayed=replayed,
    )
