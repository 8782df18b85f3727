"""The worker's sweep of grants and holds whose time has come, for accounts no request touches
(every script that touches an account expires what is due first). Each account's expiry is
one expire_due.lua call: however many workers sweep, each grant and hold expires once."""

import time
from collections.abc import Callable

from redis import Redis
from redis.commands.core import Script

from engine.ledger.expiring import account_json
from engine.store.keys import SHARDS, account_keys, expiry_due_key, new_ledger_id, parse_member
from engine.store.scripts import Scripts

# Accounts expired per shard and sweep: a backlog drains over a few sweeps, each short.
_PER_SHARD = 100


def sweep_expiries(
    redis: Redis, scripts: Scripts[Script], recent_entries: int, watch_of: Callable[[str], str]
) -> int:
    """Expire what is due in every shard: one round trip to find the accounts, one to expire
    them. `watch_of(app_id)`: the app's thresholds to watch (engine.events.watch). Returns the
    entries written."""
    now_ms = time.time_ns() // 1_000_000
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.zrangebyscore(expiry_due_key(shard), "-inf", now_ms, start=0, num=_PER_SHARD)
    members = [member for due in pipe.execute() for member in due]
    if not members:
        return 0
    pipe = redis.pipeline(transaction=False)
    for member in members:
        app_id, user_id = parse_member(member)
        keys = account_keys(app_id, user_id)
        args: list[str | int] = [
            now_ms,
            new_ledger_id(keys.shard),
            account_json(app_id, user_id),
            recent_entries,
            watch_of(app_id),
        ]
        scripts.expire_due(keys=keys.script_keys(), args=args, client=pipe)
    return sum(int(written) for written in pipe.execute())
