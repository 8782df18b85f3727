"""Redis memory per account, idempotency key and unpersisted entry: `python -m bench.memory`.

Loads 1,000,000 users into a redis-server of its own through the scripts themselves (pipelined
hydrate.lua and apply_entry.lua calls, the worker's post-COMMIT commands, evict_account.lua), so
that what is measured is the layout they write; reads INFO memory's used_memory around each step
and MEMORY USAGE of samples. Prints the layout Tally used before (a recent list of the newest 200
whole entries per account, an idempotency record holding the whole entry) for comparison.

User ids and idempotency keys are UUIDs (36 characters), app ids as `tally apps create` makes
them: ids take much of the memory, so shorter ones cost less.
"""

import argparse
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from statistics import mean
from typing import Any

import orjson
import redis

from engine.store.keys import AccountKeys, account_keys, new_ledger_id, outbox_key
from engine.store.scripts import SCRIPTS, Lua, run_all
from tests.servers import RedisServer

_CHUNK = 2_000  # script calls per round trip
_OLD_RECENT = 200  # the newest entries the previous version kept per account, whole
_FUNDS = 1_000_000


class Bench:
    def __init__(self, client: redis.Redis, users: int, sample: int) -> None:
        self.redis = client
        self.scripts = SCRIPTS
        self.app_id = f"app_{os.urandom(8).hex()}"
        self.users = [str(uuid.UUID(bytes=os.urandom(16), version=4)) for _ in range(users)]
        self.keys = [account_keys(self.app_id, user) for user in self.users]
        self.sample = sample

    def used(self) -> int:
        return int(self.redis.info("memory")["used_memory"])

    def calls(self, script: Lua, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        replies: list[Any] = []
        for start in range(0, len(calls), _CHUNK):
            replies += run_all(self.redis, script, calls[start : start + _CHUNK])
        return replies

    def entries(self, keys: list[AccountKeys], delta: int, idempotent: bool = False) -> list[str]:
        """One apply_entry.lua call per account, as Credits makes it; returns the entries."""
        now_ms = time.time_ns() // 1_000_000
        calls = []
        for account in keys:
            ledger_id = new_ledger_id(account.shard, now_ms)
            key = str(uuid.uuid4()) if idempotent else None
            kind = "add" if delta > 0 else "deduct"
            head = _head(ledger_id, self.app_id, account, kind, now_ms, key)
            script_keys, mode, fingerprint = account.script_keys(), "", ""
            if key is not None:
                script_keys.append(account.idempotency(key))
                mode, fingerprint = "i", hashlib.sha256(key.encode()).hexdigest()[:32]
            args = [delta, 0, head, fingerprint, 86_400, now_ms, ledger_id, mode, "", "", "", ""]
            calls.append((script_keys, args))
        replies = self.calls(self.scripts.apply_entry, calls)
        assert all(reply[0] == "ok" for reply in replies), replies[:3]
        return [reply[2] for reply in replies]

    def persist(self, keys: list[AccountKeys], entries: list[str]) -> None:
        """What the worker does in Redis after its COMMIT (engine.ledger.outbox.flush)."""
        done = list(zip(keys, entries, strict=True))
        for start in range(0, len(done), _CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for account, entry in done[start : start + _CHUNK]:
                ledger_id = orjson.loads(entry)["ledger_id"]
                pipe.hdel(account.unpersisted, ledger_id)
                pipe.lrem(account.recent, -1, ledger_id)
            pipe.execute()
        for shard in {account.shard for account in keys}:
            self.redis.xtrim(outbox_key(shard), 0, approximate=False)

    def settle(self) -> None:
        """Wait for Redis to shrink the tables of keys it no longer has (a few cron ticks)."""
        last = self.used()
        for _ in range(50):
            time.sleep(0.2)
            if self.used() == last:
                return
            last = self.used()

    def usage(self, names: list[str]) -> float:
        return mean(int(self.redis.memory_usage(name) or 0) for name in names)


def _head(
    ledger_id: str, app_id: str, account: AccountKeys, kind: str, now_ms: int, key: str | None
) -> bytes:
    user_id = account.top_up_member().split(":", 1)[1]
    fields = {
        "ledger_id": ledger_id, "app_id": app_id, "user_id": user_id, "kind": kind,
        "description": None, "reference_id": None, "metadata": None, "idempotency_key": key,
        "refund_of": None, "created_at": now_ms,
    }  # fmt: skip
    return orjson.dumps(fields)[:-1]


def measure(bench: Bench, step: Callable[[], Any]) -> int:
    before = bench.used()
    step()
    return bench.used() - before


def run(users: int, sample: int) -> dict[str, float]:
    server = RedisServer().start()
    try:
        client = redis.Redis(port=server.port, decode_responses=True)
        bench = Bench(client, users, sample)
        version = client.info("server")["redis_version"]
        figures: dict[str, float] = {"users": users}
        print(f"redis-server {version}, {users:,} users, samples of {sample:,}", flush=True)
        baseline = bench.used()

        def load() -> None:
            new = [([k.account, k.grants, k.holds, k.expiry_due],
                     [0, 0, "", "", 0, 0, 0, "", 0]) for k in bench.keys]  # fmt: skip
            bench.calls(bench.scripts.hydrate, new)
            bench.persist(bench.keys, bench.entries(bench.keys, _FUNDS))

        started = time.monotonic()
        figures["active account"] = measure(bench, load) / users
        print(f"  loaded in {time.monotonic() - started:.0f} s", flush=True)
        figures["active account, MEMORY USAGE"] = bench.usage(
            [k.account for k in bench.keys[:sample]]
        )
        some = bench.keys[:sample]
        entries: list[str] = []
        figures["unpersisted entry"] = (
            measure(bench, lambda: entries.extend(bench.entries(some, -1))) / sample
        )
        bench.persist(some, entries)
        entry = entries[0]
        entries.clear()
        keyed = measure(bench, lambda: entries.extend(bench.entries(some, -1, idempotent=True)))
        persisted = measure(bench, lambda: bench.persist(some, entries))
        figures["idempotency key"] = (keyed + persisted) / sample
        idem = [name for name in client.scan_iter(match="tally:{s*}:idem:*", count=10_000)][:sample]
        figures["idempotency key, MEMORY USAGE"] = bench.usage(idem)
        figures["idempotency record (value)"] = mean(len(client.get(n) or "") for n in idem)
        # They expire after a day; the rest of the run is about accounts.
        for start in range(0, len(idem), _CHUNK):
            client.delete(*idem[start : start + _CHUNK])

        def evict() -> None:
            idle_before = time.time_ns() // 1_000_000 + 86_400_000
            calls = [
                ([k.account, k.recent, k.unpersisted, k.grants, k.holds, k.top_up(),
                  k.tombstone()], [idle_before, 0, k.tombstone_member()])
                for k in bench.keys
            ]  # fmt: skip
            assert sum(bench.calls(bench.scripts.evict_account, calls)) == users

        figures["freed by an eviction"] = -measure(bench, evict) / users
        bench.settle()
        figures["idle account"] = (bench.used() - baseline) / users
        client.flushall()
        figures.update(_previous_layout(bench, sample, entry))
    finally:
        server.stop()
    return figures


def _previous_layout(bench: Bench, sample: int, entry: str) -> dict[str, float]:
    """The same accounts as Tally kept them before: the newest 200 whole entries each in their
    recent list (persisted or not), the whole entry in every idempotency record."""
    client = bench.redis
    some = bench.keys[:sample]

    def accounts() -> None:
        for start in range(0, len(some), 100):
            pipe = client.pipeline(transaction=False)
            for account in some[start : start + 100]:
                pipe.hset(
                    account.account,
                    mapping={
                        "balance": _FUNDS,
                        "seq": 201,
                        "updated_at": time.time_ns() // 1_000_000,
                    },
                )
                pipe.lpush(account.recent, *([entry] * _OLD_RECENT))
            pipe.execute()  # fmt: skip

    def records() -> None:
        pipe = client.pipeline(transaction=False)
        for account in some:
            name = account.idempotency(str(uuid.uuid4()))
            pipe.hset(name, mapping={"fingerprint": "ab" * 32, "balance_before": _FUNDS,
                                     "entry": entry, "available": _FUNDS - 1})  # fmt: skip
            pipe.expire(name, 86_400)
        pipe.execute()

    figures: dict[str, float] = {"entry JSON": len(entry)}
    figures["previous: account with 200 entries"] = measure(bench, accounts) / len(some)
    figures["previous: idempotency key"] = measure(bench, records) / len(some)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="accounts per small step")
    args = parser.parse_args()
    figures = run(args.users, min(args.sample, args.users))
    print()
    rows = [
        ("idle account (evicted: its tombstone)", "idle account"),
        ("  memory an eviction gives back", "freed by an eviction"),
        ("active account (persisted, recent list empty)", "active account"),
        ("  MEMORY USAGE of its hash", "active account, MEMORY USAGE"),
        ("idempotency key (kept 24 h)", "idempotency key"),
        ("  MEMORY USAGE of the key", "idempotency key, MEMORY USAGE"),
        ("  its value, characters", "idempotency record (value)"),
        ("unpersisted entry (outbox, index, recent list)", "unpersisted entry"),
        ("  of which the entry's JSON, characters", "entry JSON"),
        ("previous layout: account, its 200 newest entries", "previous: account with 200 entries"),
        ("previous layout: idempotency key", "previous: idempotency key"),
    ]  # fmt: skip
    for label, name in rows:
        print(f"{label:<55} {figures[name]:>10,.0f} B")
    users = int(figures["users"])
    before = figures["previous: account with 200 entries"] * users
    print(
        f"\n{users:,} users who each made 200 calls: {before / 1e9:,.1f} GB before;"
        f" now {figures['idle account'] * users / 1e6:,.0f} MB once idle,"
        f" {figures['active account'] * users / 1e6:,.0f} MB while all active"
    )


if __name__ == "__main__":
    main()
