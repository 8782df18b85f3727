"""Settling a payment: lock it, see whether it was credited already, credit it once.

A payment Tally charged is reported twice: by the purchase that made it and by its
`payment_intent.succeeded` webhook. Both settle it here, under the same PostgreSQL lock and
with the same ledger entry under the same idempotency key, so whichever comes second credits
nothing.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from engine.bridge import Bridge
from engine.ledger.credits import Credits
from engine.models import App, EntryResult
from engine.payments.repository import PaymentTransaction, PriorCredit, WebhookRepository


class Payment:
    """One payment, locked for the length of a transaction (`settle`)."""

    def __init__(
        self,
        tx: PaymentTransaction,
        credits: Credits,
        bridge: Bridge,
        app: App,
        provider: str,
        payment_id: str,
    ) -> None:
        self.tx = tx
        self._credits = credits
        self._bridge = bridge
        self._app = app
        self._provider = provider
        self.payment_id = payment_id

    def prior_credit(self) -> PriorCredit | None:
        """What credited this payment already: one of its webhook events, or its purchase."""
        return self.tx.prior_credit(self._app.app_id, self._provider, self.payment_id)

    def credit(self, user_id: str, amount: int) -> EntryResult:
        """The one way a payment becomes credits; marks the purchase of it, if Tally made it."""
        result = self._bridge.run(
            self._credits.add(
                self._app.context(),
                user_id,
                amount,
                description=f"{self._provider} payment",
                reference_id=self.payment_id,
                metadata={"provider": self._provider},
                idempotency_key=f"{self._provider}:{self.payment_id}",
            )
        )
        self.mark_purchase(result.ledger_id, result.balance_after)
        return result

    def mark_purchase(self, ledger_id: str, balance_after: int | None) -> None:
        """The purchase of this payment (if Tally made it) is paid and credited."""
        self.tx.purchase_credited(self._app.app_id, self.payment_id, ledger_id, balance_after)


@contextmanager
def settle(
    events: WebhookRepository,
    credits: Credits,
    bridge: Bridge,
    app: App,
    provider: str,
    payment_id: str,
) -> Iterator[Payment]:
    """Hold the payment's lock, serializing every event of it (its credit, each refund) and
    its purchase, for one transaction."""
    with events.payment_transaction() as tx:
        tx.lock_payment(app.app_id, provider, payment_id)
        yield Payment(tx, credits, bridge, app, provider, payment_id)
