"""Idle accounts leave Redis, so that its memory grows with activity, not with history.

An account that no request has written, or needed rebuilt, for TALLY_ACCOUNT_IDLE_SECONDS is
evicted once PostgreSQL has every entry of it (lua/evict_account.lua). The next request that
needs it rebuilds it from the ledger (engine.ledger.hydration), as after Redis lost data: never
read as 0 (invariant 5). A tombstone stays behind, so that Redis never vouches for it as a new
account while PostgreSQL is down (lua/vouch_account.lua).

The hot path pays nothing for this: a worker finds idle accounts by a SCAN that goes on where
its last pass stopped, a bounded number of accounts a pass, and reads the `updated_at` every
write already sets.
"""

import logging
import secrets
import time
from collections.abc import Iterator

from redis import Redis

from engine.metrics.registry import ACCOUNTS_EVICTED
from engine.store.keys import (
    ACCOUNT_PATTERN,
    account_keys,
    eviction_lock_key,
    parse_account_key,
)
from engine.store.scripts import Call, Scripts, run_all

log = logging.getLogger(__name__)

# A pass looks at this many accounts at most (a few hundred ms of Redis time in all): with a
# pass a minute, a million accounts are gone through in under two hours.
_PER_PASS = 10_000
_SCAN_COUNT = 1_000
_CALLS_PER_ROUND_TRIP = 1_000


def interval_seconds(idle_seconds: int) -> float:
    """How often a worker makes a pass: every minute, or sooner when accounts idle sooner."""
    return min(60.0, max(0.5, idle_seconds / 4))


class Eviction:
    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        idle_seconds: int,
        per_pass: int = _PER_PASS,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._idle_ms = idle_seconds * 1000
        self._per_pass = per_pass
        # One worker at a time makes passes, and keeps making them: its scan goes on.
        self._lease_ms = int(interval_seconds(idle_seconds) * 3000)
        self._token = secrets.token_hex(8)
        self._scan: Iterator[str] | None = None

    def run(self, now_ms: int | None = None) -> int:
        """One pass: the next accounts of the scan, each evicted if idle; returns how many were
        (0 when another worker makes the passes)."""
        if not self._lead():
            return 0
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        accounts = self._next_accounts()
        idle_before = now_ms - self._idle_ms
        evicted = 0
        for start in range(0, len(accounts), _CALLS_PER_ROUND_TRIP):
            chunk = accounts[start : start + _CALLS_PER_ROUND_TRIP]
            calls = [_call(key, idle_before, now_ms) for key in chunk]
            evicted += sum(run_all(self._redis, self._scripts.evict_account, calls))
        if evicted:
            ACCOUNTS_EVICTED.inc(evicted)
            log.info("evicted %s idle accounts from Redis", evicted)
        return evicted

    def _lead(self) -> bool:
        lock = eviction_lock_key()
        if self._redis.set(lock, self._token, nx=True, px=self._lease_ms):
            return True
        return self._redis.get(lock) == self._token and bool(
            self._redis.pexpire(lock, self._lease_ms)
        )

    def _next_accounts(self) -> list[str]:
        """Up to per_pass account keys, where the last pass stopped; a scan that ends starts
        over at the next pass."""
        found: list[str] = []
        try:
            while len(found) < self._per_pass:
                if self._scan is None:
                    self._scan = self._redis.scan_iter(match=ACCOUNT_PATTERN, count=_SCAN_COUNT)
                key = next(self._scan, None)
                if key is None:
                    self._scan = None
                    break
                found.append(key)
        except BaseException:
            self._scan = None  # a failed SCAN's cursor is lost with its generator
            raise
        return found


def _call(account_key: str, idle_before: int, now_ms: int) -> Call:
    keys = account_keys(*parse_account_key(account_key))
    script_keys = [
        keys.account, keys.recent, keys.unpersisted, keys.grants, keys.holds, keys.top_up(),
        keys.tombstone(),
    ]  # fmt: skip
    return script_keys, (idle_before, now_ms, keys.tombstone_member())
