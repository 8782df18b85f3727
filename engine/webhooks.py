"""Payment webhooks: received and stored at once, applied exactly once by a worker.

A verified event is stored before the provider gets its answer, so nothing the provider sent
is lost whatever happens next. A worker applies it with the payment id as the idempotency key
and under a lock on the payment, so a redelivery, the same payment under another event id, or
concurrent deliveries credit once. See README "Connect your payment provider".
"""

import logging
from decimal import Decimal

from engine.credits import Credits
from engine.errors import InvalidRequestError, NotFoundError, TallyError, UnavailableError
from engine.models import App, EntryResult
from engine.payments import PROVIDERS, PaymentEvent, credits_for, parse, verify
from engine.repository import Repository
from engine.webhook_repository import PaymentTransaction, WebhookEvent, WebhookRepository

log = logging.getLogger(__name__)

# The request that stores an event queues its job; the sweep queues it if that has not run
# within this lease (Redis was down, the process died).
LEASE_SECONDS = 30
MAX_ATTEMPTS = 8
_RETRY_CAP_SECONDS = 600


class Webhooks:
    def __init__(self, repository: Repository, events: WebhookRepository) -> None:
        self._repository = repository
        self._events = events

    def receive(
        self, provider: str, app_id: str, headers: dict[str, str], body: bytes
    ) -> tuple[WebhookEvent, bool]:
        """Verify and store one delivery; (the stored event, whether it is new)."""
        if provider not in PROVIDERS:
            raise NotFoundError(f"unknown provider {provider}")
        app = self._repository.get_app(app_id)
        if app is None:
            raise NotFoundError(f"no app {app_id}")
        secret = _secret(app, provider)
        if not secret:
            raise InvalidRequestError(f"no {provider} webhook secret is set for this app")
        verify(provider, secret, headers, body)
        event = parse(provider, headers, body)
        stored, new = self._events.store(app_id, provider, event, body, LEASE_SECONDS)
        if new:
            log.info("%s event %s stored as %s", provider, stored.event_id, stored.status)
        return stored, new

    def list_events(self, app_id: str | None, status: str | None, limit: int) -> list[WebhookEvent]:
        return self._events.list_events(app_id, status, limit)

    def reopen(self, event_pk: int) -> WebhookEvent:
        event = self._events.reopen(event_pk)
        if event is None:
            raise NotFoundError(f"no failed webhook event {event_pk}")
        return event

    def release(self, event_pk: int) -> None:
        self._events.release(event_pk)

    def claim_due(self, limit: int = 100) -> list[int]:
        return self._events.claim_due(LEASE_SECONDS, limit)

    async def apply(self, credits: Credits, event_pk: int) -> WebhookEvent | None:
        """Apply a pending event. Runs in a worker: its PostgreSQL calls block, on purpose
        holding the payment's lock across the Redis call."""
        event = self._events.get(event_pk)
        if event is None or event.status != "pending" or event.payment_id is None:
            return event
        app = self._repository.get_app(event.app_id)
        assert app is not None  # apps are never deleted
        body = self._events.payload(event_pk)
        payment = parse(event.provider, {"webhook-id": event.event_id}, body)
        with self._events.payment_transaction() as tx:
            tx.lock_payment(app.app_id, event.provider, event.payment_id)
            current = tx.event(event_pk)
            if current is None or current.status != "pending":
                return current
            try:
                if payment.action == "credit":
                    await self._credit(tx, credits, app, current, payment)
                else:
                    await self._take_back(tx, credits, app, current, payment)
            except UnavailableError as exc:
                self._retry(tx, current, exc.message)
            except TallyError as exc:
                tx.finish(event_pk, "failed", exc.message)
        return self._events.get(event_pk)

    async def _credit(
        self,
        tx: PaymentTransaction,
        credits: Credits,
        app: App,
        event: WebhookEvent,
        payment: PaymentEvent,
    ) -> None:
        assert event.payment_id is not None and payment.user_id is not None
        if payment.app_id not in (None, app.app_id):
            # Two apps on one Stripe account both hear every payment: each credits its own.
            tx.finish(event.event_pk, "ignored", f"payment belongs to app {payment.app_id}")
            return
        earlier = tx.prior_credit(app.app_id, event.provider, event.payment_id)
        if earlier is not None:
            reason = f"payment {event.payment_id} already credited by {earlier.by}"
            tx.finish(event.event_pk, "duplicate", reason)
            return
        amount = payment.credits
        if amount is None:
            rate = app.webhook_credit_rate
            if rate is None or payment.amount_minor is None or not payment.currency:
                reason = "no tally_credits in the metadata and no credit_rate set for the app"
                tx.finish(event.event_pk, "ignored", reason)
                return
            amount = credits_for(payment.amount_minor, payment.currency, Decimal(rate))
            if amount < 1:
                tx.finish(event.event_pk, "ignored", "payment buys less than one credit")
                return
        result = await credit_payment(credits, app, payment.user_id, amount, event.provider,
                                      event.payment_id)  # fmt: skip
        # A replay here is this event's own credit, applied before a crash lost its COMMIT:
        # nothing else credited the payment (checked above, under the payment's lock).
        tx.finish(event.event_pk, "credited", credits=amount, ledger_id=result.ledger_id)
        # A purchase Tally made whose card needed authentication is paid once this arrives.
        tx.purchase_credited(app.app_id, event.payment_id, result.ledger_id, result.balance_after)

    async def _take_back(
        self,
        tx: PaymentTransaction,
        credits: Credits,
        app: App,
        event: WebhookEvent,
        payment: PaymentEvent,
    ) -> None:
        assert event.payment_id is not None
        assert payment.refunded_minor is not None and payment.amount_minor is not None
        applied = tx.applied(app.app_id, event.provider, event.payment_id)
        credit = next((e for e in applied if e.action == "credit"), None)
        if credit is None or credit.credits is None or credit.user_id is None:
            # The refund may have overtaken its payment's credit: try again later; give up
            # (ignored) once retries are spent.
            self._retry(tx, event, f"payment {event.payment_id} has not been credited", "ignored")
            return
        # What earlier refunds of this payment took, or tried to: a shortfall is recorded
        # once, not chased by every later notification.
        settled = sum((e.credits or 0) + e.shortfall for e in applied if e.action == "take_back")
        target = credit.credits * payment.refunded_minor // payment.amount_minor
        wanted = target - settled
        if wanted <= 0:
            tx.finish(
                event.event_pk, "duplicate", "credits for this refund were already taken back"
            )
            return
        result = await credits.take_back(
            app.context(),
            credit.user_id,
            wanted,
            description=f"{event.provider} refund",
            reference_id=event.payment_id,
            idempotency_key=f"{event.provider}:{event.payment_id}:refunded:{payment.refunded_minor}",
        )
        got = 0 if result is None else -result.amount
        reason = None
        if got < wanted:
            reason = (
                f"{wanted - got} of {wanted} credits could not be taken back: balance at its floor"
            )
        tx.finish(
            event.event_pk,
            "taken_back",
            reason,
            credits=got,
            shortfall=wanted - got,
            ledger_id=None if result is None else result.ledger_id,
            user_id=credit.user_id,
        )

    def _retry(
        self, tx: PaymentTransaction, event: WebhookEvent, reason: str, final: str = "failed"
    ) -> None:
        if event.attempts + 1 >= MAX_ATTEMPTS:
            tx.finish(event.event_pk, final, f"{reason} (gave up after {MAX_ATTEMPTS} attempts)")
            return
        delay = min(2 ** (event.attempts + 1), _RETRY_CAP_SECONDS)
        log.warning("webhook event %s: %s; retrying in %ss", event.event_pk, reason, delay)
        tx.finish(event.event_pk, "pending", reason, retry_in_seconds=delay)


async def credit_payment(
    credits: Credits, app: App, user_id: str, amount: int, provider: str, payment_id: str
) -> EntryResult:
    """The one way a payment becomes credits, whether a webhook or a purchase reports it: the
    same entry under the same idempotency key, so whichever comes second replays the first."""
    return await credits.add(
        app.context(),
        user_id,
        amount,
        description=f"{provider} payment",
        reference_id=payment_id,
        metadata={"provider": provider},
        idempotency_key=f"{provider}:{payment_id}",
    )


def _secret(app: App, provider: str) -> str | None:
    secrets = {
        "stripe": app.stripe_webhook_secret,
        "polar": app.polar_webhook_secret,
        "lemonsqueezy": app.lemonsqueezy_webhook_secret,
    }
    return secrets[provider]
