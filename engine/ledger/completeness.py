"""Which shards Redis holds completely, so that it alone can tell a new user from a lost one.

An account missing from Redis is either new (no entries anywhere) or lost (Redis lost data;
its entries are in PostgreSQL). Only PostgreSQL can tell, unless the shard is marked complete:
every account of the shard that has ledger entries is in Redis. Accounts never leave Redis on
their own, so the mark stays true until Redis loses data, and it is lost with that data.

The worker marks shards: for the shards without a mark, one pass over the ledger puts every
account back (accounts already there are left alone), then marks them, unless Redis lost data
again during the pass (the pass's token is gone with it: its hydrates and its marks check it).

A mark only ever answers while PostgreSQL is unreachable (engine.ledger.credits): a mark can
outlive a loss Redis cannot see, such as the last second an AOF `everysec` crash drops.
"""

import secrets

from redis import Redis
from redis.commands.core import Script

from engine.ledger.repository import LedgerRepository
from engine.store.keys import (
    SHARDS,
    account_keys,
    complete_key,
    completeness_lock_key,
    completing_key,
    shard_of,
)
from engine.store.scripts import Scripts

# A pass over a large ledger takes a while: another worker may start one after this long.
_PASS_LEASE_MS = 3_600_000
_BATCH = 1_000


def incomplete_shards(redis: Redis) -> list[int]:
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.exists(complete_key(shard))
    return [shard for shard, marked in enumerate(pipe.execute()) if not marked]


def complete_shards(
    redis: Redis, scripts: Scripts[Script], repository: LedgerRepository
) -> list[int]:
    """Mark every unmarked shard complete after putting its accounts back from the ledger;
    returns the shards marked. One worker at a time runs a pass."""
    missing = incomplete_shards(redis)
    token = secrets.token_hex(8)
    if not missing or not redis.set(completeness_lock_key(), token, nx=True, px=_PASS_LEASE_MS):
        return []
    try:
        pipe = redis.pipeline(transaction=False)
        for shard in missing:
            pipe.set(completing_key(shard), token, px=_PASS_LEASE_MS)
        pipe.execute()
        wanted = set(missing)
        pipe = redis.pipeline(transaction=False)
        for app_id, user_id, balance, seq, updated_at in repository.all_account_snapshots():
            shard = shard_of(app_id, user_id)
            if shard not in wanted:
                continue
            updated_ms = int(updated_at.timestamp() * 1000)
            keys = [account_keys(app_id, user_id).account, completing_key(shard)]
            scripts.hydrate(keys=keys, args=[balance, seq, updated_ms, token], client=pipe)
            if len(pipe) >= _BATCH and -1 in pipe.execute():
                return []  # Redis lost data again: this pass's snapshot is stale
        if -1 in pipe.execute():
            return []
        pipe = redis.pipeline(transaction=False)
        for shard in missing:
            keys = [completing_key(shard), complete_key(shard)]
            scripts.mark_complete(keys=keys, args=[token], client=pipe)
        return [shard for shard, marked in zip(missing, pipe.execute(), strict=True) if marked]
    finally:
        if redis.get(completeness_lock_key()) == token:
            redis.delete(completeness_lock_key())
