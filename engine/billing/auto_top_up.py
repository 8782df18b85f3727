"""Auto top-up: buy credits for a user as soon as usage leaves the balance below a threshold.

Deducts pay nothing for it: apply_entry.lua compares the new balance with the threshold kept in
the account's top-up hash and, the first time it is below, marks the top-up pending (HSETNX, so
concurrent deducts start one) and puts the account in its shard's top-up-due set. The worker's
sweeper leases due accounts (claim_due.lua) and queues one `auto_top_up` job each; the job
(`run`) charges the cards in priority order, falls back to the next card on a decline, retries
with backoff and pauses after TOP_UP_ROUNDS failed rounds. PostgreSQL holds the settings and the
status; Redis holds only what the hot path reads.
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from redis import Redis

from engine.accounts.repository import AppRepository
from engine.billing.defaults import TOP_UP_LEASE_MS, TOP_UP_ROUNDS
from engine.billing.purchases import Purchases
from engine.billing.repository import AutoTopUp, BillingRepository
from engine.billing.stripe import Card
from engine.bridge import Bridge
from engine.errors import ForbiddenError, InvalidRequestError, PaymentDeclinedError
from engine.events.derive import event_id
from engine.events.types import Event
from engine.ledger.credits import Credits
from engine.models import App
from engine.payments.providers import credits_for
from engine.settings import Settings
from engine.store.keys import SHARDS, account_keys, parse_member, top_up_due_key
from engine.store.scripts import SCRIPTS, Call, run_all


@dataclass(frozen=True, slots=True)
class TopUpSettings:
    enabled: bool
    threshold_cents: int
    purchase_amount_cents: int


class AutoTopUps:
    def __init__(
        self,
        billing: BillingRepository,
        apps: AppRepository,
        purchases: Purchases,
        redis: "Redis",
        credits: Credits,
        bridge: Bridge,
        settings: Settings,
    ) -> None:
        self._billing = billing
        self._apps = apps
        self._purchases = purchases
        self._redis = redis
        self._credits = credits
        self._bridge = bridge
        self._retry_seconds = settings.auto_top_up_retry_seconds
        self._claim = SCRIPTS.claim_due

    def get(self, app: App, user_id: str) -> AutoTopUp:
        saved = self._billing.auto_top_up(app.app_id, user_id)
        return saved or AutoTopUp(
            app.app_id, user_id, False, 0, 0, "active", None, TOP_UP_ROUNDS, None, None
        )

    def update(self, app: App, user_id: str, wanted: TopUpSettings) -> AutoTopUp:
        """Save a user's settings; saving starts afresh (active, every retry available)."""
        if wanted.enabled:
            if not app.auto_top_up_available:
                raise ForbiddenError("auto top-up is not available for this app")
            self._purchases.credits_for(app, wanted.purchase_amount_cents, "auto_top_up")
        saved = self._billing.save_auto_top_up(
            app.app_id, user_id, wanted.enabled, wanted.threshold_cents,
            wanted.purchase_amount_cents, TOP_UP_ROUNDS,
        )  # fmt: skip
        keys = account_keys(app.app_id, user_id)
        if saved.enabled:
            self._redis.hset(keys.top_up(), "threshold", self.threshold(app, saved))
        else:
            self._finish(app.app_id, user_id, disarm=True)
        return saved

    @staticmethod
    def threshold(app: App, top_up: AutoTopUp) -> int:
        """The threshold in credits: the balance below which a top-up starts."""
        if app.credits_per_dollar is None:
            raise InvalidRequestError("the app has no credits_per_dollar: purchases are off")
        return credits_for(top_up.threshold_cents, app.currency, Decimal(app.credits_per_dollar))

    def claim_due(self, limit: int = 100) -> list[tuple[str, str]]:
        """Lease every shard's due top-ups, one round trip: (app_id, user_id) per account."""
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        calls: list[Call] = [
            ([top_up_due_key(shard)], [now_ms, TOP_UP_LEASE_MS, limit]) for shard in range(SHARDS)
        ]
        return [
            parse_member(m) for members in run_all(self._redis, self._claim, calls) for m in members
        ]

    def rearm_all(self) -> int:
        """Put every enabled threshold (and due retry) back in Redis, e.g. after Redis lost data."""
        apps: dict[str, App | None] = {}
        pipe = self._redis.pipeline(transaction=False)
        armed = 0
        for top_up in self._billing.enabled_top_ups():
            if top_up.app_id not in apps:
                apps[top_up.app_id] = self._apps.get_app(top_up.app_id)
            app = apps[top_up.app_id]
            if app is None or app.credits_per_dollar is None:
                continue
            keys = account_keys(app.app_id, top_up.user_id)
            pipe.hset(keys.top_up(), "threshold", self.threshold(app, top_up))
            if top_up.next_retry_at is not None:
                when = int(top_up.next_retry_at.timestamp() * 1000)
                pipe.zadd(keys.top_up_due(), {keys.top_up_member(): when}, nx=True)
            armed += 1
        pipe.execute()
        return armed

    def run(self, app_id: str, user_id: str) -> str:
        """One round of a user's top-up (an RQ job); returns what happened."""
        with self._billing.top_up_lock(app_id, user_id):
            app = self._apps.get_app(app_id)
            top_up = self._billing.auto_top_up(app_id, user_id)
            if (
                app is None
                or top_up is None
                or not top_up.enabled
                or top_up.status == "paused"
                or not (app.auto_top_up_available and app.credits_enabled)
            ):
                self._finish(app_id, user_id)
                return "off"
            now = datetime.now(UTC)
            if top_up.next_retry_at is not None and top_up.next_retry_at > now:
                self._schedule(app_id, user_id, top_up.next_retry_at)
                return "waiting"
            balance = self._bridge.run(self._credits.balance(app.context(), user_id)).balance
            if balance >= self.threshold(app, top_up):
                self._finish_armed(app, user_id, top_up)
                return "not_needed"
            spent = self._billing.auto_top_up_spent_today(app_id, user_id)
            limit = app.auto_top_up_daily_limit_cents
            if spent + top_up.purchase_amount_cents > limit:
                tomorrow = (now + timedelta(days=1)).replace(
                    hour=0, minute=0, second=0, microsecond=0
                )
                reason = f"daily auto top-up limit reached: {spent} of {limit} cents spent today"
                trigger = self._trigger(app_id, user_id)
                failed = _event(
                    "auto_top_up.failed", app_id, user_id, top_up, now, trigger,
                    f"capped {now.date()}",
                    reason=reason, status="capped", next_retry_at=tomorrow,
                )  # fmt: skip
                self._billing.record_top_up(
                    app_id, user_id, failed, last_failure_reason=reason, next_retry_at=tomorrow
                )
                self._schedule(app_id, user_id, tomorrow)
                return "capped"
            return self._charge(app, user_id, top_up, now)

    def _charge(self, app: App, user_id: str, top_up: AutoTopUp, now: datetime) -> str:
        trigger = self._trigger(app.app_id, user_id)
        attempt = TOP_UP_ROUNDS - top_up.retries_remaining
        failures = []
        for card in self._purchases.cards(app, user_id):
            # One key per trigger, round and card: a job run again after a crash replays its
            # charges instead of making new ones.
            key = f"auto-top-up:{trigger}:{attempt}:{card.id}"
            try:
                result = self._purchases.purchase(
                    app, user_id, top_up.purchase_amount_cents, card.id, key,
                    source="auto_top_up",
                )  # fmt: skip
            except PaymentDeclinedError as exc:
                failures.append(f"{_describe(card)} declined ({exc.decline_code})")
                continue
            if result.status == "requires_action":
                failures.append(f"{_describe(card)} needs its holder to authenticate")
                continue
            succeeded = _event(
                "auto_top_up.succeeded", app.app_id, user_id, top_up, now, trigger, attempt,
                purchase_id=result.purchase_id, credits=result.credits_purchased,
                payment_intent_id=result.payment_intent_id,
            )  # fmt: skip
            self._billing.record_top_up(
                app.app_id, user_id, succeeded, status="active", last_failure_reason=None,
                retries_remaining=TOP_UP_ROUNDS, next_retry_at=None, last_top_up_at=now,
            )  # fmt: skip
            self._finish_armed(app, user_id, top_up)
            return "succeeded"
        reason = "; ".join(failures) or "no payment method on file"
        remaining = top_up.retries_remaining - 1
        if remaining <= 0:
            paused = _event(
                "auto_top_up.failed", app.app_id, user_id, top_up, now, trigger, attempt,
                reason=reason, status="paused", next_retry_at=None,
            )  # fmt: skip
            self._billing.record_top_up(
                app.app_id, user_id, paused, status="paused", last_failure_reason=reason,
                retries_remaining=0, next_retry_at=None,
            )  # fmt: skip
            self._finish(app.app_id, user_id, disarm=True)
            return "paused"
        retry_at = now + timedelta(seconds=self._retry_seconds * 2**attempt)
        retrying = _event(
            "auto_top_up.failed", app.app_id, user_id, top_up, now, trigger, attempt,
            reason=reason, status="retrying", next_retry_at=retry_at,
        )  # fmt: skip
        self._billing.record_top_up(
            app.app_id, user_id, retrying, status="retrying", last_failure_reason=reason,
            retries_remaining=remaining, next_retry_at=retry_at,
        )  # fmt: skip
        self._schedule(app.app_id, user_id, retry_at)
        return "retrying"

    def _trigger(self, app_id: str, user_id: str) -> str:
        """What started this top-up: the deduct that set `pending`, or a fresh id without one."""
        keys = account_keys(app_id, user_id)
        self._redis.hsetnx(keys.top_up(), "pending", f"job-{uuid.uuid4()}")
        trigger: Any = self._redis.hget(keys.top_up(), "pending")
        return str(trigger.decode() if isinstance(trigger, bytes) else trigger)

    def _schedule(self, app_id: str, user_id: str, when: datetime) -> None:
        keys = account_keys(app_id, user_id)
        self._redis.zadd(keys.top_up_due(), {keys.top_up_member(): int(when.timestamp() * 1000)})

    def _finish(self, app_id: str, user_id: str, *, disarm: bool = False) -> None:
        """The top-up is over: the next deduct below the threshold may start another, unless
        `disarm` (disabled or paused) takes the threshold away."""
        keys = account_keys(app_id, user_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(keys.top_up(), "pending", *(["threshold"] if disarm else []))
        pipe.zrem(keys.top_up_due(), keys.top_up_member())
        pipe.execute()

    def _finish_armed(self, app: App, user_id: str, top_up: AutoTopUp) -> None:
        """_finish, auto top-up staying on. A deduct that went below the threshold while this
        top-up ran found it pending and started nothing: look at the balance once more."""
        self._finish(app.app_id, user_id)
        balance = self._bridge.run(self._credits.balance(app.context(), user_id)).balance
        keys = account_keys(app.app_id, user_id)
        if balance < self.threshold(app, top_up) and self._redis.hsetnx(
            keys.top_up(), "pending", f"job-{uuid.uuid4()}"
        ):
            self._schedule(app.app_id, user_id, datetime.now(UTC))


def _event(
    kind: str,
    app_id: str,
    user_id: str,
    top_up: AutoTopUp,
    now: datetime,
    trigger: str,
    attempt: object,
    **details: Any,
) -> Event:
    """An auto top-up's outcome as an event; the same round of the same trigger is one event."""
    data = {
        "app_id": app_id,
        "user_id": user_id,
        "amount_cents": top_up.purchase_amount_cents,
        **{k: v.isoformat() if isinstance(v, datetime) else v for k, v in details.items()},
    }
    return Event(
        event_id=event_id(kind, app_id, user_id, trigger, attempt),
        app_id=app_id,
        user_id=user_id,
        type=kind,
        sequence=None,
        data=data,
        created_at_ms=int(now.timestamp() * 1000),
    )


def _describe(card: Card) -> str:
    return f"{card.card_brand or card.method_type} ending {card.card_last4 or '?'}"
