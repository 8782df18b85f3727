"""All SQL for payment webhook events."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime

import psycopg
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from engine.payments.providers import PaymentEvent
from engine.store.db import connection


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    event_pk: int
    app_id: str
    provider: str
    event_id: str
    event_type: str
    action: str
    payment_id: str | None
    user_id: str | None
    credits: int | None
    shortfall: int
    status: str
    reason: str | None
    ledger_id: str | None
    attempts: int
    deliveries: int
    received_at: datetime
    updated_at: datetime


_COLUMNS = ", ".join(
    f.name if f.name != "ledger_id" else "ledger_id::text" for f in fields(WebhookEvent)
)


class WebhookRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def store(
        self, app_id: str, provider: str, event: PaymentEvent, payload: bytes, lease_seconds: int
    ) -> tuple[WebhookEvent, bool]:
        """Store a verified event once; (the stored event, whether this delivery stored it).

        A new event to apply is leased for `lease_seconds`: the request that stored it queues
        its job, and the worker's sweep queues it only if that did not happen in time.
        """
        status = "ignored" if event.action == "ignore" else "failed" if event.problem else "pending"
        key = (app_id, provider, event.event_id)
        with connection(self._pool) as conn, conn.transaction():
            inserted = conn.execute(
                "INSERT INTO webhook_events (app_id, provider, event_id, event_type, action,"
                " payment_id, user_id, credits, status, reason, payload, next_attempt_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                "  now() + %s * interval '1 second')"
                " ON CONFLICT (app_id, provider, event_id) DO NOTHING RETURNING event_pk",
                (
                    *key, event.event_type, event.action, event.payment_id, event.user_id,
                    event.credits, status, event.problem or event.reason, payload, lease_seconds,
                ),
            ).fetchone() is not None  # fmt: skip
            if not inserted:
                conn.execute(
                    "UPDATE webhook_events SET deliveries = deliveries + 1"
                    " WHERE app_id = %s AND provider = %s AND event_id = %s",
                    key,
                )
            with conn.cursor(row_factory=class_row(WebhookEvent)) as cur:
                cur.execute(
                    f"SELECT {_COLUMNS} FROM webhook_events"
                    " WHERE app_id = %s AND provider = %s AND event_id = %s",
                    key,
                )
                stored = cur.fetchone()
        assert stored is not None
        return stored, inserted

    def get(self, event_pk: int) -> WebhookEvent | None:
        with (
            connection(self._pool) as conn,
            conn.cursor(row_factory=class_row(WebhookEvent)) as cur,
        ):
            cur.execute(f"SELECT {_COLUMNS} FROM webhook_events WHERE event_pk = %s", (event_pk,))
            return cur.fetchone()

    def payload(self, event_pk: int) -> bytes:
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT payload FROM webhook_events WHERE event_pk = %s", (event_pk,)
            ).fetchone()
        return bytes(row[0]) if row else b""

    def list_events(self, app_id: str | None, status: str | None, limit: int) -> list[WebhookEvent]:
        with (
            connection(self._pool) as conn,
            conn.cursor(row_factory=class_row(WebhookEvent)) as cur,
        ):
            cur.execute(
                f"SELECT {_COLUMNS} FROM webhook_events"
                " WHERE (%(app)s::text IS NULL OR app_id = %(app)s)"
                " AND (%(status)s::text IS NULL OR status = %(status)s)"
                " ORDER BY received_at DESC, event_pk DESC LIMIT %(limit)s",
                {"app": app_id, "status": status, "limit": limit},
            )
            return cur.fetchall()

    def claim_due(self, lease_seconds: int, limit: int) -> list[int]:
        """Pending events whose time has come, leased so that only one sweep queues each."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "UPDATE webhook_events SET next_attempt_at = now() + %s * interval '1 second'"
                " WHERE event_pk IN (SELECT event_pk FROM webhook_events"
                "  WHERE status = 'pending' AND next_attempt_at <= now()"
                "  ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " RETURNING event_pk",
                (lease_seconds, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def release(self, event_pk: int) -> None:
        """Give up the lease of a pending event, so that the next sweep queues it."""
        with connection(self._pool) as conn:
            conn.execute(
                "UPDATE webhook_events SET next_attempt_at = now()"
                " WHERE event_pk = %s AND status = 'pending'",
                (event_pk,),
            )

    def reopen(self, event_pk: int) -> WebhookEvent | None:
        """Make a failed event pending again, due now (for `tally webhooks retry`)."""
        with (
            connection(self._pool) as conn,
            conn.cursor(row_factory=class_row(WebhookEvent)) as cur,
        ):
            cur.execute(
                "UPDATE webhook_events SET status = 'pending', attempts = 0, reason = NULL,"
                " next_attempt_at = now(), updated_at = now()"
                f" WHERE event_pk = %s AND status = 'failed' RETURNING {_COLUMNS}",
                (event_pk,),
            )
            return cur.fetchone()

    @contextmanager
    def payment_transaction(self) -> Iterator["PaymentTransaction"]:
        """One transaction in which an event is applied while its payment is locked."""
        with connection(self._pool) as conn, conn.transaction():
            yield PaymentTransaction(conn)


@dataclass(frozen=True, slots=True)
class PriorCredit:
    ledger_id: str
    by: str  # "event 12", or "its purchase (<ledger id>)"


class PaymentTransaction:
    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def lock_payment(self, app_id: str, provider: str, payment_id: str) -> None:
        """Serialize every event of one payment (its credit and each partial refund)."""
        self._conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"{app_id}:{provider}:{payment_id}",),
        )

    def event(self, event_pk: int) -> WebhookEvent | None:
        with self._conn.cursor(row_factory=class_row(WebhookEvent)) as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM webhook_events WHERE event_pk = %s FOR UPDATE",
                (event_pk,),
            )
            return cur.fetchone()

    def applied(self, app_id: str, provider: str, payment_id: str) -> list[WebhookEvent]:
        """The payment's events that changed the ledger: its credit and its take-backs."""
        with self._conn.cursor(row_factory=class_row(WebhookEvent)) as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM webhook_events"
                " WHERE app_id = %s AND provider = %s AND payment_id = %s"
                " AND status IN ('credited', 'taken_back') ORDER BY event_pk",
                (app_id, provider, payment_id),
            )
            return cur.fetchall()

    def purchased_credit(
        self, app_id: str, provider: str, payment_id: str
    ) -> tuple[str, int] | None:
        """(user, credits) of the purchase Tally made and credited for this payment, if any."""
        if provider != "stripe":
            return None
        row = self._conn.execute(
            "SELECT user_id, credits FROM purchases"
            " WHERE app_id = %s AND payment_intent_id = %s AND ledger_id IS NOT NULL",
            (app_id, payment_id),
        ).fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def prior_credit(self, app_id: str, provider: str, payment_id: str) -> "PriorCredit | None":
        """What already credited this payment: one of its webhook events, or the purchase Tally
        made (a Stripe PaymentIntent). Webhooks and purchases both ask, under the payment's
        lock, so that the payment is credited once whichever reports it first."""
        row = self._conn.execute(
            "SELECT ledger_id::text, 'event ' || event_pk FROM webhook_events"
            " WHERE app_id = %(app)s AND provider = %(provider)s AND payment_id = %(payment)s"
            " AND status = 'credited'"
            " UNION ALL"
            " SELECT ledger_id::text, 'its purchase (' || ledger_id || ')' FROM purchases"
            " WHERE %(provider)s = 'stripe' AND app_id = %(app)s"
            " AND payment_intent_id = %(payment)s AND ledger_id IS NOT NULL"
            " LIMIT 1",
            {"app": app_id, "provider": provider, "payment": payment_id},
        ).fetchone()
        return PriorCredit(ledger_id=row[0], by=row[1]) if row else None

    def purchase_credited(
        self, app_id: str, payment_intent_id: str, ledger_id: str, balance_after: int | None
    ) -> None:
        """Mark the purchase of this PaymentIntent (if Tally made it) as paid and credited."""
        self._conn.execute(
            "UPDATE purchases SET status = 'succeeded', ledger_id = %s, balance_after = %s,"
            " failure_code = NULL, failure_message = NULL, updated_at = now()"
            " WHERE app_id = %s AND payment_intent_id = %s AND ledger_id IS NULL",
            (ledger_id, balance_after, app_id, payment_intent_id),
        )

    def finish(
        self,
        event_pk: int,
        status: str,
        reason: str | None = None,
        *,
        credits: int | None = None,
        shortfall: int = 0,
        ledger_id: str | None = None,
        user_id: str | None = None,
        retry_in_seconds: float | None = None,
    ) -> None:
        self._conn.execute(
            "UPDATE webhook_events SET status = %s, reason = %s, shortfall = %s,"
            " credits = coalesce(%s, credits), ledger_id = coalesce(%s::uuid, ledger_id),"
            " user_id = coalesce(%s, user_id), attempts = attempts + 1, updated_at = now(),"
            " next_attempt_at = now() + coalesce(%s::float8, 0) * interval '1 second'"
            " WHERE event_pk = %s",
            (status, reason, shortfall, credits, ledger_id, user_id, retry_in_seconds, event_pk),
        )
