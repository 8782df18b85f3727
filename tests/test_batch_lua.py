"""lua/apply_batch.lua on a real redis-server: one call applies a shard's entries as the same
apply_entry.lua calls would, one after the other, and sets apart those of missing accounts."""

from collections.abc import Iterator
from itertools import count, islice
from typing import Any

import orjson
import pytest
import redis

from engine.store.keys import AccountKeys, account_keys, shard_of
from engine.store.scripts import SCRIPTS, call
from tests.servers import RedisServer

APP = "app_batch"
_ids = count(1)


def _same_shard(n: int) -> list[str]:
    """`n` users of one shard: a batch call is one shard's."""
    shard = shard_of(APP, "u0")
    return list(islice((f"u{i}" for i in count() if shard_of(APP, f"u{i}") == shard), n))


A, B, C = _same_shard(3)


@pytest.fixture
def r(own_redis: RedisServer) -> Iterator["redis.Redis[str]"]:
    client: redis.Redis[str] = redis.Redis.from_url(own_redis.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


def entry(
    user: str,
    delta: int,
    *,
    key: str | None = None,
    fingerprint: str = "fp",
    plan: int | None = None,
    grant_ms: int | None = None,
) -> tuple[list[str], list[Any]]:
    """apply_entry.lua's keys and arguments for one entry (engine.ledger.credits builds the
    same)."""
    keys: AccountKeys = account_keys(APP, user)
    ledger_id = f"L{next(_ids)}"
    head = orjson.dumps({"ledger_id": ledger_id, "user_id": user, "kind": "x"})[:-1]
    script_keys, mode, grant = keys.script_keys(), "", ""
    if key is not None:
        script_keys.append(keys.idempotency(key))
        mode += "i"
    if grant_ms is not None:
        mode, grant = mode + "g", grant_ms
    allowed = ""
    if plan is not None:
        script_keys.append(keys.plan_usage(APP, "2030-01"))
        mode, allowed = mode + "l", str(plan)
    args = [delta, 0, head, fingerprint, 86_400, 1_000, ledger_id, mode, "", grant, "", allowed]
    return script_keys, args


def apply_batch(r: "redis.Redis[str]", *entries: tuple[list[str], list[Any]]) -> list[Any]:
    keys: list[str] = []
    args: list[Any] = []
    for entry_keys, entry_args in entries:
        keys += entry_keys
        args += [len(entry_keys), len(entry_args), *entry_args]
    reply: list[Any] = call(r, SCRIPTS.apply_batch, keys=keys, args=args)
    return reply


def apply_one(r: "redis.Redis[str]", entry: tuple[list[str], list[Any]]) -> list[Any]:
    reply: list[Any] = call(r, SCRIPTS.apply_entry, *entry)
    return reply


def hydrate(r: "redis.Redis[str]", user: str, balance: int) -> None:
    keys = account_keys(APP, user)
    call(
        r,
        SCRIPTS.hydrate,
        keys=[keys.account, keys.grants, keys.holds, keys.expiry_due],
        args=[balance, 0, "99", "", 0, 0, 0, "", 0],
    )


def balance(r: "redis.Redis[str]", user: str) -> int | None:
    value = r.hget(account_keys(APP, user).account, "balance")
    return None if value is None else int(value)


def _shape(reply: list[Any]) -> list[Any]:
    """A reply without what differs from one run to the next (ids, in entries and replays)."""
    if reply[0] == "ok":
        stored = orjson.loads(reply[2])
        return [
            "ok",
            reply[1],
            stored["amount"],
            stored["balance_after"],
            stored["seq"],
            *reply[3:],
        ]
    if reply[0] == "replay":
        return ["replay", reply[1], *reply[3:]]
    return reply


def test_entries_apply_in_order_each_on_its_own(r: "redis.Redis[str]") -> None:
    hydrate(r, A, 0)
    replies = apply_batch(r, entry(A, 10), entry(A, -4), entry(A, -7), entry(A, -6), entry(B, 3))
    assert [reply[0] for reply in replies] == ["ok", "ok", "insufficient", "ok", "missing"]
    assert replies[2] == ["insufficient", "6", "6"]
    assert [_shape(reply)[3] for reply in (replies[0], replies[1], replies[3])] == [10, 6, 0]
    assert balance(r, A) == 0 and balance(r, B) is None
    assert r.llen(account_keys(APP, A).recent) == 3  # the refused entry wrote nothing


def test_a_missing_account_stops_only_its_own_later_entries(r: "redis.Redis[str]") -> None:
    hydrate(r, A, 5)
    hydrate(r, C, 5)
    replies = apply_batch(
        r, entry(A, -1), entry(B, 7), entry(C, -1), entry(B, -2, key="k"), entry(A, -1)
    )
    assert [reply[0] for reply in replies] == ["ok", "missing", "ok", "missing", "ok"]
    assert (balance(r, A), balance(r, B), balance(r, C)) == (3, None, 4)
    # Rebuilt, B's entries go again in their order.
    hydrate(r, B, 0)
    again = apply_batch(r, entry(B, 7), entry(B, -2, key="k"))
    assert [_shape(reply)[3] for reply in again] == [7, 5]


def test_a_missing_account_answers_missing_even_where_a_replay_is_stored(
    r: "redis.Redis[str]",
) -> None:
    hydrate(r, B, 10)
    assert apply_one(r, entry(B, -1, key="once"))[0] == "ok"
    r.delete(account_keys(APP, B).account)  # evicted, its idempotency record kept
    replies = apply_batch(r, entry(B, 1), entry(B, -1, key="once"))
    assert replies == [["missing"], ["missing"]]


def test_a_key_used_twice_in_one_batch_replays_or_conflicts(r: "redis.Redis[str]") -> None:
    hydrate(r, A, 100)
    replies = apply_batch(
        r,
        entry(A, -30, key="use-1"),
        entry(A, -30, key="use-1"),
        entry(A, -31, key="use-1", fingerprint="other"),
    )
    assert [reply[0] for reply in replies] == ["ok", "replay", "conflict"]
    assert replies[1][2] == orjson.loads(replies[0][2])["ledger_id"]
    assert balance(r, A) == 70


def test_refusals_write_nothing_and_the_batch_goes_on(r: "redis.Redis[str]") -> None:
    hydrate(r, A, 0)
    hydrate(r, C, 0)
    replies = apply_batch(
        r,
        entry(A, 5, plan=2),
        entry(C, 5, plan=2),
        entry(A, 5, plan=2),  # the plan's two operations are used
        entry(C, -1),  # not one of the app's counted operations here: applied
        entry(A, 2**53),  # above the ceiling
        entry(A, 1, grant_ms=5_000),
    )
    assert [reply[0] for reply in replies] == ["ok", "ok", "plan_limit", "ok", "overflow", "ok"]
    assert replies[2] == ["plan_limit", "2"]
    assert (balance(r, A), balance(r, C)) == (6, 4)
    assert r.hlen(account_keys(APP, A).grants) == 1


def test_the_same_as_one_call_per_entry(r: "redis.Redis[str]") -> None:
    """The batch and apply_entry.lua, run on the same entries from the same state, answer and
    write alike: entries, balances, grants."""

    def run(batched: bool) -> tuple[list[Any], list[Any]]:
        r.flushall()
        for user in (A, B, C):
            hydrate(r, user, 3)
        calls = [
            entry(A, 2, grant_ms=5_000), entry(B, -2), entry(A, -4, key="x"), entry(C, -9),
            entry(A, -4, key="x"), entry(B, -2), entry(C, 1, grant_ms=900), entry(A, -1),
        ]  # fmt: skip
        replies = apply_batch(r, *calls) if batched else [apply_one(r, c) for c in calls]
        state = [
            (r.hgetall(keys.account), r.hvals(keys.grants), r.llen(keys.recent))
            for keys in (account_keys(APP, user) for user in (A, B, C))
        ]
        return [_shape(reply) for reply in replies], state

    assert run(batched=True) == run(batched=False)
