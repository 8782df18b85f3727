"""The contract of idle eviction's scripts (lua/evict_account.lua, and what hydrate.lua,
vouch_account.lua and expire_due.lua do about evicted accounts), on fakeredis and on a real
redis-server."""

import random
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from engine.ledger.expiring import rebuild
from engine.store.keys import account_keys
from engine.store.scripts import SCRIPTS
from tests.test_lua_model import HYDRATE_KEYS, Account, step
from tests.test_lua_model import KEYS as MODEL_KEYS
from tests.test_lua_scripts import (
    KEYS,
    apply_entry,
    call_async,
    hydrate,
    redis,  # noqa: F401  (the fixture)
)

pytestmark = pytest.mark.anyio

MEMBER = "app_lua:user_1"
NOW = 10_000_000


async def evict(redis: Redis, idle_before: int = NOW, now: int = NOW) -> int:  # noqa: F811
    keys = [
        KEYS.account, KEYS.recent, KEYS.unpersisted, KEYS.grants, KEYS.holds, KEYS.top_up(),
        KEYS.tombstone(),
    ]  # fmt: skip
    evicted: int = await call_async(
        redis, SCRIPTS.evict_account, keys=keys, args=[idle_before, now, KEYS.tombstone_member()]
    )
    return evicted


async def vouch(redis: Redis, user: str, create: bool = True) -> int:  # noqa: F811
    keys = account_keys("app_lua", user)
    vouched: int = await call_async(
        redis,
        SCRIPTS.vouch_account,
        keys=[keys.account, keys.complete(), keys.tombstone()],
        args=["1" if create else "0", keys.tombstone_member()],
    )
    return vouched


async def persist(redis: Redis) -> None:  # noqa: F811
    """What the worker's flush does in Redis once PostgreSQL has the entries."""
    for ledger_id in await redis.lrange(KEYS.recent, 0, -1):
        await redis.hdel(KEYS.unpersisted, ledger_id)
        await redis.lrem(KEYS.recent, -1, ledger_id)


async def used_account(redis: Redis) -> None:  # noqa: F811
    """An account with two entries written at 1234, persisted."""
    await hydrate(redis, 0, updated_at="")
    await apply_entry(redis, 100, ledger_id="L1")
    await apply_entry(redis, -30, ledger_id="L2")
    await persist(redis)


async def test_an_idle_persisted_account_leaves_a_tombstone(redis: Redis) -> None:  # noqa: F811
    await used_account(redis)
    await redis.hset(KEYS.grants, "g", "x")
    await redis.hset(KEYS.holds, "t", "x")
    await redis.zadd(KEYS.expiry_due, {MEMBER: NOW + 5_000})
    await redis.hset(KEYS.account, "due", NOW + 5_000)
    await redis.hset(KEYS.top_up(), "threshold", 50)
    assert await evict(redis) == 1
    assert await redis.exists(KEYS.account, KEYS.recent, KEYS.grants, KEYS.holds) == 0
    assert await redis.smembers(KEYS.tombstone()) == {KEYS.tombstone_member()}
    if not isinstance(redis, fakeredis.FakeAsyncRedis):  # which has no OBJECT
        # An integer: the set stays an intset, 8 bytes a member.
        assert await redis.object("encoding", KEYS.tombstone()) == "intset"
    # Its grants and holds still come due (the sweep rebuilds it); its top-up settings stay.
    assert await redis.zscore(KEYS.expiry_due, MEMBER) == NOW + 5_000
    assert await redis.hget(KEYS.top_up(), "threshold") == "50"
    assert await evict(redis) == 0  # nothing left to evict


async def test_what_keeps_an_account_in_redis(redis: Redis) -> None:  # noqa: F811
    await used_account(redis)
    assert await evict(redis, idle_before=1234) == 0  # written at 1234: not idle before it
    await apply_entry(redis, -1, ledger_id="L3")  # not in PostgreSQL yet
    assert await evict(redis) == 0
    await persist(redis)
    await redis.hset(KEYS.top_up(), "pending", "L3")  # a top-up on its way
    assert await evict(redis) == 0
    await redis.hdel(KEYS.top_up(), "pending")
    await redis.hset(KEYS.account, "due", NOW)  # an expiry the sweep has not written yet
    assert await evict(redis) == 0
    await redis.hset(KEYS.account, "due", NOW + 1)
    await redis.hset(KEYS.account, "hydrated_at", NOW)  # rebuilt for a request just now
    assert await evict(redis) == 0
    assert await evict(redis, idle_before=NOW + 1) == 1


async def test_an_entry_the_previous_version_listed_whole_counts(redis: Redis) -> None:  # noqa: F811
    await used_account(redis)
    entry = '{"ledger_id":"0190d8c4-0000-7000-8000-000000000011","amount":-1}'
    await redis.rpush(KEYS.recent, entry)
    await redis.hset(KEYS.unpersisted, "0190d8c4-0000-7000-8000-000000000011", entry)
    assert await evict(redis) == 0
    await redis.hdel(KEYS.unpersisted, "0190d8c4-0000-7000-8000-000000000011")
    assert await evict(redis) == 1  # listed but persisted: the list goes with the account
    assert await redis.exists(KEYS.recent) == 0


async def test_an_account_without_entries_needs_no_tombstone(redis: Redis) -> None:  # noqa: F811
    await hydrate(redis, 0, updated_at="")  # a user refused before anything was written
    assert await evict(redis) == 1
    assert await redis.exists(KEYS.account, KEYS.tombstone()) == 0


async def test_redis_never_vouches_for_an_evicted_account(redis: Redis) -> None:  # noqa: F811
    await used_account(redis)
    await evict(redis)
    await redis.set(KEYS.complete(), "1")
    assert await vouch(redis, "user_1") == -1  # ask PostgreSQL
    assert await redis.exists(KEYS.account) == 0
    other = account_keys("app_lua", "user_2")
    await redis.set(other.complete(), "1")
    assert await vouch(redis, "user_2", create=False) == 0  # a new user, really
    assert await vouch(redis, "user_2") == 1
    assert await redis.hget(other.account, "balance") == "0"


async def test_a_rebuild_counts_as_use_and_leaves_the_tombstone(redis: Redis) -> None:  # noqa: F811
    await used_account(redis)
    await evict(redis)
    assert await hydrate(redis, 70, updated_at="1234", seq=2) == 1
    assert int(await redis.hget(KEYS.account, "hydrated_at") or 0) > NOW
    assert await evict(redis, idle_before=NOW) == 0
    # Back in Redis, so Redis answers for it; the tombstone stays, harmless.
    await redis.set(KEYS.complete(), "1")
    assert await vouch(redis, "user_1") == 1
    assert await redis.sismember(KEYS.tombstone(), KEYS.tombstone_member())


async def test_the_sweep_is_told_to_rebuild_a_missing_account(redis: Redis) -> None:  # noqa: F811
    await redis.zadd(KEYS.expiry_due, {MEMBER: NOW})
    args = [NOW, "0190d8c4-0000-7000-8000-000000000011", '"app_id":"app_lua"', ""]
    assert await call_async(redis, SCRIPTS.expire_due, keys=KEYS.script_keys(), args=args) == -1
    assert await redis.zscore(KEYS.expiry_due, MEMBER) == NOW  # still due
    assert (
        await call_async(redis, SCRIPTS.expire_due, keys=KEYS.script_keys(), args=[*args, "1"]) == 0
    )
    assert await redis.zscore(KEYS.expiry_due, MEMBER) is None  # nothing to rebuild it from


async def test_an_evicted_account_comes_back_as_it_was(redis: Redis) -> None:  # noqa: F811
    """Random grants, holds, deducts and refunds; the account evicted and rebuilt from its
    entries has every field it had."""
    keys = [
        MODEL_KEYS.account, MODEL_KEYS.recent, MODEL_KEYS.unpersisted, MODEL_KEYS.grants,
        MODEL_KEYS.holds, MODEL_KEYS.top_up(), MODEL_KEYS.tombstone(),
    ]  # fmt: skip
    for seed in range(10):
        await redis.flushall()
        account = Account(redis, 0)
        await call_async(
            account.redis, SCRIPTS.hydrate, keys=HYDRATE_KEYS, args=[0, 0, "", "", 0, 0, 0, "", 0]
        )
        rnd = random.Random(seed)
        for _ in range(40):
            await step(account, rnd)
        await account.expire()  # what is due is written before an eviction
        before: dict[str, Any] = await account.state()
        entries = await account.entries()
        await redis.delete(MODEL_KEYS.unpersisted, MODEL_KEYS.recent)  # all persisted
        args = [account.now + 1, 0, MODEL_KEYS.tombstone_member()]
        evicted = await call_async(account.redis, SCRIPTS.evict_account, keys=keys, args=args)
        assert evicted == 1 and await redis.exists(MODEL_KEYS.account) == 0
        updated = str(entries[-1].created_at_ms) if entries else ""
        await call_async(account.redis, SCRIPTS.hydrate,
            keys=HYDRATE_KEYS,
            args=[before["balance"], before["seq"], updated, "",
                  *rebuild(entries, account.now).hydrate_args()],
        )  # fmt: skip
        assert await account.state() == before, seed
