"""Typed results and batch operations. Field names are the API's.

Every result read from a single answer carries `request_id` (Tally's `X-Request-Id`) and, for
writes, `replayed` (True when Tally answered from its idempotency store: nothing was applied
this time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class AddResult:
    ledger_id: str
    user_id: str
    amount: int
    balance_after: int
    replayed: bool = False
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, replayed: bool, request_id: str | None) -> AddResult:
        return cls(
            ledger_id=str(body["ledger_id"]),
            user_id=str(body["user_id"]),
            amount=_int(body, "amount"),
            balance_after=_int(body, "balance_after"),
            replayed=replayed,
            request_id=request_id,
        )


@dataclass(frozen=True)
class DeductResult:
    """`success` is False when the user had too few credits (HTTP 402): then `error` and
    `balance` (and `floor` with overdraft) say so, and nothing was written."""

    success: bool
    ledger_id: str | None = None
    balance_before: int | None = None
    balance_after: int | None = None
    auto_top_up_started: bool = False
    error: str | None = None
    balance: int | None = None
    floor: int | None = None
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
    one before the first attempt (see `BatchItem.idempotency_key`)."""

    type: Literal["add", "deduct"]
    user_id: str
    amount: int
    description: str | None = None
    reference_id: str | None = None
    metadata: Mapping[str, Any] | None = None
    idempotency_key: str | None = None

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
class Balance:
    user_id: str
    balance: int
    updated_at: str | None
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, body: JSON, *, request_id: str | None) -> Balance:
        return cls(
            user_id=str(body["user_id"]),
            balance=_int(body, "balance"),
            updated_at=_opt_str(body, "updated_at"),
            request_id=request_id,
        )


@dataclass(frozen=True)
class HistoryEntry:
    """A ledger entry. `amount` is signed; `amount_delta` and `reason` repeat `amount` and
    `description` under reauth's names. `created_at` is ISO 8601 (UTC, milliseconds)."""

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

    @classmethod
    def from_json(cls, body: JSON) -> HistoryEntry:
        metadata = body.get("metadata")
        return cls(
            ledger_id=str(body["ledger_id"]),
            kind=str(body["kind"]),
            amount=_int(body, "amount"),
            amount_delta=_int(body, "amount_delta"),
            reason=_opt_str(body, "reason"),
            balance_after=_int(body, "balance_after"),
            description=_opt_str(body, "description"),
            reference_id=_opt_str(body, "reference_id"),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else None,
            refund_of=_opt_str(body, "refund_of"),
            created_at=_opt_str(body, "created_at"),
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
