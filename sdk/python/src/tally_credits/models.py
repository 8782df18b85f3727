"""Typed results and batch operations. Field names are the API's.

Every result read from a single answer carries `request_id` (Tally's `X-Request-Id`) and, for
writes, `replayed` (True when Tally answered from its idempotency store: nothing was applied
this time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

JSON = Mapping[str, Any]


def _int(body: JSON, name: str) -> int:
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} is not an integer in Tally's answer")
    return value


def _opt_int(body: JSON, name: str) -> int | None:
    return _int(body, name) if body.get(name) is not None else None


def _opt_str(body: JSON, name: str) -> str | None:
    value = body.get(name)
    return None if value is None else str(value)


def _opt_metadata(body: JSON) -> Mapping[str, Any] | None:
    metadata = body.get("metadata")
    return dict(metadata) if isinstance(metadata, Mapping) else None


def iso_datetime(name: str, value: datetime | str) -> str:
    """A moment as Tally takes it: ISO 8601 with a time zone. A string is sent as given (Tally
    checks it); a `datetime` must carry its time zone, which a naive one does not say."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} needs a time zone, e.g. datetime(..., tzinfo=UTC)")
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise TypeError(f"{name} must be a datetime or an ISO 8601 string")


@dataclass(frozen=True)
class AddResult:
    """Credits added with `expires_at` are a grant: `grant_id` (the entry's `ledger_id`) and
    `expires_at` say which and until when; both are None for credits that never expire."""

    ledger_id: str
    user_id: str
    amount: int
    balance_after: int
    grant_id: str | None = None
    expires_at: str | None = None
    replayed: bool = False
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, replayed: bool, request_id: str | None) -> AddResult:
        return cls(
            ledger_id=str(body["ledger_id"]),
            user_id=str(body["user_id"]),
            amount=_int(body, "amount"),
            balance_after=_int(body, "balance_after"),
            grant_id=_opt_str(body, "grant_id"),
            expires_at=_opt_str(body, "expires_at"),
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True)
class DeductResult:
    """`success` is False when the user had too few credits (HTTP 402): then `error`,
    `balance` and `available` (the balance less active holds; and `floor` with overdraft) say
    so, and nothing was written."""

    success: bool
    ledger_id: str | None = None
    balance_before: int | None = None
    balance_after: int | None = None
    auto_top_up_started: bool = False
    error: str | None = None
    balance: int | None = None
    floor: int | None = None
    available: int | None = None
    replayed: bool = False
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, replayed: bool, request_id: str | None) -> DeductResult:
        if body.get("success") is not True:
            return cls(
                success=False,
                error=_opt_str(body, "error"),
                balance=_opt_int(body, "balance"),
                floor=_opt_int(body, "floor"),
                available=_opt_int(body, "available"),
                replayed=replayed,
                request_id=request_id,
            )
        return cls(
            success=True,
            ledger_id=str(body["ledger_id"]),
            balance_before=_int(body, "balance_before"),
            balance_after=_int(body, "balance_after"),
            auto_top_up_started=body.get("auto_top_up_started") is True,
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True)
class RefundResult:
    """`amount` is the signed change the refund made (positive when a deduct is refunded)."""

    ledger_id: str
    refunded_ledger_id: str
    user_id: str
    amount: int
    balance_after: int
    replayed: bool = False
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, replayed: bool, request_id: str | None) -> RefundResult:
        return cls(
            ledger_id=str(body["ledger_id"]),
            refunded_ledger_id=str(body["refunded_ledger_id"]),
            user_id=str(body["user_id"]),
            amount=_int(body, "amount"),
            balance_after=_int(body, "balance_after"),
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True)
class BatchOperation:
    """One add or deduct of a batch. Without an `idempotency_key` the SDK gives it a fresh
    one before the first attempt (see `BatchItem.idempotency_key`). An add with `expires_at`
    (a `datetime` with its time zone, or an ISO 8601 string) is a grant, as `Credits.add`."""

    type: Literal["add", "deduct"]
    user_id: str
    amount: int
    description: str | None = None
    reference_id: str | None = None
    metadata: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    expires_at: datetime | str | None = None

    def __post_init__(self) -> None:
        if self.type not in ("add", "deduct"):
            raise ValueError('a batch operation\'s type is "add" or "deduct"')

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "user_id": self.user_id, "amount": self.amount}
        for name in ("description", "reference_id", "idempotency_key"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.metadata is not None:
            body["metadata"] = dict(self.metadata)
        if self.expires_at is not None:
            body["expires_at"] = iso_datetime("expires_at", self.expires_at)
        return body


@dataclass(frozen=True)
class BatchItem:
    """The outcome of one batch operation. A refused one has `success` False, its `status`
    (402, or 503 when it alone could not be applied: send it again with the same
    `idempotency_key`) and `error`."""

    success: bool
    status: int
    idempotency_key: str | None
    ledger_id: str | None = None
    user_id: str | None = None
    amount: int | None = None
    balance_before: int | None = None
    balance_after: int | None = None
    replayed: bool = False
    error: str | None = None
    balance: int | None = None
    floor: int | None = None
    available: int | None = None

    @classmethod
    def from_json(cls, body: JSON, *, idempotency_key: str | None) -> BatchItem:
        if body.get("success") is not True:
            return cls(
                success=False,
                status=_int(body, "status"),
                idempotency_key=idempotency_key,
                error=_opt_str(body, "error"),
                balance=_opt_int(body, "balance"),
                floor=_opt_int(body, "floor"),
                available=_opt_int(body, "available"),
            )
        return cls(
            success=True,
            status=200,
            idempotency_key=idempotency_key,
            ledger_id=str(body["ledger_id"]),
            user_id=str(body["user_id"]),
            amount=_int(body, "amount"),
            balance_before=_int(body, "balance_before"),
            balance_after=_int(body, "balance_after"),
            replayed=body.get("replayed") is True,
        )


@dataclass(frozen=True)
class BatchResult:
    """One item per operation, in order."""

    results: tuple[BatchItem, ...]
    request_id: str | None = field(default=None, compare=False)

    @property
    def failed(self) -> tuple[BatchItem, ...]:
        return tuple(item for item in self.results if not item.success)


@dataclass(frozen=True)
class Grant:
    """Credits that expire: what is left of them (less what holds reserve) and when."""

    grant_id: str
    remaining: int
    expires_at: str

    @classmethod
    def from_json(cls, body: JSON) -> Grant:
        return cls(
            grant_id=str(body["grant_id"]),
            remaining=_int(body, "remaining"),
            expires_at=str(body["expires_at"]),
        )


@dataclass(frozen=True)
class Balance:
    """`available` is the balance less what active holds reserve (`held`): what a deduct or a
    hold may spend. `grants` are the credits that expire, soonest first."""

    user_id: str
    balance: int
    updated_at: str | None
    available: int
    held: int
    grants: tuple[Grant, ...]
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, request_id: str | None) -> Balance:
        balance = _int(body, "balance")
        available = _opt_int(body, "available")
        return cls(
            user_id=str(body["user_id"]),
            balance=balance,
            updated_at=_opt_str(body, "updated_at"),
            # A Tally from before holds answers neither: nothing is held there.
            available=balance if available is None else available,
            held=_opt_int(body, "held") or 0,
            grants=tuple(Grant.from_json(grant) for grant in body.get("grants") or ()),
            request_id=request_id,
        )


@dataclass(frozen=True)
class GrantPart:
    """What an entry took from (negative) or gave back to one grant; on a hold, reserved."""

    grant_id: str
    amount: int

    @classmethod
    def from_json(cls, body: JSON) -> GrantPart:
        return cls(grant_id=str(body["grant_id"]), amount=_int(body, "amount"))


@dataclass(frozen=True)
class HistoryEntry:
    """A ledger entry. `amount` is signed; `amount_delta` and `reason` repeat `amount` and
    `description` under reauth's names. `created_at` is ISO 8601 (UTC, milliseconds).

    A hold's entries carry its `hold_id`, and `held`, the change of held credits (+amount when
    it is made, -amount when it is captured, released or expires). `expires_at` is a grant's
    or a hold's; `grants` lists what the entry took from or gave to each grant (None when
    none)."""

    ledger_id: str
    kind: str
    amount: int
    amount_delta: int
    reason: str | None
    balance_after: int
    description: str | None
    reference_id: str | None
    metadata: Mapping[str, Any] | None
    refund_of: str | None
    created_at: str | None
    hold_id: str | None = None
    held: int | None = None
    expires_at: str | None = None
    grants: tuple[GrantPart, ...] | None = None

    @classmethod
    def from_json(cls, body: JSON) -> HistoryEntry:
        grants = body.get("grants")
        return cls(
            ledger_id=str(body["ledger_id"]),
            kind=str(body["kind"]),
            amount=_int(body, "amount"),
            amount_delta=_int(body, "amount_delta"),
            reason=_opt_str(body, "reason"),
            balance_after=_int(body, "balance_after"),
            description=_opt_str(body, "description"),
            reference_id=_opt_str(body, "reference_id"),
            metadata=_opt_metadata(body),
            refund_of=_opt_str(body, "refund_of"),
            created_at=_opt_str(body, "created_at"),
            hold_id=_opt_str(body, "hold_id"),
            held=_opt_int(body, "held"),
            expires_at=_opt_str(body, "expires_at"),
            grants=None if grants is None else tuple(GrantPart.from_json(g) for g in grants),
        )


@dataclass(frozen=True)
class HistoryPage:
    """Entries newest first."""

    user_id: str
    limit: int
    offset: int
    has_more: bool
    entries: tuple[HistoryEntry, ...]
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, request_id: str | None) -> HistoryPage:
        return cls(
            user_id=str(body["user_id"]),
            limit=_int(body, "limit"),
            offset=_int(body, "offset"),
            has_more=body.get("has_more") is True,
            entries=tuple(HistoryEntry.from_json(entry) for entry in body["entries"]),
            request_id=request_id,
        )


@dataclass(frozen=True)
class HoldCreated:
    """The answer to a hold: `amount` credits reserved until `expires_at`; `balance` is
    unchanged, `available` is the balance less every active hold, this one included."""

    hold_id: str
    user_id: str
    amount: int
    expires_at: str
    balance: int
    available: int
    replayed: bool = False
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, replayed: bool, request_id: str | None) -> HoldCreated:
        return cls(
            hold_id=str(body["hold_id"]),
            user_id=str(body["user_id"]),
            amount=_int(body, "amount"),
            expires_at=str(body["expires_at"]),
            balance=_int(body, "balance"),
            available=_int(body, "available"),
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True)
class CaptureResult:
    """A captured hold: `captured` credits spent (one deduct entry, `ledger_id`), `released`
    the rest of the hold given back."""

    ledger_id: str
    hold_id: str
    user_id: str
    captured: int
    released: int
    balance_before: int
    balance_after: int
    available: int
    auto_top_up_started: bool = False
    replayed: bool = False
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, replayed: bool, request_id: str | None) -> CaptureResult:
        return cls(
            ledger_id=str(body["ledger_id"]),
            hold_id=str(body["hold_id"]),
            user_id=str(body["user_id"]),
            captured=_int(body, "captured"),
            released=_int(body, "released"),
            balance_before=_int(body, "balance_before"),
            balance_after=_int(body, "balance_after"),
            available=_int(body, "available"),
            auto_top_up_started=body.get("auto_top_up_started") is True,
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True)
class ReleaseResult:
    """A released hold: all its `released` credits are available again; `balance` is
    unchanged. `ledger_id` is the release's entry."""

    ledger_id: str
    hold_id: str
    user_id: str
    released: int
    balance: int
    available: int
    replayed: bool = False
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, replayed: bool, request_id: str | None) -> ReleaseResult:
        return cls(
            ledger_id=str(body["ledger_id"]),
            hold_id=str(body["hold_id"]),
            user_id=str(body["user_id"]),
            released=_int(body, "released"),
            balance=_int(body, "balance"),
            available=_int(body, "available"),
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True)
class Hold:
    """A hold as Tally keeps it. `status` is "active", "captured", "released" or "expired";
    `ledger_id` is the entry that made it, `settled_by` the one that captured or released it
    (None while active or once expired), `captured` what its capture spent."""

    hold_id: str
    user_id: str
    amount: int
    status: str
    expires_at: str
    created_at: str
    description: str | None
    reference_id: str | None
    metadata: Mapping[str, Any] | None
    ledger_id: str
    settled_by: str | None
    captured: int | None
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, request_id: str | None = None) -> Hold:
        return cls(
            hold_id=str(body["hold_id"]),
            user_id=str(body["user_id"]),
            amount=_int(body, "amount"),
            status=str(body["status"]),
            expires_at=str(body["expires_at"]),
            created_at=str(body["created_at"]),
            description=_opt_str(body, "description"),
            reference_id=_opt_str(body, "reference_id"),
            metadata=_opt_metadata(body),
            ledger_id=str(body["ledger_id"]),
            settled_by=_opt_str(body, "settled_by"),
            captured=_opt_int(body, "captured"),
            request_id=request_id,
        )


@dataclass(frozen=True)
class HoldList:
    """A user's active holds, soonest expiry first."""

    user_id: str
    holds: tuple[Hold, ...]
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, request_id: str | None) -> HoldList:
        return cls(
            user_id=str(body["user_id"]),
            holds=tuple(Hold.from_json(hold) for hold in body["holds"]),
            request_id=request_id,
        )


@dataclass(frozen=True)
class Transaction:
    """A ledger entry under reauth's names: `id` is Tally's `ledger_id`."""

    id: str
    amount_delta: int
    reason: str | None
    balance_after: int
    created_at: str | None

    @classmethod
    def of(cls, entry: HistoryEntry) -> Transaction:
        return cls(
            id=entry.ledger_id,
            amount_delta=entry.amount_delta,
            reason=entry.reason,
            balance_after=entry.balance_after,
            created_at=entry.created_at,
        )
