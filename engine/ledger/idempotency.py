"""Idempotency records: a repeated request gets its first reply back, rebuilt from the few
fields the scripts keep (lua/account.lua replay()) and what the repeated request says itself.

A record holds what the first reply showed that the request does not: the entry's ledger id,
amount, balances and when it was made. The entry itself is in PostgreSQL, or on its way there:
keeping a copy per key for a day cost Redis several times more.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from engine.models import EntryResult


def fingerprint(identity: list[Any], metadata_text: str = "") -> str:
    """What tells a repeated request from a changed one under the same key: 128 bits of SHA-256
    in hex, the first half of what Tally stored before (lua/account.lua replay_hash())."""
    return hashlib.sha256(orjson.dumps(identity) + metadata_text.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Replay:
    """A "replay" reply: {"replay", balance_before, ledger_id, top_up, available, created_at,
    amount, extra?}, every field as text."""

    balance_before: int
    ledger_id: str
    top_up_started: bool
    available: int
    created_at_ms: int
    amount: int
    extra: str | None  # the script's own: a hold's token (hold.lua), a settled hold's amount

    @classmethod
    def of(cls, reply: list[Any]) -> "Replay":
        return cls(
            balance_before=int(reply[1]),
            ledger_id=reply[2],
            top_up_started=int(reply[3]) == 1,
            available=int(reply[4]),
            created_at_ms=int(reply[5]),
            amount=int(reply[6]),
            extra=reply[7] if len(reply) > 7 else None,
        )

    def entry_result(
        self,
        user_id: str,
        kind: str,
        *,
        expires_at_ms: int | None = None,
        hold_id: str | None = None,
        held: int | None = None,
    ) -> EntryResult:
        """The first call's result; the arguments are the request's (the same as the first's,
        or the fingerprint would have refused it)."""
        return EntryResult(
            ledger_id=self.ledger_id,
            user_id=user_id,
            kind=kind,
            amount=self.amount,
            balance_before=self.balance_before,
            balance_after=self.balance_before + self.amount,
            created_at_ms=self.created_at_ms,
            replayed=True,
            top_up_started=self.top_up_started,
            available=self.available,
            expires_at_ms=expires_at_ms,
            hold_id=hold_id,
            held=held,
        )
