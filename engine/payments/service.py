"""Payment webhooks: received and stored at once, applied exactly once by a worker.

A verified event is stored before the provider gets its answer, so nothing the provider sent
is lost whatever happens next. A worker applies it with the payment id as the idempotency key
and under a lock on the payment, so a redelivery, the same payment under another event id, or
concurrent deliveries credit once. See docs/payment-providers.md.
"""

import logging
import re
from decimal import Decimal

from engine.accounts.repository import AppRepository
from engine.bridge import Bridge
from engine.errors import InvalidRequestError, NotFoundError, TallyError, UnavailableError
from engine.ledger.credits import Credits
from engine.models import App
from engine.payments.defaults import APPLY_ATTEMPTS, LEASE_SECONDS, RETRY_CAP_SECONDS
from engine.payments.providers import PROVIDERS, PaymentEvent, credits_for, parse, verify
from engine.payments.repository import WebhookEvent, WebhookRepository
from engine.payments.settle import Payment, settle

log = logging.getLogger(__name__)


class Webhooks:
    def __init__(
        self, apps: AppRepository, events: WebhookRepository, credits: Credits, bridge: Bridge
    ) -> None:
        self._apps = apps
        self._events = events
        self._credits = credits
        self._bridge = bridge

    def receive(
        self, provider: str, app_id: str, headers: dict[str, str], body: bytes
    ) -> tuple[WebhookEvent, bool]:
        """Verify and store one delivery; (the stored event, whether it is new)."""
        if provider not in PROVIDERS:
            raise NotFoundError(f"unknown provider {provider}")
        app = self._apps.get_app(app_id)
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

    def get(self, event_pk: int) -> WebhookEvent | None:
        return self._events.get(event_pk)

    def payload(self, event_pk: int) -> bytes:
        """The body exactly as received and verified."""
        return self._events.payload(event_pk)

    def reopen(self, event_pk: int) -> WebhookEvent:
        event = self._events.reopen(event_pk)
        if event is None:
            raise NotFoundError(f"no failed webhook event {event_pk}")
        return event

    def release(self, event_pk: int) -> None:
        self._events.release(event_pk)

    def claim_due(self, limit: int = 100) -> list[int]:
        return self._events.claim_due(LEASE_SECONDS, limit)

    def apply(self, event_pk: int) -> WebhookEvent | None:
        """Apply a pending event (an RQ job), holding its payment's lock throughout."""
        event = self._events.get(event_pk)
        if event is None or event.status != "pending" or event.payment_id is None:
            return event
        app = self._apps.get_app(event.app_id)
        assert app is not None  # apps are never deleted
        body = self._events.payload(event_pk)
        event_data = parse(event.provider, {"webhook-id": event.event_id}, body)
        with settle(
            self._events, self._credits, self._bridge, app, event.provider, event.payment_id
        ) as payment:
            current = payment.tx.event(event_pk)
            if current is None or current.status != "pending":
                return current
            try:
                if event_data.action == "credit":
                    self._credit(payment, app, current, event_data)
                else:
                    self._take_back(payment, app, current, event_data)
            except UnavailableError as exc:
                self._retry(payment, current, exc.message)
            except TallyError as exc:
                payment.tx.finish(event_pk, "failed", exc.message)
        return self._events.get(event_pk)

    def _credit(self, payment: Payment, app: App, event: WebhookEvent, data: PaymentEvent) -> None:
        assert data.user_id is not None
        tx = payment.tx
        if data.app_id not in (None, app.app_id):
            # Two apps on one Stripe account both hear every payment: each credits its own.
            tx.finish(event.event_pk, "ignored", f"payment belongs to app {data.app_id}")
            return
        if data.problem:
            # Paid for one of this app's users, yet not creditable as sent: it needs a look.
            tx.finish(event.event_pk, "failed", data.problem)
            return
        earlier = payment.prior_credit()
        if earlier is not None:
            reason = f"payment {event.payment_id} already credited by {earlier.by}"
            tx.finish(event.event_pk, "duplicate", reason)
            return
        amount = data.credits
        if amount is None:
            # Failed, not ignored: once the app has a rate, `tally webhooks retry` credits it.
            rate = app.webhook_credit_rate
            if rate is None:
                reason = "no tally_credits in the metadata and no credit_rate set for the app"
                tx.finish(event.event_pk, "failed", reason)
                return
            if data.amount_minor is None or not data.currency:
                tx.finish(event.event_pk, "failed", "the payment has no amount or currency")
                return
            if not re.fullmatch("[a-z]{3}", data.currency):
                # Its minor unit (cents, none, thousandths) is unknown: no rate applies safely.
                reason = f"unknown currency {data.currency!r}: send tally_credits instead"
                tx.finish(event.event_pk, "failed", reason)
                return
            amount = credits_for(data.amount_minor, data.currency, Decimal(rate))
            if amount < 1:
                tx.finish(event.event_pk, "failed", "payment buys less than one credit")
                return
        # A replay here is this event's own credit, applied before a crash lost its COMMIT:
        # nothing else credited the payment (checked above, under the payment's lock).
        result = payment.credit(data.user_id, amount)
        tx.finish(event.event_pk, "credited", credits=amount, ledger_id=result.ledger_id)

    def _take_back(
        self, payment: Payment, app: App, event: WebhookEvent, data: PaymentEvent
    ) -> None:
        assert event.payment_id is not None
        assert data.refunded_minor is not None and data.amount_minor is not None
        tx = payment.tx
        applied = tx.applied(app.app_id, event.provider, event.payment_id)
        credit = next((e for e in applied if e.action == "credit"), None)
        if credit is not None and credit.credits is not None and credit.user_id is not None:
            user_id, credited = credit.user_id, credit.credits
        else:
            # A payment Tally charged itself was credited by its purchase, not by a webhook.
            purchased = tx.purchased_credit(app.app_id, event.provider, event.payment_id)
            if purchased is None:
                # The refund may have overtaken its payment's credit: try again later; give
                # up (ignored) once retries are spent.
                missing = f"payment {event.payment_id} has not been credited"
                self._retry(payment, event, missing, "ignored")
                return
            user_id, credited = purchased
        # What earlier refunds of this payment took, or tried to: a shortfall is recorded
        # once, not chased by every later notification.
        settled = sum((e.credits or 0) + e.shortfall for e in applied if e.action == "take_back")
        target = credited * data.refunded_minor // data.amount_minor
        wanted = target - settled
        if wanted <= 0:
            tx.finish(
                event.event_pk, "duplicate", "credits for this refund were already taken back"
            )
            return
        result = self._bridge.run(
            self._credits.take_back(
                app.context(),
                user_id,
                wanted,
                description=f"{event.provider} refund",
                reference_id=event.payment_id,
                metadata={"provider": event.provider},
                idempotency_key=(
                    f"{event.provider}:{event.payment_id}:refunded:{data.refunded_minor}"
                ),
            )
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
            user_id=user_id,
        )

    def _retry(
        self, payment: Payment, event: WebhookEvent, reason: str, final: str = "failed"
    ) -> None:
        if event.attempts + 1 >= APPLY_ATTEMPTS:
            reason = f"{reason} (gave up after {APPLY_ATTEMPTS} attempts)"
            payment.tx.finish(event.event_pk, final, reason)
            return
        delay = min(2 ** (event.attempts + 1), RETRY_CAP_SECONDS)
        log.warning("webhook event %s: %s; retrying in %ss", event.event_pk, reason, delay)
        payment.tx.finish(event.event_pk, "pending", reason, retry_in_seconds=delay)


def _secret(app: App, provider: str) -> str | None:
    secrets = {
        "stripe": app.stripe_webhook_secret,
        "polar": app.polar_webhook_secret,
        "lemonsqueezy": app.lemonsqueezy_webhook_secret,
    }
    return secrets[provider]
