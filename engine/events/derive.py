"""Events from what the scripts wrote: ledger entries, and the crossings of thresholds they
decided (lua/account.lua watch()). The worker derives them while it persists the entries, in
the same transaction, so an event exists exactly when its cause is in the ledger."""

import uuid
from typing import Any

from engine.events.types import Event, iso8601
from engine.models import LedgerEntry
from engine.payments.providers import PROVIDERS

# Event ids are names in this namespace: the same cause always gives the same id.
_NAMESPACE = uuid.UUID("6c1a2d4e-7f0b-4e55-9d1e-3b8f6a2c9e10")


def event_id(*cause: object) -> str:
    return "evt_" + uuid.uuid5(_NAMESPACE, ":".join(map(str, cause))).hex


def _paid(entry: LedgerEntry) -> bool:
    """Whether Tally credited a payment with this add (engine.payments.settle): its provider in
    the metadata and the idempotency key Tally gives a payment, which an add through the API
    would have to copy on purpose."""
    provider = entry.metadata.get("provider") if isinstance(entry.metadata, dict) else None
    return provider in PROVIDERS and entry.idempotency_key == f"{provider}:{entry.reference_id}"


def _type_of(entry: LedgerEntry) -> str | None:
    if entry.kind == "add":
        return "payment.credited" if _paid(entry) else "credits.added"
    return {
        "refund": "credits.refunded",
        "payment_refund": "payment.refunded",
        "hold_expire": "hold.expired",
        "expire": "grant.expired",
    }.get(entry.kind)


def entry_events(entry: LedgerEntry) -> list[Event]:
    kind = _type_of(entry)
    if kind is None:
        return []
    data: dict[str, Any] = {
        "app_id": entry.app_id,
        "user_id": entry.user_id,
        "ledger_id": entry.ledger_id,
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "sequence": entry.seq,
        "created_at": iso8601(entry.created_at_ms),
        "description": entry.description,
        "reference_id": entry.reference_id,
        "metadata": entry.metadata,
    }
    if entry.kind == "add" and entry.expires_at_ms is not None:
        data["grant_id"] = entry.ledger_id
        data["expires_at"] = iso8601(entry.expires_at_ms)
    if entry.refund_of is not None:
        data["refund_of"] = entry.refund_of
    if kind.startswith("payment.") and isinstance(entry.metadata, dict):
        data["provider"] = entry.metadata.get("provider")
        data["payment_id"] = entry.reference_id
    if entry.kind == "hold_expire":
        data["hold_id"] = entry.hold_id
        data["released"] = -(entry.held or 0)
    if entry.kind == "expire":
        data["grants"] = [
            {"grant_id": part["grant_id"], "amount": part["amount"]} for part in entry.grants or ()
        ]
    return [_event(kind, entry.ledger_id, entry, data)]


def crossing_events(crossing: dict[str, Any]) -> list[Event]:
    """balance.low per threshold crossed, and balance.depleted, from one crossing message."""
    base = {
        "app_id": crossing["app_id"],
        "user_id": crossing["user_id"],
        "ledger_id": crossing["ledger_id"],
        "sequence": crossing["seq"],
        "balance": crossing["balance"],
        "available": crossing["available"],
        "available_before": crossing["available_before"],
        "created_at": iso8601(crossing["created_at"]),
    }
    events = [
        _crossing("balance.low", crossing, base | {"threshold": threshold}, threshold)
        for threshold in crossing["thresholds"]
    ]
    if crossing["depleted"]:
        events.append(
            _crossing("balance.depleted", crossing, base | {"floor": crossing["floor"]}, "")
        )
    return events


def _crossing(kind: str, crossing: dict[str, Any], data: dict[str, Any], part: object) -> Event:
    return Event(
        event_id=event_id(kind, crossing["ledger_id"], part),
        app_id=crossing["app_id"],
        user_id=crossing["user_id"],
        type=kind,
        sequence=crossing["seq"],
        data=data,
        created_at_ms=crossing["created_at"],
        ledger_id=crossing["ledger_id"],
    )


def _event(kind: str, cause: str, entry: LedgerEntry, data: dict[str, Any]) -> Event:
    return Event(
        event_id=event_id(kind, cause),
        app_id=entry.app_id,
        user_id=entry.user_id,
        type=kind,
        sequence=entry.seq,
        data=data,
        created_at_ms=entry.created_at_ms,
        ledger_id=entry.ledger_id,
    )
