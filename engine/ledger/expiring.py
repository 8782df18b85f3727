"""An account's grants and holds as its ledger has them: what hydrate.lua restores after Redis
lost the account, and what reconciliation compares Redis with.

A grant is an add with `expires_at`; its ledger_id is its grant_id. Every entry's `grants` lists
how it changed each grant's credits (negative: taken or expired; positive: given back), except
a hold's: that lists what the hold reserved, which stays the grant's until the hold is settled
(its capture lists what it spent). So a grant's credits are its amount plus every non-hold
entry's change, and what is left to spend is that minus what active holds reserved.
"""

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.holds.ids import parse_hold_id
from engine.models import LedgerEntry

# Entries that settle a hold: they name its hold_id.
_HOLD = "hold"


def account_json(app_id: str, user_id: str) -> str:
    """`"app_id":...,"user_id":...`, as the entries the scripts write on their own carry it."""
    return json.dumps({"app_id": app_id, "user_id": user_id}, ensure_ascii=False)[1:-1]


@dataclass
class Expiring:
    held: int = 0
    granted: int = 0
    due: int | None = None  # epoch ms of the next expiry
    grants: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # id: expires, seq, left
    holds: dict[str, LedgerEntry] = field(default_factory=dict)  # hold_id: the hold's entry

    def reserved(self) -> dict[str, int]:
        """Grant credits the active holds keep, per grant."""
        totals: dict[str, int] = defaultdict(int)
        for hold in self.holds.values():
            for part in hold.grants or ():
                totals[part["grant_id"]] -= int(part["amount"])
        return totals

    def hydrate_args(self) -> list[str | int]:
        """ARGV[5..] of hydrate.lua."""
        args: list[str | int] = [self.held, self.granted, sum(self.reserved().values())]
        args.append("" if self.due is None else self.due)
        args.append(len(self.grants))
        for grant_id, (expires, seq, left) in self.grants.items():
            args += [grant_id, f"{expires} {seq} {left}"]
        for hold_id, hold in self.holds.items():
            reserved = ",".join(f"{p['grant_id']}={-int(p['amount'])}" for p in hold.grants or ())
            value = f"{hold.expires_at_ms} {hold.held} {reserved} {hold.to_json()}"
            args += [parse_hold_id(hold_id)[1], value]
        return args


def rebuild(entries: Iterable[LedgerEntry], now_ms: int) -> Expiring:
    """The grants and holds Redis should hold, from the account's entries that carry any
    (`grants`, `hold_id` or `expires_at`), in seq order.

    Grants and holds past their time but never expired are kept: the next script that touches
    the account expires them, writing their entries exactly once.
    """
    made: dict[str, tuple[int, int, int]] = {}  # grant_id: expires, seq, amount
    changes: dict[str, int] = defaultdict(int)
    refunded: set[str] = set()
    holds: dict[str, LedgerEntry] = {}
    settled: set[str] = set()
    for entry in entries:
        if entry.kind == "add" and entry.expires_at_ms is not None:
            made[entry.ledger_id] = (entry.expires_at_ms, entry.seq, entry.amount)
        if entry.kind == _HOLD and entry.hold_id is not None:
            holds[entry.hold_id] = entry
            continue
        if entry.hold_id is not None:
            settled.add(entry.hold_id)
        if entry.kind == "refund" and entry.refund_of in made:
            refunded.add(entry.refund_of)
        for part in entry.grants or ():
            changes[part["grant_id"]] += int(part["amount"])
    state = Expiring(holds={h: e for h, e in holds.items() if h not in settled})
    reserved = state.reserved()
    for grant_id, (expires, seq, amount) in made.items():
        left = amount + changes[grant_id] - reserved[grant_id]
        if grant_id in refunded or (expires <= now_ms and left <= 0):
            continue
        state.grants[grant_id] = (expires, seq, left)
        state.granted += left
    state.held = sum(hold.held or 0 for hold in state.holds.values())
    expiries = [g[0] for g in state.grants.values()]
    expiries += [h.expires_at_ms for h in state.holds.values() if h.expires_at_ms is not None]
    state.due = min(expiries, default=None)
    return state
