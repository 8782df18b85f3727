"""Plain values passed between the engine and its callers."""

import json
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime
from decimal import Decimal
from typing import Any

MAX_AMOUNT = 2**53 - 1  # exact in Lua's doubles and in JavaScript clients
# The longest text each field of an entry takes; the API validates with the same numbers.
MAX_USER_ID = 256
MAX_DESCRIPTION = 1000
MAX_REFERENCE_ID = 256
MAX_IDEMPOTENCY_KEY = 255


def text_problem(name: str, value: str, max_length: int) -> str | None:
    """What is wrong with an identifier a person typed (a user id, an app name), or None.

    1 to max_length characters of printable Unicode, no leading or trailing whitespace: "bob "
    and "bob" would otherwise be two accounts nobody can tell apart. Compared byte for byte,
    with no Unicode normalisation.
    """
    if not 1 <= len(value) <= max_length:
        return f"{name} must be 1 to {max_length} characters"
    if "\x00" in value:
        return f"{name} must not contain NUL characters"
    if not value.isprintable():
        return f"{name} must be printable text: no control characters or line breaks"
    if value != value.strip():
        return f"{name} must not start or end with whitespace"
    return None


# An app's credits configuration, as GET /credits/config shows it (with overdraft_limit).
CREDITS_CONFIG = (
    "credits_enabled",
    "credits_per_dollar",
    "display_name",
    "display_symbol",
    "display_symbol_position",
    "display_decimals",
    "min_purchase_cents",
    "max_purchase_cents",
    "overdraft_enabled",
    "manual_top_up_available",
    "auto_top_up_available",
    "currency",
)


@dataclass(frozen=True, slots=True)
class AppContext:
    """What the hot path needs to know of the app an API key belongs to."""

    app_id: str
    overdraft_limit: int
    # Deducts check the user's auto top-up threshold only in apps that offer auto top-up.
    auto_top_up: bool = False
    # Where balance.low fires (the scripts decide it); () for none.
    low_balance_thresholds: tuple[int, ...] = ()
    # The plan applies to what the app's API keys do; Tally's own writes (payments, top-ups,
    # an operator's) carry None and are never refused by it.
    plan_monthly_operations: int | None = None
    plan_max_users: int | None = None
    # The API key's: requests per second (burst twice that), None for no limit.
    key_id: str | None = None
    rate_limit: int | None = None


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
    credits_enabled: bool
    credits_per_dollar: Decimal | None
    display_name: str
    display_symbol: str | None
    display_symbol_position: str
    display_decimals: int
    min_purchase_cents: int
    max_purchase_cents: int
    overdraft_enabled: bool
    manual_top_up_available: bool
    auto_top_up_available: bool
    # Made with the app's first client token (engine/accounts/apps.py).
    client_token_secret: str | None
    cors_origins: list[str]
    stripe_secret_key: str | None
    currency: str
    auto_top_up_daily_limit_cents: int
    low_balance_thresholds: list[int]
    plan_max_users: int | None
    plan_monthly_operations: int | None

    def context(self) -> AppContext:
        """The app as Tally's own writes see it: never held to the app's plan."""
        return AppContext(
            self.app_id,
            self.overdraft_limit if self.overdraft_enabled else 0,
            self.auto_top_up_available and self.credits_enabled,
            tuple(self.low_balance_thresholds),
        )

    @property
    def webhook_credit_rate(self) -> Decimal | None:
        """Credits per major currency unit for payments without tally_credits."""
        return self.credit_rate if self.credit_rate is not None else self.credits_per_dollar


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    app_id: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    rate_limit: int | None


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
    top_up_started: bool = False  # this deduct left the balance below the auto top-up threshold
    available: int | None = None  # balance - held after the entry
    expires_at_ms: int | None = None  # a grant's expiry
    hold_id: str | None = None
    held: int | None = None  # change of the held credits (a hold: +amount; its settle: -amount)


@dataclass(frozen=True, slots=True)
class Grant:
    """Credits that expire: what is left of them (not reserved by a hold), and when."""

    grant_id: str  # the ledger_id of the add that made it
    remaining: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Balance:
    user_id: str
    balance: int
    updated_at_ms: int | None
    held: int = 0
    grants: tuple[Grant, ...] = ()

    @property
    def available(self) -> int:
        return self.balance - self.held


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    ledger_id: str
    app_id: str
    user_id: str
    # add, deduct, refund, payment_refund; expire (a grant's remainder at its expiry); hold,
    # release, hold_expire (amount 0: they change what is held, not the balance)
    kind: str
    amount: int  # signed: negative takes credits away
    balance_after: int
    description: str | None
    reference_id: str | None
    metadata: dict[str, Any] | None
    idempotency_key: str | None
    refund_of: str | None
    seq: int  # position in the account's history, from 1
    created_at_ms: int
    hold_id: str | None = None
    held: int | None = None  # change of the account's held credits
    expires_at_ms: int | None = None  # a grant's or a hold's expiry
    # Grant credits this entry took (negative) or gave back (positive); on a hold, what it
    # reserved (docs/holds-and-grants.md)
    grants: list[dict[str, Any]] | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> "LedgerEntry":
        """Parse an entry as the Lua scripts store it; json keeps big metadata integers exact."""
        fields = json.loads(text)
        fields["created_at_ms"] = fields.pop("created_at")
        if "expires_at" in fields:
            fields["expires_at_ms"] = fields.pop("expires_at")
        return cls(**fields)

    def to_json(self) -> str:
        """The entry as the Lua scripts write it (from_json reads it back)."""
        fields = {field.name: getattr(self, field.name) for field in dataclass_fields(self)}
        fields["created_at"] = fields.pop("created_at_ms")
        fields["expires_at"] = fields.pop("expires_at_ms")
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Hold:
    """Credits reserved for work whose cost is known only afterwards."""

    hold_id: str
    user_id: str
    amount: int
    status: str  # active, captured, released, expired
    expires_at_ms: int
    created_at_ms: int
    description: str | None
    reference_id: str | None
    metadata: dict[str, Any] | None
    ledger_id: str  # the hold's own entry
    settled_by: str | None = None  # the ledger_id of the entry that captured or released it
    captured: int | None = None


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold: Hold
    balance: int
    available: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class RefundResult:
    refund: EntryResult
    refunded_ledger_id: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    user_id: str
    entries: list[LedgerEntry]
    limit: int
    offset: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class Operation:
    """One add or deduct of a batch."""

    kind: str  # "add" or "deduct"
    user_id: str
    amount: int
    description: str | None = None
    reference_id: str | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None
    expires_at_ms: int | None = None  # an add that is a grant
