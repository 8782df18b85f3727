"""The contract of the grant and hold scripts (lua/account.lua and the scripts it prefixes), run
on fakeredis and on a real redis-server."""

import json
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from engine.store.keys import account_keys, new_ledger_id
from engine.store.scripts import SCRIPTS
from tests.test_lua_scripts import call_async, redis  # noqa: F401  (the fixture)

pytestmark = pytest.mark.anyio

KEYS = account_keys("app_lua", "user_1")
NOW = 1_000_000


def _head(kind: str, ledger_id: str, **extra: Any) -> bytes:
    fields = {
        "ledger_id": ledger_id, "app_id": "app_lua", "user_id": "user_1", "kind": kind,
        "description": None, "reference_id": None, "metadata": None, "idempotency_key": None,
        "refund_of": None, "created_at": NOW, **extra,
    }  # fmt: skip
    return orjson.dumps(fields)[:-1]


async def _open(redis: Redis, balance: int = 0) -> None:  # noqa: F811
    await call_async(
        redis,
        SCRIPTS.hydrate,
        keys=[KEYS.account, KEYS.grants, KEYS.holds, KEYS.expiry_due],
        args=[balance, 0, "", "", 0, 0, 0, "", 0],
    )


async def _entry(
    redis: Redis,  # noqa: F811
    delta: int,
    *,
    mode: str = "",
    extra: tuple[Any, ...] = (),
    now: int = NOW,
    expires: int | None = None,
    floor: int = 0,
    kind: str | None = None,
) -> list[Any]:
    ledger_id = new_ledger_id(KEYS.shard)
    kind = kind or ("add" if delta > 0 else "deduct")
    head = _head(kind, ledger_id, **({"expires_at": expires} if expires else {}))
    if expires:
        mode, extra = mode + "g", (expires,)
    # ARGV[10] (a grant's expiry or refunded grant), no thresholds, no plan, ARGV[13..] parts.
    grant, *parts = extra or ("",)
    args = [delta, floor, head, "", 60, now, ledger_id, mode, "", grant, "", "", *parts]
    reply: list[Any] = await call_async(
        redis, SCRIPTS.apply_entry, keys=KEYS.script_keys(), args=args
    )
    return reply


async def _hold(
    redis: Redis,  # noqa: F811
    amount: int,
    token: str,
    expires: int,
    floor: int = 0,
) -> list[Any]:
    ledger_id = new_ledger_id(KEYS.shard)
    head = _head("hold", ledger_id, hold_id=f"hold_{token}_dXNlcl8x", expires_at=expires)
    args = [amount, floor, head, "", 60, NOW, ledger_id, "", token, expires]
    reply: list[Any] = await call_async(redis, SCRIPTS.hold, keys=KEYS.script_keys(), args=args)
    return reply


async def _settle(
    redis: Redis,  # noqa: F811
    token: str,
    amount: str,
    now: int = NOW,
    *,
    idempotency_key: str | None = None,
    top_up: bool = False,
) -> list[Any]:
    ledger_id = new_ledger_id(KEYS.shard)
    kind = "release" if amount == "0" else "deduct"
    head = _head(kind, ledger_id, hold_id=f"hold_{token}_dXNlcl8x")
    keys, mode, member = KEYS.script_keys(), "", ""
    if idempotency_key:
        keys.append(KEYS.idempotency(idempotency_key))
        mode += "i"
    if top_up:
        keys += [KEYS.top_up(), KEYS.top_up_due()]
        mode, member = mode + "t", KEYS.top_up_member()
    keys.append(KEYS.hold_end(token))
    args = [amount, token, head, "fp", 60, now, ledger_id, mode + "e", 60_000, member]
    reply: list[Any] = await call_async(redis, SCRIPTS.settle_hold, keys=keys, args=args)
    return reply


async def _listed(redis: Redis, last: int) -> list[Any]:  # noqa: F811
    """The newest entries, as the recent list names them (0..last, -1 for all)."""
    ids = await redis.lrange(KEYS.recent, 0, last)
    return [json.loads(await redis.hget(KEYS.unpersisted, i)) for i in ids]


def _grants(reply: list[Any]) -> Any:
    return json.loads(reply[2]).get("grants")


async def test_grants_burn_soonest_first_and_expire_once(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 100)
    late = await _entry(redis, 50, expires=NOW + 2_000)
    soon = await _entry(redis, 30, expires=NOW + 1_000)
    late_id, soon_id = (json.loads(r[2])["ledger_id"] for r in (late, soon))
    spent = await _entry(redis, -40)
    assert _grants(spent) == [
        {"grant_id": soon_id, "amount": -30}, {"grant_id": late_id, "amount": -10},
    ]  # fmt: skip
    assert await redis.hget(KEYS.account, "granted") == "40"
    assert await redis.zscore(KEYS.expiry_due, "app_lua:user_1") == NOW + 1_000
    # At the later grant's expiry its 40 leave, once, before what the call itself does.
    after = await _entry(redis, 1, now=NOW + 2_000)
    assert after[0] == "ok" and int(after[1]) == 100
    assert await redis.hget(KEYS.account, "granted") == "0"
    assert await redis.hget(KEYS.account, "due") is None
    assert await redis.zscore(KEYS.expiry_due, "app_lua:user_1") is None
    kinds = [e["kind"] for e in await _listed(redis, -1)]
    assert kinds == ["add", "expire", "deduct", "add", "add"]
    # Nothing is due any more: nothing expires twice.
    await _entry(redis, 1, now=NOW + 3_000)
    assert await redis.hget(KEYS.account, "balance") == "102"


async def test_a_hold_reserves_grant_credits_and_settles_once(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 10)
    grant = json.loads((await _entry(redis, 30, expires=NOW + 5_000))[2])["ledger_id"]
    assert await _hold(redis, 41, "a" * 24, NOW + 1_000) == ["insufficient", "40", "40"]
    made = await _hold(redis, 35, "a" * 24, NOW + 1_000)
    assert (made[0], made[1], made[4]) == ("ok", "40", "5")
    assert _grants(made) == [{"grant_id": grant, "amount": -30}]
    assert await _entry(redis, -6) == ["insufficient", "40", "5"]
    assert await _settle(redis, "a" * 24, "36") == ["too_much", "35"]
    captured = await _settle(redis, "a" * 24, "20")
    assert (captured[0], captured[1], captured[4]) == ("ok", "40", "20")
    body = json.loads(captured[2])
    assert (body["amount"], body["held"], body["grants"]) == (
        -20, -35, [{"grant_id": grant, "amount": -20}],
    )  # fmt: skip
    # The 10 reserved grant credits not spent went back to the grant.
    assert await redis.hget(KEYS.grants, grant) == f"{NOW + 5_000} 1 10"
    ended = await _settle(redis, "a" * 24, "0")
    assert ended[0] == "ended" and ended[1].startswith("captured ")


async def test_an_expired_hold_is_gone_and_its_expired_grant_credits_leave(
    redis: Redis,  # noqa: F811
) -> None:
    await _open(redis, 0)
    await _entry(redis, 30, expires=NOW + 1_000)
    await _hold(redis, 25, "b" * 24, NOW + 2_000)
    # The grant expires with its 5 unreserved credits; the hold keeps its 25 until it ends.
    swept = await call_async(
        redis,
        SCRIPTS.expire_due,
        keys=KEYS.script_keys(),
        args=[NOW + 1_000, new_ledger_id(KEYS.shard), '"app_id":"app_lua","user_id":"user_1"', ""],
    )
    assert swept == 1
    assert (await redis.hmget(KEYS.account, "balance", "held")) == ["25", "25"]
    assert await _settle(redis, "b" * 24, "", now=NOW + 2_000) == ["gone"]
    newest = await _listed(redis, 1)
    assert [(e["kind"], e["amount"]) for e in newest] == [("expire", -25), ("hold_expire", 0)]
    assert await redis.hmget(KEYS.account, "balance", "held", "due") == ["0", "0", None]


async def test_hydrate_restores_grants_holds_and_the_due_set(redis: Redis) -> None:  # noqa: F811
    written = await call_async(
        redis,
        SCRIPTS.hydrate,
        keys=[KEYS.account, KEYS.grants, KEYS.holds, KEYS.expiry_due],
        args=[50, 7, "123", "", 20, 10, 4, NOW, 1, "g1", f"{NOW} 3 10", "t1", "x"],
    )
    assert written == 1
    assert await redis.hmget(KEYS.account, "balance", "held", "granted", "reserved", "due") == [
        "50", "20", "10", "4", str(NOW),
    ]  # fmt: skip
    assert await redis.hgetall(KEYS.grants) == {"g1": f"{NOW} 3 10"}
    assert await redis.hgetall(KEYS.holds) == {"t1": "x"}
    assert await redis.zscore(KEYS.expiry_due, "app_lua:user_1") == NOW


async def test_due_expiries_run_in_time_order(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 0)
    grant = json.loads((await _entry(redis, 60, expires=NOW + 2_000))[2])["ledger_id"]
    await _hold(redis, 5, "c" * 24, NOW + 1_000)
    # Both came due before anything touched the account: the hold, due first, gives its 5 back
    # to the grant, which then leaves whole, in one entry.
    await _entry(redis, 1, now=NOW + 3_000)
    newest = await _listed(redis, 2)
    assert [(e["kind"], e["amount"]) for e in newest] == [
        ("add", 1), ("expire", -60), ("hold_expire", 0),
    ]  # fmt: skip
    assert newest[1]["grants"] == [{"grant_id": grant, "amount": -60}]


async def test_settle_keys_in_order_with_idempotency_and_top_up(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 100)
    await redis.hset(KEYS.top_up(), "threshold", 80)
    await _hold(redis, 30, "d" * 24, NOW + 1_000)
    captured = await _settle(redis, "d" * 24, "25", idempotency_key="k1", top_up=True)
    assert (captured[0], captured[3]) == ("ok", 1)  # 75 < 80: the top-up starts
    assert await redis.zscore(KEYS.top_up_due(), KEYS.top_up_member()) == NOW
    assert (await redis.get(KEYS.hold_end("d" * 24))).startswith("captured ")
    replayed = await _settle(redis, "d" * 24, "25", idempotency_key="k1", top_up=True)
    # The first reply's fields, and the hold's amount (what the capture released is not known
    # from the request): before, ledger_id, top_up, available, created_at, amount, held.
    assert replayed == ["replay", "100", _id(captured), "1", "75", str(NOW), "-25", "30"]
    again = await _settle(redis, "d" * 24, "25", idempotency_key="k2", top_up=True)
    assert again[0] == "ended"


def _id(reply: list[Any]) -> str:
    ledger_id: str = json.loads(reply[2])["ledger_id"]
    return ledger_id


async def _state(redis: Redis) -> list[str]:  # noqa: F811
    fields = ("balance", "held", "granted", "reserved")
    return [value or "0" for value in await redis.hmget(KEYS.account, *fields)]


async def test_an_overdraft_a_hold_only_reserved_is_not_paid_back_by_a_grant(
    redis: Redis,  # noqa: F811
) -> None:
    await _open(redis, 0)
    assert (await _hold(redis, 100, "e" * 24, NOW + 9_000, floor=-100))[0] == "ok"
    grant = _id(await _entry(redis, 100, expires=NOW + 1_000))
    # Nothing was spent yet: the grant keeps all of its 100, and they still expire.
    assert await redis.hget(KEYS.grants, grant) == f"{NOW + 1_000} 2 100"
    await _settle(redis, "e" * 24, "0")
    await _entry(redis, 1, now=NOW + 1_000)
    assert (await _state(redis))[:3] == ["1", "0", "0"]


async def test_a_capture_beyond_what_its_hold_reserved_burns_grants_first(
    redis: Redis,  # noqa: F811
) -> None:
    await _open(redis, 0)
    await _hold(redis, 100, "f" * 24, NOW + 9_000, floor=-100)
    grant = _id(await _entry(redis, 100, expires=NOW + 1_000))
    captured = await _settle(redis, "f" * 24, "100")
    assert _grants(captured) == [{"grant_id": grant, "amount": -100}]
    assert await _state(redis) == ["0", "0", "0", "0"]


async def test_reserved_grant_credits_coming_back_pay_an_overdraft_first(
    redis: Redis,  # noqa: F811
) -> None:
    await _open(redis, 0)
    grant = _id(await _entry(redis, 100, expires=NOW + 1_000))
    await _hold(redis, 100, "g" * 24, NOW + 9_000, floor=-50)
    assert await _state(redis) == ["100", "100", "0", "100"]
    await _entry(redis, -50, floor=-50)  # into the overdraft: every credit is held
    released = await _settle(redis, "g" * 24, "0")
    # 50 of the grant's credits pay the overdraft back (spent); 50 go back to the grant.
    assert _grants(released) == [{"grant_id": grant, "amount": -50}]
    assert await _state(redis) == ["50", "0", "50", "0"]
    await _entry(redis, 1, now=NOW + 1_000)
    assert (await _state(redis))[0] == "1"  # the grant's 50 expired; nothing below zero


async def test_a_refund_into_an_overdraft_pays_it_back(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 0)
    grant = _id(await _entry(redis, 50, expires=NOW + 9_000))
    first = await _entry(redis, -30, floor=-100)
    await _entry(redis, -120, floor=-100)
    assert await _state(redis) == ["-100", "0", "0", "0"]
    refund = await _entry(redis, 30, kind="refund", extra=("", grant, 30), now=NOW + 1)
    assert refund[0] == "ok" and _grants(refund) is None
    assert (await _state(redis))[:3] == ["-70", "0", "0"]
    assert _grants(first) == [{"grant_id": grant, "amount": -30}]
