"""Which shards Redis holds completely, so that it alone can tell a new user from a lost one.

An account missing from Redis is either new (no entries anywhere), evicted (idle, its entries
in PostgreSQL, engine.ledger.eviction) or lost (Redis lost data; its entries are in PostgreSQL).
Only PostgreSQL can tell, unless the shard is marked complete: every account of the shard that
has ledger entries is in Redis or has a tombstone (eviction leaves one in the same script that
deletes the account). So the mark stays true until Redis loses data, and it is lost with that
data (tombstones with it: a pass puts evicted accounts back too, and they idle out again).

The worker marks shards: for the shards without a mark, one pass over the ledger puts every
account back (accounts already there are left alone), then marks them, unless Redis lost data
again during the pass (the pass's token is gone with it: its hydrates and its marks check it).

A mark only ever answers while PostgreSQL is unreachable (engine.ledger.credits): a mark can
outlive a loss Redis cannot see, such as the last second an AOF `everysec` crash drops.
"""

import secrets

from redis import Redis

from engine.ledger.hydration import expiring_of, hydrate_call
from engine.ledger.repository import LedgerRepository, Snapshot
from engine.store.keys import (
    SHARDS,
    account_keys,
    complete_key,
    completeness_lock_key,
    completing_key,
    shard_of,
)
from engine.store.scripts import Call, Scripts, run_all

# A pass over a large ledger takes a while: another worker may start one after this long.
_PASS_LEASE_MS = 3_600_000
_BATCH = 1_000


def incomplete_shards(redis: Redis) -> list[int]:
    pipe = redis.pipeline(transaction=False)
    for shard in range(SHARDS):
        pipe.exists(complete_key(shard))
    return [shard for shard, marked in enumerate(pipe.execute()) if not marked]


def complete_shards(redis: Redis, scripts: Scripts, repository: LedgerRepository) -> list[int]:
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
        batch: list[tuple[str, str, Snapshot]] = []
        for app_id, user_id, snapshot in repository.all_account_snapshots():
            if shard_of(app_id, user_id) in wanted:
                batch.append((app_id, user_id, snapshot))
            if len(batch) >= _BATCH:
                if not _hydrate(redis, scripts, repository, batch, token):
                    return []  # Redis lost data again: this pass's snapshot is stale
                batch = []
        if not _hydrate(redis, scripts, repository, batch, token):
            return []
        calls: list[Call] = [
            ([completing_key(shard), complete_key(shard)], [token]) for shard in missing
        ]
        marks = run_all(redis, scripts.mark_complete, calls)
        return [shard for shard, marked in zip(missing, marks, strict=True) if marked]
    finally:
        if redis.get(completeness_lock_key()) == token:
            redis.delete(completeness_lock_key())


def _hydrate(
    redis: Redis,
    scripts: Scripts,
    repository: LedgerRepository,
    batch: list[tuple[str, str, Snapshot]],
    token: str,
) -> bool:
    """Put a batch of accounts back (those already in Redis are left alone); False when the
    pass's marker is gone."""
    if not batch:
        return True
    expiring = expiring_of(repository, batch)
    calls = [
        hydrate_call(
            account_keys(app_id, user_id), snapshot, expiring.get((app_id, user_id)), token
        )
        for app_id, user_id, snapshot in batch
    ]
    return -1 not in run_all(redis, scripts.hydrate, calls)
