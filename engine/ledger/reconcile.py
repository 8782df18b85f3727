"""Reconciliation: does every Redis balance equal the sum of its account's PostgreSQL ledger?

Exact without stopping traffic: each account carries `seq`, the count of entries ever applied
to it. For an account read at seq s, the ledger must hold exactly s entries with seq <= s, and
their sum must be the balance read. Fewer entries while the shard's outbox still holds some
means not drained yet (skipped); fewer with an empty outbox means entries were lost.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.commands.core import Script

from engine.ledger.defaults import RECONCILE_SCAN_BATCH
from engine.ledger.outbox import outbox_depths
from engine.ledger.repository import LedgerRepository
from engine.store.keys import ACCOUNT_PATTERN, parse_account_key, shard_of
from engine.store.scripts import Scripts


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
    scripts = Scripts.register(redis)
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
    scripts: Scripts[Script],
    repository: LedgerRepository,
    keys: list[str],
    report: Report,
    repair: bool,
) -> None:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "balance", "seq")
    states = pipe.execute()
    accounts: list[tuple[str, str, int, int, str]] = []  # app, user, seq, balance, key
    for key, (balance, seq) in zip(keys, states, strict=True):
        if balance is None:
            continue  # gone since the scan: nothing to compare
        app_id, user_id = parse_account_key(key)
        accounts.append((app_id, user_id, int(seq or 0), int(balance), key))
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
            repaired = scripts.repair_account(keys=[key], args=[seq, ledger_balance])
            drift["repaired"] = bool(repaired)
            report.repaired += bool(repaired)
        report.drift.append(drift)
