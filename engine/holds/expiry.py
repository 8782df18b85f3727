"""The worker's sweep of grants and holds whose time has come, for accounts no request touches
(every script that touches an account expires what is due first). Each account's expiry is
one expire_due.lua call: however many workers sweep, each grant and hold expires once.

An account that left Redis (idle, engine.ledger.eviction) keeps its place in the due set: when
something of it comes due, the sweep rebuilds it from the ledger and expires it."""

import time
from collections.abc import Callable

from redis import Redis

from engine.errors import UnavailableError
from engine.ledger.expiring import account_json
from engine.store.keys import SHARDS, account_keys, expiry_due_key, new_ledger_id, parse_member
from engine.store.scripts import Call, Scripts, run_all

# Accounts expired per shard and sweep: a backlog drains over a few sweeps, each short.
_PER_SHARD = 100

Account = tuple[str, str]  # app_id, user_id


def sweep_expiries(
    redis: Redis,
    scripts: Scripts,
    watch_of: Callable[[str], str],
    rebuild: Callable[[list[Account]], set[Account]],
) -> int:
    """Expire what is due in every shard: one round trip to find the accounts, one to expire
    them (two more, and a PostgreSQL query, when some must be rebuilt first). `watch_of(app_id)`:
    the app's thresholds to watch (engine.events.watch); `rebuild`: puts accounts back from the
    ledger, returning those it found (engine.ledger.hydration.rebuild_accounts). Returns the
    entries written."""
    now_ms = time.time_ns() // 1_000_000
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.zrangebyscore(expiry_due_key(shard), "-inf", now_ms, start=0, num=_PER_SHARD)
    accounts = [parse_member(member) for due in pipe.execute() for member in due]
    if not accounts:
        return 0
    calls = [_call(account, now_ms, watch_of) for account in accounts]
    replies = [int(written) for written in run_all(redis, scripts.expire_due, calls)]
    written = sum(max(0, reply) for reply in replies)
    missing = [account for account, reply in zip(accounts, replies, strict=True) if reply < 0]
    if not missing:
        return written
    try:
        found = rebuild(missing)
    except UnavailableError:
        return written  # PostgreSQL is down: they stay due, and the next sweep tries again
    # The ledger has nothing of the others: they leave the due set.
    calls = [_call(account, now_ms, watch_of, drop=account not in found) for account in missing]
    return written + sum(max(0, int(n)) for n in run_all(redis, scripts.expire_due, calls))


def _call(
    account: Account, now_ms: int, watch_of: Callable[[str], str], drop: bool = False
) -> Call:
    app_id, user_id = account
    keys = account_keys(app_id, user_id)
    args: list[str | int] = [
        now_ms,
        new_ledger_id(keys.shard, now_ms),
        account_json(app_id, user_id),
        watch_of(app_id),
        "1" if drop else "",
    ]
    return keys.script_keys(), args
