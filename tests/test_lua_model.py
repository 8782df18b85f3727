"""Random runs of adds, grants, deducts, holds, settles, refunds and expiries on one account,
checked after every step against what the ledger says (engine.ledger.expiring.rebuild): the
state a rebuild after data loss would write must be the state the scripts keep. On fakeredis and
on a real redis-server."""

import random
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from engine.holds.ids import parse_hold_id
from engine.ledger.credits import refund_moves
from engine.ledger.expiring import Expiring, account_json, rebuild
from engine.models import LedgerEntry
from engine.store.keys import account_keys, new_ledger_id
from engine.store.scripts import SCRIPTS
from tests.test_lua_scripts import call_async, redis  # noqa: F401  (the fixture)

pytestmark = pytest.mark.anyio

KEYS = account_keys("app_model", "user_1")
WHO = account_json("app_model", "user_1")
HYDRATE_KEYS = [KEYS.account, KEYS.grants, KEYS.holds, KEYS.expiry_due]


class Account:
    def __init__(self, redis: Redis, floor: int) -> None:  # noqa: F811
        self.redis, self.floor = redis, floor
        self.now = 10_000_000
        self.holds: list[tuple[str, str, int]] = []  # hold_id, token, amount
        self.refunded: set[str] = set()

    def _head(self, kind: str, ledger_id: str, **extra: Any) -> bytes:
        fields = {
            "ledger_id": ledger_id, "app_id": "app_model", "user_id": "user_1", "kind": kind,
            "description": None, "reference_id": None, "metadata": None,
            "idempotency_key": None, "refund_of": None, "created_at": self.now, **extra,
        }  # fmt: skip
        return orjson.dumps(fields)[:-1]

    async def entry(self, kind: str, delta: int, mode: str = "", extra: tuple[Any, ...] = (),
                    **fields: Any) -> list[Any]:  # fmt: skip
        ledger_id = new_ledger_id(KEYS.shard)
        grant, *parts = extra or ("",)
        args = [delta, self.floor, self._head(kind, ledger_id, **fields), "", 60, self.now,
                ledger_id, mode, "", grant, "", "", *parts]  # fmt: skip
        reply: list[Any] = await call_async(
            self.redis, SCRIPTS.apply_entry, keys=KEYS.script_keys(), args=args
        )
        return reply

    async def grant(self, amount: int, seconds: int) -> list[Any]:
        expires = self.now + seconds * 1000
        return await self.entry("add", amount, "g", (expires,), expires_at=expires)

    async def hold(self, amount: int, seconds: int) -> list[Any]:
        ledger_id, token = new_ledger_id(KEYS.shard), f"{random.getrandbits(96):024x}"
        hold_id, expires = f"hold_{token}_dXNlcl8x", self.now + seconds * 1000
        head = self._head("hold", ledger_id, hold_id=hold_id, expires_at=expires)
        args = [amount, self.floor, head, "", 60, self.now, ledger_id, "", token, expires]
        reply: list[Any] = await call_async(
            self.redis, SCRIPTS.hold, keys=KEYS.script_keys(), args=args
        )
        if reply[0] == "ok":
            self.holds.append((hold_id, token, amount))
        return reply

    async def settle(self, index: int, amount: str) -> list[Any]:
        _, token, _ = self.holds.pop(index)
        ledger_id = new_ledger_id(KEYS.shard)
        head = self._head("release" if amount == "0" else "deduct", ledger_id)
        keys = [*KEYS.script_keys(), KEYS.hold_end(token)]
        args = [amount, token, head, "", 60, self.now, ledger_id, "e", 60_000, ""]
        reply: list[Any] = await call_async(self.redis, SCRIPTS.settle_hold, keys=keys, args=args)
        return reply

    async def refund(self, original: LedgerEntry) -> list[Any]:
        self.refunded.add(original.ledger_id)
        mode, grant, parts = refund_moves(original)
        return await self.entry(
            "refund", -original.amount, mode, (grant, *parts), refund_of=original.ledger_id
        )

    async def expire(self) -> None:
        args = [self.now, new_ledger_id(KEYS.shard), WHO, ""]
        await call_async(self.redis, SCRIPTS.expire_due, keys=KEYS.script_keys(), args=args)

    async def entries(self) -> list[LedgerEntry]:
        return [LedgerEntry.from_json(f["e"]) for _, f in await self.redis.xrange(KEYS.outbox)]

    async def state(self) -> dict[str, Any]:
        fields = ("balance", "seq", "held", "granted", "reserved")
        values = await self.redis.hmget(KEYS.account, *fields)
        grants = await self.redis.hgetall(KEYS.grants)
        holds = await self.redis.hgetall(KEYS.holds)
        # A grant past its time with nothing left writes nothing when it goes: either way.
        live = {
            g: v for g, v in grants.items() if v.split()[2] != "0" or int(v.split()[0]) > self.now
        }
        return {
            **{name: int(value or 0) for name, value in zip(fields, values, strict=True)},
            "grants": live,
            "holds": {token: value.split(" ", 3)[:3] for token, value in holds.items()},
        }


def expected(state: Expiring, balance: int, seq: int) -> dict[str, Any]:
    return {
        "balance": balance, "seq": seq, "held": state.held, "granted": state.granted,
        "reserved": sum(state.reserved().values()),
        "grants": {g: f"{e} {s} {left}" for g, (e, s, left) in state.grants.items()},
        "holds": {
            parse_hold_id(h)[1]: [str(e.expires_at_ms), str(e.held),
                            ",".join(f"{p['grant_id']}={-p['amount']}" for p in e.grants or ())]
            for h, e in state.holds.items()
        },
    }  # fmt: skip


async def step(account: Account, rnd: random.Random) -> None:
    op = rnd.choice(["add", "grant", "grant", "deduct", "deduct", "hold", "hold", "settle",
                     "refund", "tick", "tick"])  # fmt: skip
    if op == "add":
        await account.entry("add", rnd.randint(1, 100))
    elif op == "grant":
        await account.grant(rnd.randint(1, 100), rnd.randint(1, 20))
    elif op == "deduct":
        await account.entry("deduct", -rnd.randint(1, 80))
    elif op == "hold":
        await account.hold(rnd.randint(1, 80), rnd.randint(1, 20))
    elif op == "settle" and account.holds:
        index = rnd.randrange(len(account.holds))
        held = account.holds[index][2]
        await account.settle(index, rnd.choice(["0", "", str(rnd.randint(1, held))]))
    elif op == "refund":
        candidates = [
            e for e in await account.entries()
            if e.kind in ("add", "deduct") and e.ledger_id not in account.refunded
        ]  # fmt: skip
        if candidates:
            await account.refund(rnd.choice(candidates))
    elif op == "tick":
        account.now += rnd.randint(1, 8) * 1000
        if rnd.random() < 0.5:
            await account.expire()


async def check(account: Account) -> None:
    entries = await account.entries()
    state = await account.state()
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert state == expected(rebuild(entries, account.now), sum(e.amount for e in entries),
                             len(entries))  # fmt: skip
    lasting = state["balance"] - state["granted"] - state["reserved"]
    assert lasting >= account.floor
    # Grant credits pay an overdraft back first: none are left to spend while one runs (a hold
    # may still keep some, reserved before the overdraft began).
    assert lasting >= 0 or state["granted"] == 0


async def rehydrate(account: Account) -> None:
    """Redis loses the account; the ledger rebuilds it, and nothing is different after."""
    before = await account.state()
    entries = await account.entries()
    rebuilt = rebuild(entries, account.now)
    await account.redis.delete(*HYDRATE_KEYS[:3])
    updated = str(entries[-1].created_at_ms) if entries else ""
    await call_async(account.redis, SCRIPTS.hydrate,
        keys=HYDRATE_KEYS, args=[before["balance"], before["seq"], updated, "",
                                 *rebuilt.hydrate_args()],
    )  # fmt: skip
    assert await account.state() == before


@pytest.mark.parametrize("floor", [0, -50])
async def test_the_scripts_keep_what_the_ledger_says(redis: Redis, floor: int) -> None:  # noqa: F811
    for seed in range(25):
        await redis.flushall()
        account = Account(redis, floor)
        await call_async(
            account.redis, SCRIPTS.hydrate, keys=HYDRATE_KEYS, args=[0, 0, "", "", 0, 0, 0, "", 0]
        )
        rnd = random.Random(seed)
        for number in range(60):
            await step(account, rnd)
            await check(account)
            if number % 15 == 14:
                await rehydrate(account)
