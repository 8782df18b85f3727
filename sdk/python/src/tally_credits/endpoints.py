"""What each call sends and how its answer is read, once for both clients.

A `Call` is a plain description (method, path, body, query, idempotency key, which statuses
are answers rather than errors, and how to read them); the transports in `transport.py` send
it. `Tally` and `AsyncTally` only pick the call and hand it to their transport.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

from .models import (
    AddResult,
    Balance,
    BatchItem,
    BatchOperation,
    BatchResult,
    CaptureResult,
    DeductResult,
    HistoryPage,
    Hold,
    HoldCreated,
    HoldList,
    RefundResult,
    ReleaseResult,
    Transaction,
    iso_datetime,
)

T = TypeVar("T")

OK = frozenset({200})


@dataclass(frozen=True)
class Reply:
    """An answer, as the parsers see it."""

    status: int
    body: Mapping[str, Any]
    request_id: str | None
    replayed: bool


@dataclass(frozen=True)
class Call(Generic[T]):
    method: Literal["GET", "POST"]
    path: str
    parse: Callable[[Reply], T]
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str | int] | None = None
    # Sent as the Idempotency-Key header, the same on every attempt of this call.
    idempotency_key: str | None = None
    # Statuses read by `parse`; any other is raised as an error.
    accept: frozenset[int] = OK


def new_key() -> str:
    return str(uuid.uuid4())


def _entry(
    user_id: str,
    amount: int,
    description: str | None,
    reference_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    # Unset fields are left out rather than sent as null.
    body: dict[str, Any] = {"user_id": user_id, "amount": amount}
    if description is not None:
        body["description"] = description
    if reference_id is not None:
        body["reference_id"] = reference_id
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _key(idempotency_key: str | None) -> str:
    return new_key() if idempotency_key is None else idempotency_key


def add(
    user_id: str,
    amount: int,
    description: str | None,
    reference_id: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
    expires_at: datetime | str | None = None,
) -> Call[AddResult]:
    entry = _entry(user_id, amount, description, reference_id, metadata)
    if expires_at is not None:
        entry["expires_at"] = iso_datetime("expires_at", expires_at)
    return _keyed("/credits/add", AddResult.from_json, entry, idempotency_key, OK)


def deduct(
    user_id: str,
    amount: int,
    description: str | None,
    reference_id: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[DeductResult]:
    entry = _entry(user_id, amount, description, reference_id, metadata)
    # 402 is an answer: success False, nothing written.
    accept = frozenset({200, 402})
    return _keyed("/credits/deduct", DeductResult.from_json, entry, idempotency_key, accept)


def _keyed(
    path: str,
    parse: Callable[..., T],
    body: dict[str, Any],
    idempotency_key: str | None,
    accept: frozenset[int],
) -> Call[T]:
    """A write (an add, a deduct, a hold and its capture or release): a POST with an
    Idempotency-Key, its answer read by `parse`."""
    return Call(
        "POST",
        path,
        lambda r: parse(r.body, replayed=r.replayed, request_id=r.request_id),
        body=body,
        idempotency_key=_key(idempotency_key),
        accept=accept,
    )


def refund(
    ledger_id: str, description: str | None, idempotency_key: str | None
) -> Call[RefundResult]:
    body: dict[str, Any] = {"ledger_id": ledger_id}
    if description is not None:
        body["description"] = description
    return Call(
        "POST",
        "/credits/refund",
        lambda r: RefundResult.from_json(r.body, replayed=r.replayed, request_id=r.request_id),
        body=body,
        idempotency_key=_key(idempotency_key),
    )


def batch(operations: Sequence[BatchOperation | Mapping[str, Any]]) -> Call[BatchResult]:
    """A batch takes no Idempotency-Key header: each operation gets its own key here, once,
    so that every attempt sends the same body."""
    sent: list[dict[str, Any]] = []
    for operation in operations:
        op = operation.to_json() if isinstance(operation, BatchOperation) else dict(operation)
        if isinstance(op.get("expires_at"), datetime):
            op["expires_at"] = iso_datetime("expires_at", op["expires_at"])
        if op.get("idempotency_key") is None:
            op["idempotency_key"] = new_key()
        sent.append(op)
    keys = [op["idempotency_key"] for op in sent]

    def parse(reply: Reply) -> BatchResult:
        results = reply.body["results"]
        return BatchResult(
            results=tuple(
                BatchItem.from_json(item, idempotency_key=key)
                for item, key in zip(results, keys, strict=True)
            ),
            request_id=reply.request_id,
        )

    return Call("POST", "/credits/batch", parse, body={"operations": sent})


def balance(user_id: str) -> Call[Balance]:
    return Call(
        "GET",
        "/credits/balance",
        lambda r: Balance.from_json(r.body, request_id=r.request_id),
        params={"user_id": user_id},
    )


def history(user_id: str, limit: int, offset: int) -> Call[HistoryPage]:
    return Call(
        "GET",
        "/credits/history",
        lambda r: HistoryPage.from_json(r.body, request_id=r.request_id),
        params={"user_id": user_id, "limit": limit, "offset": offset},
    )


def hold(
    user_id: str,
    amount: int,
    ttl_seconds: int | None,
    description: str | None,
    reference_id: str | None,
    metadata: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[HoldCreated]:
    """A 402 (too few credits available) is raised as InsufficientBalance: there is no hold
    to work under."""
    body = _entry(user_id, amount, description, reference_id, metadata)
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return _keyed("/credits/holds", HoldCreated.from_json, body, idempotency_key, OK)


def capture_hold(
    hold_id: str, amount: int | None, description: str | None, idempotency_key: str | None
) -> Call[CaptureResult]:
    body: dict[str, Any] = {}
    if amount is not None:
        body["amount"] = amount
    if description is not None:
        body["description"] = description
    path = _hold_path(hold_id, "/capture")
    return _keyed(path, CaptureResult.from_json, body, idempotency_key, OK)


def release_hold(
    hold_id: str, description: str | None, idempotency_key: str | None
) -> Call[ReleaseResult]:
    body: dict[str, Any] = {} if description is None else {"description": description}
    path = _hold_path(hold_id, "/release")
    return _keyed(path, ReleaseResult.from_json, body, idempotency_key, OK)


def get_hold(hold_id: str) -> Call[Hold]:
    return Call(
        "GET", _hold_path(hold_id), lambda r: Hold.from_json(r.body, request_id=r.request_id)
    )


def list_holds(user_id: str) -> Call[HoldList]:
    return Call(
        "GET",
        "/credits/holds",
        lambda r: HoldList.from_json(r.body, request_id=r.request_id),
        params={"user_id": user_id},
    )


def _hold_path(hold_id: str, action: str = "") -> str:
    # A hold id is URL-safe as Tally makes it; one that is not must still name one path.
    return f"/credits/holds/{quote(hold_id, safe='')}{action}"


# reauth's names: the same calls, read the way reauth's SDK answers.


def charge(user_id: str, amount: int, request_uuid: str | None, note: str | None) -> Call[int]:
    """A deduct whose 402 is raised (InsufficientBalance); answers the new balance."""
    return Call(
        "POST",
        "/credits/deduct",
        lambda r: _balance_after(r),
        body=_entry(user_id, amount, note),
        idempotency_key=_key(request_uuid),
    )


def deposit(user_id: str, amount: int, request_uuid: str | None, note: str | None) -> Call[int]:
    return Call(
        "POST",
        "/credits/add",
        lambda r: _balance_after(r),
        body=_entry(user_id, amount, note),
        idempotency_key=_key(request_uuid),
    )


def get_balance(user_id: str) -> Call[int]:
    call = balance(user_id)
    return Call(call.method, call.path, lambda r: call.parse(r).balance, params=call.params)


def get_transactions(user_id: str, limit: int, offset: int) -> Call[list[Transaction]]:
    call = history(user_id, limit, offset)
    return Call(
        call.method,
        call.path,
        lambda r: [Transaction.of(entry) for entry in call.parse(r).entries],
        params=call.params,
    )


def _balance_after(reply: Reply) -> int:
    value = reply.body["balance_after"]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("balance_after is not an integer in Tally's answer")
    return value
