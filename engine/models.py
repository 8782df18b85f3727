"""Plain values passed between the engine and its callers."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

MAX_AMOUNT = 2**53 - 1  # exact in Lua's doubles and in JavaScript clients


@dataclass(frozen=True, slots=True)
class AppContext:
    """What the hot path needs to know of the app an API key belongs to."""

    app_id: str
    overdraft_limit: int


@dataclass(frozen=True, slots=True)
class App:
    app_id: str
    name: str
    overdraft_limit: int
    credit_rate: Decimal | None
    stripe_webhook_secret: str | None
    polar_webhook_secret: str | None
    lemonsqueezy_webhook_secret: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    app_id: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class EntryResult:
    """The outcome of one add or deduct; `replayed` when an idempotency key returned it again."""

    ledger_id: str
    user_id: str
    kind: str
    amount: int  # signed: negative for deducts
    balance_before: int
    balance_after: int
    created_at_ms: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class Balance:
    user_id: str
    balance: int
    updated_at_ms: int | None
