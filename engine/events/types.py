"""What Tally tells an app's backend about: the event types and one event."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

EVENT_TYPES = (
    "balance.low",
    "balance.depleted",
    "credits.added",
    "credits.refunded",
    "payment.credited",
    "payment.refunded",
    "auto_top_up.succeeded",
    "auto_top_up.failed",
    "hold.expired",
    "grant.expired",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One event; its id is made from what caused it, so a cause seen twice is one event."""

    event_id: str
    app_id: str
    user_id: str | None
    type: str
    # The user's ledger seq the event follows: a receiver orders one user's events by it.
    sequence: int | None
    data: dict[str, Any]
    created_at_ms: int
    # The entry that caused it, if one did: a batch PostgreSQL refuses takes its events along.
    ledger_id: str | None = None

    def body(self) -> dict[str, Any]:
        """What is sent: {type, timestamp, data}, per the Standard Webhooks specification."""
        return {"type": self.type, "timestamp": iso8601(self.created_at_ms), "data": self.data}


def iso8601(epoch_ms: int) -> str:
    stamp = datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")
