"""All SQL for Stripe customers, stored cards' order, purchases and auto top-up settings."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from engine.events.repository import insert_events
from engine.events.types import Event
from engine.store.db import connection, one


@dataclass(frozen=True, slots=True)
class Purchase:
    purchase_id: int
    app_id: str
    user_id: str
    idempotency_key: str
    source: str
    amount_cents: int
    currency: str
    credits: int
    payment_method_id: str
    payment_intent_id: str | None
    status: str
    failure_code: str | None
    failure_message: str | None
    ledger_id: str | None
    balance_after: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AutoTopUp:
    app_id: str
    user_id: str
    enabled: bool
    threshold_cents: int
    purchase_amount_cents: int
    status: str
    last_failure_reason: str | None
    retries_remaining: int
    next_retry_at: datetime | None
    last_top_up_at: datetime | None


_PURCHASE_COLUMNS = ", ".join(
    f.name if f.name != "ledger_id" else "ledger_id::text" for f in fields(Purchase)
)
_TOP_UP_COLUMNS = ", ".join(f.name for f in fields(AutoTopUp))


class BillingRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    # Stripe customers: one per (app, user).

    def customer_id(self, app_id: str, user_id: str) -> str | None:
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT customer_id FROM stripe_customers WHERE app_id = %s AND user_id = %s",
                (app_id, user_id),
            ).fetchone()
        return row[0] if row else None

    def save_customer(self, app_id: str, user_id: str, customer_id: str) -> str:
        """Record the user's customer; the first one recorded wins a race."""
        with connection(self._pool) as conn:
            conn.execute(
                "INSERT INTO stripe_customers (app_id, user_id, customer_id) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (app_id, user_id, customer_id),
            )
        saved = self.customer_id(app_id, user_id)
        assert saved is not None
        return saved

    # The order cards are charged in.

    def priorities(self, app_id: str, user_id: str) -> dict[str, int]:
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT payment_method_id, priority FROM payment_methods"
                " WHERE app_id = %s AND user_id = %s",
                (app_id, user_id),
            ).fetchall()
        return {row[0]: row[1] for row in rows}

    def add_method(self, app_id: str, user_id: str, payment_method_id: str) -> None:
        """A new card goes last."""
        with connection(self._pool) as conn:
            conn.execute(
                "INSERT INTO payment_methods (app_id, user_id, payment_method_id, priority)"
                " SELECT %s, %s, %s, coalesce(max(priority) + 1, 0) FROM payment_methods"
                "  WHERE app_id = %s AND user_id = %s"
                " ON CONFLICT DO NOTHING",
                (app_id, user_id, payment_method_id, app_id, user_id),
            )

    def remove_method(self, app_id: str, user_id: str, payment_method_id: str) -> None:
        with connection(self._pool) as conn:
            conn.execute(
                "DELETE FROM payment_methods"
                " WHERE app_id = %s AND user_id = %s AND payment_method_id = %s",
                (app_id, user_id, payment_method_id),
            )

    def reorder(self, app_id: str, user_id: str, payment_method_ids: list[str]) -> None:
        with connection(self._pool) as conn, conn.transaction():
            conn.execute(
                "DELETE FROM payment_methods WHERE app_id = %s AND user_id = %s",
                (app_id, user_id),
            )
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO payment_methods (app_id, user_id, payment_method_id, priority)"
                    " VALUES (%s, %s, %s, %s)",
                    [(app_id, user_id, pm, rank) for rank, pm in enumerate(payment_method_ids)],
                )

    # Purchases.

    def begin_purchase(
        self,
        app_id: str,
        user_id: str,
        idempotency_key: str,
        source: str,
        amount_cents: int,
        currency: str,
        credits: int,
        payment_method_id: str,
    ) -> tuple[Purchase, bool]:
        """The purchase under this idempotency key: (it, whether this call created it)."""
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Purchase)) as cur:
            cur.execute(
                "INSERT INTO purchases (app_id, user_id, idempotency_key, source, amount_cents,"
                " currency, credits, payment_method_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                f" ON CONFLICT DO NOTHING RETURNING {_PURCHASE_COLUMNS}",
                (
                    app_id, user_id, idempotency_key, source, amount_cents, currency, credits,
                    payment_method_id,
                ),
            )  # fmt: skip
            created = cur.fetchone()
            if created is not None:
                return created, True
            cur.execute(
                f"SELECT {_PURCHASE_COLUMNS} FROM purchases"
                " WHERE app_id = %s AND user_id = %s AND idempotency_key = %s",
                (app_id, user_id, idempotency_key),
            )
            existing = cur.fetchone()
        assert existing is not None
        return existing, False

    def update_purchase(self, purchase_id: int, **changes: Any) -> Purchase:
        assignments = ", ".join(f"{column} = %s" for column in changes)
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Purchase)) as cur:
            cur.execute(
                f"UPDATE purchases SET {assignments}, updated_at = now()"
                f" WHERE purchase_id = %s RETURNING {_PURCHASE_COLUMNS}",
                (*changes.values(), purchase_id),
            )
            return one(cur.fetchone())

    def purchase(self, purchase_id: int) -> Purchase:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Purchase)) as cur:
            cur.execute(
                f"SELECT {_PURCHASE_COLUMNS} FROM purchases WHERE purchase_id = %s", (purchase_id,)
            )
            return one(cur.fetchone())

    def purchases_of(self, app_id: str, user_id: str, limit: int) -> list[Purchase]:
        """The user's purchases, newest first."""
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Purchase)) as cur:
            cur.execute(
                f"SELECT {_PURCHASE_COLUMNS} FROM purchases WHERE app_id = %s AND user_id = %s"
                " ORDER BY created_at DESC, purchase_id DESC LIMIT %s",
                (app_id, user_id, limit),
            )
            return cur.fetchall()

    def auto_top_up_spent_today(self, app_id: str, user_id: str) -> int:
        """Cents auto top-up charged (or has in flight) since midnight UTC."""
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(amount_cents), 0) FROM purchases"
                " WHERE app_id = %s AND user_id = %s AND source = 'auto_top_up'"
                " AND status IN ('succeeded', 'processing', 'pending')"
                " AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
                (app_id, user_id),
            ).fetchone()
        assert row is not None
        return int(row[0])

    # Auto top-up settings.

    def auto_top_up(self, app_id: str, user_id: str) -> AutoTopUp | None:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(AutoTopUp)) as cur:
            cur.execute(
                f"SELECT {_TOP_UP_COLUMNS} FROM auto_top_ups WHERE app_id = %s AND user_id = %s",
                (app_id, user_id),
            )
            return cur.fetchone()

    def save_auto_top_up(
        self,
        app_id: str,
        user_id: str,
        enabled: bool,
        threshold_cents: int,
        purchase_amount_cents: int,
        retries: int,
    ) -> AutoTopUp:
        """New settings start afresh: active, every retry available."""
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(AutoTopUp)) as cur:
            cur.execute(
                "INSERT INTO auto_top_ups (app_id, user_id, enabled, threshold_cents,"
                " purchase_amount_cents, retries_remaining) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (app_id, user_id) DO UPDATE SET enabled = excluded.enabled,"
                " threshold_cents = excluded.threshold_cents,"
                " purchase_amount_cents = excluded.purchase_amount_cents, status = 'active',"
                " last_failure_reason = NULL, retries_remaining = excluded.retries_remaining,"
                " next_retry_at = NULL, updated_at = now()"
                f" RETURNING {_TOP_UP_COLUMNS}",
                (app_id, user_id, enabled, threshold_cents, purchase_amount_cents, retries),
            )
            return one(cur.fetchone())

    def record_top_up(
        self, app_id: str, user_id: str, event: Event | None = None, **changes: Any
    ) -> None:
        """Change a user's auto top-up; `event` (its outcome) is stored in the same transaction."""
        assignments = ", ".join(f"{column} = %s" for column in changes)
        with connection(self._pool) as conn, conn.transaction():
            if event is not None:
                insert_events(conn, [event])
            conn.execute(
                f"UPDATE auto_top_ups SET {assignments}, updated_at = now()"
                " WHERE app_id = %s AND user_id = %s",
                (*changes.values(), app_id, user_id),
            )

    def enabled_top_ups(self) -> list[AutoTopUp]:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(AutoTopUp)) as cur:
            cur.execute(
                f"SELECT {_TOP_UP_COLUMNS} FROM auto_top_ups WHERE enabled AND status <> 'paused'"
            )
            return cur.fetchall()

    @contextmanager
    def top_up_lock(self, app_id: str, user_id: str) -> Iterator[None]:
        """Held while one user's top-up runs: two jobs for one user never charge at once."""
        with connection(self._pool) as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (f"{app_id}:{user_id}",)
            )
            yield
