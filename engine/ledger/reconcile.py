"""Reconciliation: does every Redis balance equal the sum of its account's PostgreSQL ledger?

Exact without stopping traffic: each account carries `seq`, the count of entries ever applied
to it. For an account read at seq s, the ledger must hold exactly s entries with seq <= s, and
their sum must be the balance read. Fewer entries while the shard's outbox still holds some
means not drained yet (skipped); fewer with an empty outbox means entries were lost.
"""

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis

from engine.holds.ids import parse_hold_id
from engine.ledger.defaults import RECONCILE_SCAN_BATCH
from engine.ledger.expiring import rebuild
from engine.ledger.outbox import outbox_depths
from engine.ledger.repository import LedgerRepository
from engine.store.keys import ACCOUNT_PATTERN, account_keys, parse_account_key, shard_of
from engine.store.scripts import SCRIPTS, Scripts, call


@dataclass
class Report:
    started_at: datetime
    finished_at: datetime | None = None
    accounts_checked: int = 0
    accounts_skipped: int = 0
    repaired: int = 0
    drift: list[dict[str, Any]] = field(default_factory=list)
    report_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "accounts_checked": self.accounts_checked,
            "accounts_skipped": self.accounts_skipped,
            "drifted": len(self.drift),
            "repaired": self.repaired,
            "drift": self.drift,
        }


def reconcile(redis: Redis, repository: LedgerRepository, *, repair: bool = False) -> Report:
    report = Report(started_at=datetime.now(UTC))
    scripts = SCRIPTS
    batch: list[str] = []
    for key in redis.scan_iter(match=ACCOUNT_PATTERN, count=RECONCILE_SCAN_BATCH):
        batch.append(key)
        if len(batch) >= RECONCILE_SCAN_BATCH:
            _check(redis, scripts, repository, batch, report, repair)
            batch = []
    if batch:
        _check(redis, scripts, repository, batch, report, repair)
    report.finished_at = datetime.now(UTC)
    stored = report.as_dict() | {"started_at": report.started_at, "finished_at": report.finished_at}
    report.report_id = repository.save_report(stored)
    return report


def _check(
    redis: Redis,
    scripts: Scripts,
    repository: LedgerRepository,
    keys: list[str],
    report: Report,
    repair: bool,
) -> None:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "balance", "seq", "due")
    states = pipe.execute()
    accounts: list[tuple[str, str, int, int, str]] = []  # app, user, seq, balance, key
    expiring: list[tuple[str, str]] = []
    for key, (balance, seq, due) in zip(keys, states, strict=True):
        if balance is None:
            continue  # gone since the scan: nothing to compare
        app_id, user_id = parse_account_key(key)
        accounts.append((app_id, user_id, int(seq or 0), int(balance), key))
        if due is not None:
            expiring.append((app_id, user_id))
    totals = repository.ledger_totals([(app, user, seq) for app, user, seq, _, _ in accounts])
    # Read after the totals: an entry persisted since then is counted there, or still queued.
    depths = outbox_depths(redis)
    for app_id, user_id, seq, balance, key in accounts:
        count, ledger_balance = totals[(app_id, user_id)]
        if count < seq and depths[shard_of(app_id, user_id)] > 0:
            report.accounts_skipped += 1
            continue
        report.accounts_checked += 1
        if count == seq and ledger_balance == balance:
            if (app_id, user_id) in expiring:
                _check_expiring(redis, repository, app_id, user_id, seq, report)
            continue
        drift = {
            "app_id": app_id,
            "user_id": user_id,
            "redis_balance": balance,
            "ledger_balance": ledger_balance,
            "seq": seq,
            "ledger_entries": count,
            "reason": "balance differs from ledger"
            if count == seq
            else "ledger entries do not match the account's sequence (entries lost?)",
            "repaired": False,
        }
        if repair:
            repaired = call(redis, scripts.repair_account, [key], [seq, ledger_balance])
            drift["repaired"] = bool(repaired)
            report.repaired += bool(repaired)
        report.drift.append(drift)


def _check_expiring(
    redis: Redis, repository: LedgerRepository, app_id: str, user_id: str, seq: int, report: Report
) -> None:
    """Grants and holds against the ledger: each grant's credits left, the holds and what they
    hold are what the ledger's entries make them, and the grants' credits fit in the balance."""
    keys = account_keys(app_id, user_id)
    pipe = redis.pipeline(transaction=True)  # one moment of the account
    pipe.hmget(keys.account, "balance", "seq", "held", "granted", "reserved")
    pipe.hgetall(keys.grants)
    pipe.hgetall(keys.holds)
    (balance, now_seq, held, granted, reserved), grants, holds = pipe.execute()
    if balance is None or int(now_seq) != seq:
        return  # moved on since its entries were found all persisted: next time
    entries = repository.expiring_entries([(app_id, user_id, seq)])[(app_id, user_id)]
    expected = rebuild(entries, time.time_ns() // 1_000_000)
    lefts = {grant_id: int(value.split()[2]) for grant_id, value in grants.items()}
    problems = []
    if {g: left for g, left in lefts.items() if left} != {
        g: left for g, (_, _, left) in expected.grants.items() if left
    }:
        problems.append("grant credits left differ from the ledger")
    if int(granted or 0) != sum(lefts.values()):
        problems.append("granted is not the sum of the grants")
    if sum(lefts.values()) > max(int(balance), 0):
        problems.append("grant credits exceed the balance")
    if {parse_hold_id(h)[1] for h in expected.holds} != set(holds) or int(
        held or 0
    ) != expected.held:
        problems.append("active holds differ from the ledger")
    if int(reserved or 0) != sum(expected.reserved().values()):
        problems.append("grant credits reserved by holds differ from the ledger")
    if problems:
        report.drift.append(
            {
                "app_id": app_id,
                "user_id": user_id,
                "redis_balance": int(balance),
                "ledger_balance": int(balance),
                "seq": seq,
                "reason": "; ".join(problems),
                "redis_grants": lefts,
                "ledger_grants": {g: left for g, (_, _, left) in expected.grants.items()},
                "redis_held": int(held or 0),
                "ledger_held": expected.held,
                "repaired": False,
            }
        )
