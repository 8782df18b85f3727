"""The contract of every Lua script, run on fakeredis and on a real redis-server."""

from collections.abc import AsyncIterator, Sequence
from typing import Any

import fakeredis
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from engine.models import MAX_AMOUNT
from engine.store.keys import account_keys
from engine.store.scripts import SCRIPTS, Lua, library, unloaded
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio

KEYS = account_keys("app_lua", "user_1")


@pytest.fixture(params=["fakeredis", "redis-server"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator["Redis"]:
    if request.param == "fakeredis":
        client: Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        client = Redis.from_url(server.url, decode_responses=True)
    await client.flushall()
    yield client
    await client.aclose()


async def call_async(
    client: "Redis", script: Lua, keys: Sequence[str] = (), args: Sequence[Any] = ()
) -> Any:
    """One script call on an asyncio client (fakeredis or redis-server), loading the script or
    the account library where it lacks it, as engine.store.scripts.call does."""
    for _ in range(3):
        try:
            return await client.execute_command(*script.command, len(keys), *keys, *args)
        except ResponseError as exc:
            if not unloaded(exc):
                raise
        if script.command[0] == "FCALL":
            await client.function_load(library(), replace=True)
        else:
            await client.script_load(script.text)
    raise AssertionError("Redis keeps losing the script")


def _entry(ledger_id: str = "L1") -> bytes:
    return orjson.dumps({"ledger_id": ledger_id, "user_id": "user_1", "kind": "x"})[:-1]


async def apply_entry(
    redis: "Redis",
    delta: int,
    *,
    idempotency_key: str | None = None,
    refund_of: str | None = None,
    clamp: bool = False,
    floor: int = 0,
    fingerprint: str = "fp",
    ledger_id: str = "L1",
    top_up: bool = False,
) -> list[Any]:
    keys = KEYS.script_keys()
    if idempotency_key:
        keys.append(KEYS.idempotency(idempotency_key))
    if refund_of:
        keys.append(KEYS.refund_marker(refund_of))
    mode = ("i" if idempotency_key else "") + ("r" if refund_of else "") + ("c" if clamp else "")
    args = [delta, floor, _entry(ledger_id), fingerprint, 86_400, 1234, ledger_id, mode, ""]
    if top_up:
        keys += [KEYS.top_up(), KEYS.top_up_due()]
        args[7] += "t"
        args[8] = KEYS.top_up_member()
    reply: list[Any] = await call_async(redis, SCRIPTS.apply_entry, keys=keys, args=args)
    return reply


async def hydrate(redis: "Redis", balance: int, updated_at: str = "99", seq: int = 0) -> int:
    written: int = await call_async(
        redis,
        SCRIPTS.hydrate,
        keys=[KEYS.account, KEYS.grants, KEYS.holds, KEYS.expiry_due],
        args=[balance, seq, updated_at, "", 0, 0, 0, "", 0],
    )
    return written


async def test_missing_account_is_reported_not_read_as_zero(redis: "Redis") -> None:
    assert await apply_entry(redis, 10) == ["missing"]
    assert await redis.exists(KEYS.account, KEYS.outbox, KEYS.recent) == 0


async def test_hydrate_writes_only_a_missing_account(redis: "Redis") -> None:
    assert await hydrate(redis, 50) == 1
    assert await hydrate(redis, 7) == 0
    assert await redis.hgetall(KEYS.account) == {"balance": "50", "seq": "0", "updated_at": "99"}


async def test_apply_changes_balance_and_appends_entry_everywhere(redis: "Redis") -> None:
    await hydrate(redis, 100, seq=41)
    status, before, entry, *_ = await apply_entry(redis, -30)
    assert (status, int(before)) == ("ok", 100)
    assert orjson.loads(entry)["amount"] == -30
    assert orjson.loads(entry)["balance_after"] == 70
    assert orjson.loads(entry)["seq"] == 42
    state = await redis.hgetall(KEYS.account)
    assert state.pop("hydrated_at")  # rebuilt for a request: it counts as used
    assert state == {"balance": "70", "seq": "42", "updated_at": "1234"}
    outbox = await redis.xrange(KEYS.outbox)
    assert [fields["e"] for _, fields in outbox] == [entry]
    assert await redis.lrange(KEYS.recent, 0, -1) == ["L1"]  # the entry is in the hash
    assert await redis.hgetall(KEYS.unpersisted) == {"L1": entry}


async def test_insufficient_writes_nothing(redis: "Redis") -> None:
    await hydrate(redis, 5)
    assert await apply_entry(redis, -6, idempotency_key="k") == ["insufficient", "5", "5"]
    assert await redis.hget(KEYS.account, "balance") == "5"
    assert (
        await redis.exists(KEYS.outbox, KEYS.recent, KEYS.unpersisted, KEYS.idempotency("k")) == 0
    )


async def test_exact_balance_can_be_spent_to_the_floor(redis: "Redis") -> None:
    await hydrate(redis, 5)
    assert (await apply_entry(redis, -5))[0] == "ok"
    assert (await apply_entry(redis, -1))[0] == "insufficient"


async def test_overdraft_floor_allows_negative_balance(redis: "Redis") -> None:
    await hydrate(redis, 5)
    assert (await apply_entry(redis, -15, floor=-10))[0] == "ok"
    assert await apply_entry(redis, -1, floor=-10) == ["insufficient", "-10", "-10"]


async def test_adds_are_allowed_below_the_floor(redis: "Redis") -> None:
    await hydrate(redis, -10)  # overdraft since lowered to 0
    assert (await apply_entry(redis, 3))[0] == "ok"
    assert await redis.hget(KEYS.account, "balance") == "-7"


async def test_ceiling_refuses_overflow_and_keeps_exact_big_numbers(redis: "Redis") -> None:
    await hydrate(redis, MAX_AMOUNT - 1)
    assert await apply_entry(redis, 2) == ["overflow", str(MAX_AMOUNT - 1)]
    _, before, entry, *_ = await apply_entry(redis, 1)
    assert int(before) == MAX_AMOUNT - 1
    assert orjson.loads(entry)["balance_after"] == MAX_AMOUNT  # not 9.007199254741e+15
    assert await redis.hget(KEYS.account, "balance") == str(MAX_AMOUNT)
    _, before, entry, *_ = await apply_entry(redis, -MAX_AMOUNT)
    assert orjson.loads(entry)["balance_after"] == 0


async def test_idempotency_replays_the_first_result_once(redis: "Redis") -> None:
    await hydrate(redis, 100)
    first = await apply_entry(redis, -10, idempotency_key="k", ledger_id="L1")
    again = await apply_entry(redis, -10, idempotency_key="k", ledger_id="L2")
    assert first == ["ok", "100", first[2], 0, "90"]
    # balance_before, ledger_id, top_up, available, created_at, amount: the first reply.
    assert again == ["replay", "100", "L1", "0", "90", "1234", "-10"]
    assert await redis.hget(KEYS.account, "balance") == "90"
    assert await redis.xlen(KEYS.outbox) == 1
    assert 86_000 < await redis.ttl(KEYS.idempotency("k")) <= 86_400
    # One short string, not a copy of the entry.
    assert await redis.get(KEYS.idempotency("k")) == "fp 100 L1 0 90 1234 -10"


async def test_a_replay_needs_nothing_but_its_record(redis: "Redis") -> None:
    await hydrate(redis, 100)
    await apply_entry(redis, -10, idempotency_key="k", ledger_id="L1")
    # The entry persisted and the account gone from Redis (evicted): the key still answers.
    await redis.delete(KEYS.account, KEYS.outbox, KEYS.unpersisted, KEYS.recent)
    again = await apply_entry(redis, -10, idempotency_key="k", ledger_id="L2")
    assert again == ["replay", "100", "L1", "0", "90", "1234", "-10"]
    assert await apply_entry(redis, -10, idempotency_key="k", fingerprint="b") == ["conflict"]


async def test_a_record_the_previous_version_stored_still_replays(redis: "Redis") -> None:
    await hydrate(redis, 90)
    entry = orjson.dumps({"ledger_id": "L1", "amount": -10, "balance_after": 90}).decode()
    record = KEYS.idempotency("k")
    old = {"fingerprint": "ab" * 32, "balance_before": "100", "entry": entry, "available": "90"}
    await redis.hset(record, mapping=old)
    fingerprint = "ab" * 16  # the new fingerprint is the first half of the old one
    again = await apply_entry(redis, -10, idempotency_key="k", fingerprint=fingerprint)
    assert again == ["replay_entry", "100", entry, 0, "90"]
    assert await apply_entry(redis, -10, idempotency_key="k", fingerprint="cd" * 16) == ["conflict"]
    assert await redis.hget(KEYS.account, "balance") == "90"


async def test_idempotency_key_with_another_request_conflicts(redis: "Redis") -> None:
    await hydrate(redis, 100)
    await apply_entry(redis, -10, idempotency_key="k", fingerprint="a")
    assert await apply_entry(redis, -10, idempotency_key="k", fingerprint="b") == ["conflict"]
    assert await redis.hget(KEYS.account, "balance") == "90"


async def test_refused_request_leaves_its_idempotency_key_free(redis: "Redis") -> None:
    await hydrate(redis, 5)
    assert (await apply_entry(redis, -10, idempotency_key="k"))[0] == "insufficient"
    await apply_entry(redis, 10, idempotency_key="topup")
    assert (await apply_entry(redis, -10, idempotency_key="k"))[0] == "ok"


async def test_recent_list_names_every_unpersisted_entry_newest_first(redis: "Redis") -> None:
    await hydrate(redis, 1_000)
    for i in range(300):
        await apply_entry(redis, -1, ledger_id=f"L{i}")
    # No cap: only the worker takes ids out, once PostgreSQL has their entries.
    recent = await redis.lrange(KEYS.recent, 0, -1)
    assert recent == [f"L{i}" for i in range(299, -1, -1)]
    assert await redis.hlen(KEYS.unpersisted) == await redis.xlen(KEYS.outbox) == 300


async def test_scripts_survive_script_flush(redis: "Redis") -> None:
    await redis.script_flush()
    await hydrate(redis, 10)  # NOSCRIPT: loaded and run
    await redis.function_flush()
    assert (await apply_entry(redis, -1))[0] == "ok"  # no such function: loaded and run


async def test_an_entry_is_refunded_once(redis: "Redis") -> None:
    await hydrate(redis, 100)
    await apply_entry(redis, -10, ledger_id="D1")
    assert (await apply_entry(redis, 10, refund_of="D1", ledger_id="R1"))[0] == "ok"
    assert await apply_entry(redis, 10, refund_of="D1", ledger_id="R2") == ["refunded", "R1"]
    assert await redis.hget(KEYS.account, "balance") == "100"
    assert await redis.get(KEYS.refund_marker("D1")) == "R1"
    assert await redis.ttl(KEYS.refund_marker("D1")) == -1  # never expires


async def test_refund_replay_beats_the_refund_marker(redis: "Redis") -> None:
    await hydrate(redis, 100)
    await apply_entry(redis, -10, ledger_id="D1")
    first = await apply_entry(redis, 10, refund_of="D1", idempotency_key="r", ledger_id="R1")
    again = await apply_entry(redis, 10, refund_of="D1", idempotency_key="r", ledger_id="R2")
    assert (first[0], again[0], again[2]) == ("ok", "replay", "R1")


async def test_refused_refund_leaves_no_marker(redis: "Redis") -> None:
    await hydrate(redis, 100)
    await apply_entry(redis, 100, ledger_id="A1")
    await apply_entry(redis, -150, ledger_id="D1")
    assert await apply_entry(redis, -100, refund_of="A1") == ["insufficient", "50", "50"]
    assert await redis.exists(KEYS.refund_marker("A1")) == 0


async def test_repair_account_only_when_seq_unchanged(redis: "Redis") -> None:
    await hydrate(redis, 100, seq=7)
    assert await call_async(redis, SCRIPTS.repair_account, keys=[KEYS.account], args=[6, 5]) == 0
    assert await redis.hget(KEYS.account, "balance") == "100"
    assert await call_async(redis, SCRIPTS.repair_account, keys=[KEYS.account], args=[7, 5]) == 1
    assert await redis.hget(KEYS.account, "balance") == "5"
    assert (
        await call_async(redis, SCRIPTS.repair_account, keys=[KEYS.account + "x"], args=[7, 5]) == 0
    )


async def test_clamp_takes_only_what_the_floor_allows(redis: "Redis") -> None:
    await hydrate(redis, 30)
    status, before, entry, *_ = await apply_entry(redis, -50, clamp=True, floor=-5)
    assert (status, int(before), orjson.loads(entry)["amount"]) == ("ok", 30, -35)
    assert await redis.hget(KEYS.account, "balance") == "-5"
    assert await apply_entry(redis, -1, clamp=True, floor=-5) == ["insufficient", "-5", "-5"]
    assert await redis.xlen(KEYS.outbox) == 1


async def test_a_deduct_below_the_threshold_starts_one_top_up(redis: "Redis") -> None:
    await hydrate(redis, 100)
    await redis.hset(KEYS.top_up(), "threshold", 50)
    assert (await apply_entry(redis, -40, top_up=True, ledger_id="D1"))[3] == 0  # 60 left
    assert (await apply_entry(redis, -20, top_up=True, ledger_id="D2"))[3] == 1  # 40 left
    # Further deducts while that top-up is pending start nothing more.
    assert (await apply_entry(redis, -20, top_up=True, ledger_id="D3"))[3] == 0
    assert await redis.hget(KEYS.top_up(), "pending") == "D2"
    assert await redis.zrange(KEYS.top_up_due(), 0, -1, withscores=True) == [
        (KEYS.top_up_member(), 1234.0)
    ]
    # Once the worker clears it, the next deduct below the threshold starts another.
    await redis.hdel(KEYS.top_up(), "pending")
    assert (await apply_entry(redis, -1, top_up=True, ledger_id="D4"))[3] == 1


async def test_no_top_up_without_a_threshold_or_for_a_refused_deduct(redis: "Redis") -> None:
    await hydrate(redis, 100)
    assert (await apply_entry(redis, -90, top_up=True))[3] == 0
    await redis.hset(KEYS.top_up(), "threshold", 50)
    assert (await apply_entry(redis, -20, top_up=True)) == ["insufficient", "10", "10"]
    assert await redis.hget(KEYS.top_up(), "pending") is None
    assert await redis.zcard(KEYS.top_up_due()) == 0
