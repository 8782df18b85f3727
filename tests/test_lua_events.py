"""The scripts' share of events and plans (lua/account.lua watch() and over_plan()), run on
fakeredis and on a real redis-server: thresholds crossed, and operations counted and capped."""

from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from engine.events.derive import crossing_events
from engine.events.watch import watch_arg
from engine.models import AppContext
from engine.store.keys import account_keys, new_ledger_id
from engine.store.scripts import SCRIPTS
from tests.test_lua_holds import NOW, _head, _open
from tests.test_lua_scripts import call_async, redis  # noqa: F401  (the fixture)

pytestmark = pytest.mark.anyio

KEYS = account_keys("app_lua", "user_1")
PLAN = KEYS.plan_usage("app_lua", "2026-11")
WATCH = watch_arg(AppContext("app_lua", 0, low_balance_thresholds=(500, 100, 0)))


async def _apply(
    redis: Redis,  # noqa: F811
    delta: int,
    *,
    watch: str = WATCH,
    allowed: str | None = None,
    floor: int = 0,
) -> list[Any]:
    ledger_id = new_ledger_id(KEYS.shard)
    keys, mode = KEYS.script_keys(), ""
    if allowed is not None:
        keys, mode = [*keys, PLAN], "l"
    head = _head("add" if delta > 0 else "deduct", ledger_id)
    args = [delta, floor, head, "", 60, NOW, ledger_id, mode, "", "", watch, allowed or ""]
    reply: list[Any] = await call_async(redis, SCRIPTS.apply_entry, keys=keys, args=args)
    return reply


async def _hold(redis: Redis, amount: int, watch: str = WATCH) -> list[Any]:  # noqa: F811
    ledger_id = new_ledger_id(KEYS.shard)
    head = _head("hold", ledger_id, hold_id="hold_x", expires_at=NOW + 60_000)
    args = [amount, 0, head, "", 60, NOW, ledger_id, "", "t1", NOW + 60_000, watch, ""]
    reply: list[Any] = await call_async(redis, SCRIPTS.hold, keys=KEYS.script_keys(), args=args)
    return reply


async def _crossings(redis: Redis) -> list[dict[str, Any]]:  # noqa: F811
    messages = await redis.xrange(KEYS.outbox)
    return [orjson.loads(fields["v"]) for _, fields in messages if "v" in fields]


def test_the_watch_argument_puts_the_highest_first() -> None:
    assert WATCH == "500 0 500 100 0"
    overdraft = AppContext("a", 50, low_balance_thresholds=(-20,))
    assert watch_arg(overdraft) == "-20 -50 -20"
    assert watch_arg(AppContext("a", 0)) == "0 0"


async def test_a_fall_past_thresholds_is_told_once_per_threshold(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 1_000)
    assert (await _apply(redis, -400))[0] == "ok"  # 600: nothing crossed
    assert await _crossings(redis) == []
    assert (await _apply(redis, -550))[0] == "ok"  # 50: past 500 and 100 at once
    [crossing] = await _crossings(redis)
    assert crossing["thresholds"] == [500, 100] and crossing["depleted"] is False
    assert (crossing["available_before"], crossing["available"], crossing["balance"]) == (
        600, 50, 50,
    )  # fmt: skip
    assert (crossing["app_id"], crossing["user_id"], crossing["seq"]) == ("app_lua", "user_1", 2)
    events = crossing_events(crossing)
    assert [(e.type, e.data["threshold"]) for e in events] == [
        ("balance.low", 500), ("balance.low", 100),
    ]  # fmt: skip
    assert (await _apply(redis, -50))[0] == "ok"  # 0: the last threshold, and the floor
    last = (await _crossings(redis))[-1]
    assert last["thresholds"] == [0] and last["depleted"] is True
    assert [e.type for e in crossing_events(last)] == ["balance.low", "balance.depleted"]
    # Below every threshold nothing more is told; above one again, it is armed again.
    await _apply(redis, 200)
    await _apply(redis, -150)  # 50: past 100 again
    assert (await _crossings(redis))[-1]["thresholds"] == [100]
    assert len(await _crossings(redis)) == 3


async def test_a_hold_lowers_what_can_be_spent_and_can_cross(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 600)
    assert (await _hold(redis, 150))[0] == "ok"  # available 450
    [crossing] = await _crossings(redis)
    assert crossing["thresholds"] == [500]
    assert (crossing["balance"], crossing["available"]) == (600, 450)


async def test_without_a_watch_nothing_is_told(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 1_000)
    await _apply(redis, -1_000, watch="")
    assert await _crossings(redis) == []


async def test_operations_are_counted_and_capped(redis: Redis) -> None:  # noqa: F811
    await _open(redis, 100)
    assert (await _apply(redis, -1, allowed=""))[0] == "ok"  # counted, no cap
    assert await redis.hget(PLAN, "n") == "1"
    assert 0 < await redis.ttl(PLAN) <= 40 * 86_400
    assert (await _apply(redis, -1, allowed="3"))[0] == "ok"
    assert (await _apply(redis, -1, allowed="3"))[0] == "ok"
    assert await _apply(redis, -1, allowed="3") == ["plan_limit", "3"]
    assert await redis.hget(KEYS.account, "balance") == "97"  # the refused one wrote nothing
    # Other shards' operations, as the worker sums them, count too.
    await redis.hset(PLAN, "others", "5")
    assert await _apply(redis, -1, allowed="8") == ["plan_limit", "8"]
    assert (await _apply(redis, -1, allowed="9"))[0] == "ok"
    assert await redis.hget(PLAN, "n") == "4"
    # A refused deduct is not an operation.
    assert (await _apply(redis, -1_000, allowed="100"))[0] == "insufficient"
    assert await redis.hget(PLAN, "n") == "4"


async def test_the_account_functions_answer_as_the_scripts_and_start_each_call_afresh(
    redis: Redis,  # noqa: F811
) -> None:
    """The account scripts run as functions of one library (FCALL), whose locals outlive a
    call; EVAL of the same text starts from nothing each time. Calls alternating between two
    users, crossing thresholds, must give the same replies and leave the same outbox both ways
    (a user named from the previous call's account would show here)."""
    names = [("app_lua", "user_1"), ("app_other", "user_2")]
    users = [account_keys(app_id, user_id) for app_id, user_id in names]

    async def run(through_eval: bool) -> tuple[list[Any], list[dict[str, str]]]:
        await redis.flushall()
        for keys in users:
            hydrate = [keys.account, keys.grants, keys.holds, keys.expiry_due]
            await call_async(redis, SCRIPTS.hydrate, hydrate, [1_000, 0, "", "", 0, 0, 0, "", 0])
        replies = []
        for step, delta in enumerate([-400, -450, -100, -60, 30, -500, -20]):
            keys = users[step % 2]
            ledger_id = f"0190aaaa-bbbb-7ccc-8ddd-{step:012d}"
            app_id, user_id = names[step % 2]
            head = _head("deduct" if delta < 0 else "add", ledger_id)
            head = head.replace(b'"app_lua","user_id":"user_1"', orjson.dumps(app_id)
                                + b',"user_id":' + orjson.dumps(user_id))  # fmt: skip
            args = [delta, 0, head, "", 60, NOW, ledger_id, "", "", "", WATCH, ""]
            script_keys = keys.script_keys()
            if through_eval:
                text = SCRIPTS.apply_entry.text
                reply = await redis.eval(text, len(script_keys), *script_keys, *args)  # type: ignore[misc]
            else:
                reply = await call_async(redis, SCRIPTS.apply_entry, script_keys, args)
            replies.append(reply)
        outbox = [fields for keys in users for _, fields in await redis.xrange(keys.outbox)]
        return replies, outbox

    replies, outbox = await run(through_eval=False)
    assert [reply[0] for reply in replies] == ["ok"] * 5 + ["insufficient", "ok"]
    crossings = [orjson.loads(fields["v"]) for fields in outbox if "v" in fields]
    assert {(c["app_id"], c["user_id"]) for c in crossings} == {
        ("app_lua", "user_1"), ("app_other", "user_2"),
    }  # fmt: skip
    assert (replies, outbox) == await run(through_eval=True)
