import uuid

from redis.crc import key_slot

from engine.store.keys import (
    SHARDS,
    account_keys,
    flush_key,
    new_ledger_id,
    outbox_key,
    shard_of,
    shard_of_ledger_id,
)


def test_all_keys_of_one_call_share_one_cluster_slot() -> None:
    for user in ["u1", "user:with:colons", "{braces}", "ünïcode", "x" * 256]:
        keys = account_keys("app_1", user)
        names = [
            keys.account,
            keys.recent,
            keys.outbox,
            keys.unpersisted,
            keys.idempotency("k{1}"),
            keys.refund_marker("8d7f0f0e-0000-4000-8000-000000000000"),
            keys.tombstone(),
            keys.top_up(),
            flush_key(keys.shard),
        ]
        assert len({key_slot(name.encode()) for name in names}) == 1, names


def test_outbox_key_is_the_accounts_shard_outbox() -> None:
    keys = account_keys("app_1", "u1")
    assert keys.outbox == outbox_key(keys.shard)


def test_users_spread_over_all_shards() -> None:
    shards = {shard_of("app_1", f"user-{i}") for i in range(5_000)}
    assert shards == set(range(SHARDS))


def test_idempotency_keys_cannot_collide_across_user_ids_with_separators() -> None:
    # user "a:b" with key "c" must not share a record with user "a" and key "b:c".
    assert account_keys("app", "a:b").idempotency("c") != account_keys("app", "a").idempotency(
        "b:c"
    )


def test_distinct_apps_get_distinct_accounts() -> None:
    assert account_keys("app_1", "u").account != account_keys("app_2", "u").account


def test_ledger_ids_are_uuid7_carrying_their_shard() -> None:
    for shard in range(SHARDS):
        ledger_id = uuid.UUID(new_ledger_id(shard))
        assert ledger_id.version == 7
        assert shard_of_ledger_id(ledger_id) == shard
    assert len({new_ledger_id(3) for _ in range(1000)}) == 1000
