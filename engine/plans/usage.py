"""Plan usage: the operations an app made this month, and its users, against its plan.

The scripts count each operation in the app's usage hash of the account's shard, and refuse
one when that shard's count plus `others` (every other shard's operations at the worker's last
sum) has reached the plan (lua/account.lua over_plan). So one user's operations, which all land
in one shard, are capped exactly; operations spread over shards overshoot by at most what the
other shards admitted since the last sum.

Every second one worker sums them: per shard, what `n` grew since the `base` it left there, added
to the month's total (kept in Redis, saved to PostgreSQL). Counters that Redis lost start again
from 0 with no `base`, and are counted whole; a Redis that went back in time (an AOF's last
second) takes its bases back with its counters, and only what it lost is counted again.
"""

import logging
import time
from dataclasses import dataclass
from datetime import date

from redis import Redis

from engine.errors import UnavailableError
from engine.ledger.repository import LedgerRepository
from engine.plans.month import month_of
from engine.plans.repository import PlanRepository
from engine.store.keys import SHARDS, plan_total_key, plan_usage_key, plans_lock_key

log = logging.getLogger(__name__)

# A month's counters outlive it by this much: `GET /usage` of last month still answers.
_KEEP_SECONDS = 40 * 86_400
_SUM_LOCK_MS = 900
# Which apps have a plan is read again this often (and kept while PostgreSQL is away).
_APPS_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Usage:
    month: str  # YYYY-MM, UTC
    operations: int
    operations_allowed: int | None
    users: int
    users_allowed: int | None


class Plans:
    def __init__(self, redis: Redis, repository: PlanRepository, ledger: LedgerRepository) -> None:
        self._redis = redis
        self._repository = repository
        self._ledger = ledger
        self._capped: list[str] = []
        self._capped_read = 0.0

    def usage(
        self, app_id: str, operations_allowed: int | None, users_allowed: int | None, now_ms: int
    ) -> Usage:
        month = month_of(now_ms)
        total, counts = self._read(app_id, month)
        operations = total + sum(max(0, n - base) for n, base in counts)
        users = self._ledger.users_of(app_id)
        return Usage(month, operations, operations_allowed, users, users_allowed)

    def sum_all(self, now_ms: int) -> int:
        """Sum every capped app's counters and tell each shard the others' total; one worker a
        second does it. Returns the apps summed."""
        if not self._redis.set(plans_lock_key(), "1", nx=True, px=_SUM_LOCK_MS):
            return 0
        month = month_of(now_ms)
        apps = self._capped_apps()
        for app_id in apps:
            self._sum(app_id, month)
        return len(apps)

    def _capped_apps(self) -> list[str]:
        if time.monotonic() - self._capped_read > _APPS_SECONDS:
            try:
                self._capped = self._repository.capped_apps()
                self._capped_read = time.monotonic()
            except UnavailableError:
                log.warning("PostgreSQL unavailable: summing the plans known before")
        return self._capped

    def _sum(self, app_id: str, month: str) -> None:
        total, counts = self._read(app_id, month)
        grown = sum(max(0, n - base) for n, base in counts)
        total += grown
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(plan_total_key(app_id, month), total, ex=_KEEP_SECONDS)
        for shard, (n, _) in enumerate(counts):
            key = plan_usage_key(shard, app_id, month)
            pipe.hset(key, mapping={"base": n, "others": total - n})
            pipe.expire(key, _KEEP_SECONDS)
        pipe.execute()
        if grown:
            try:
                self._repository.save(app_id, _first_day(month), total)
            except UnavailableError:
                log.warning("PostgreSQL unavailable: %s's plan usage is kept in Redis", app_id)

    def _read(self, app_id: str, month: str) -> tuple[int, list[tuple[int, int]]]:
        """The month's total at the last sum (PostgreSQL's, if Redis lost it), and every shard's
        (n, base), in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(plan_total_key(app_id, month))
        for shard in range(SHARDS):
            pipe.hmget(plan_usage_key(shard, app_id, month), "n", "base")
        total, *shards = pipe.execute()
        counts = [(int(n or 0), int(base or 0)) for n, base in shards]
        if total is None:
            return self._repository.saved(app_id, _first_day(month)), counts
        return int(total), counts


def _first_day(month: str) -> date:
    year, number = month.split("-")
    return date(int(year), int(number), 1)
