"""Crashes of the backing services, each on servers of its own."""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import redis

from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from engine.settings import Settings
from engine.store.db import migrate, open_pool
from engine.store.keys import SHARDS, complete_key, shard_of
from engine.vault.keyring import keyring
from tests.conftest import SECRET_KEY, ApiServer, AppUnderTest, WorkerProcess, fire, tally_env
from tests.servers import PostgresServer, RedisServer
from tests.test_ledger import ledger, wait_until


@dataclass
class Stack:
    redis: RedisServer
    postgres: PostgresServer
    settings: Settings
    api: ApiServer
    api_key: str
    app_id: str

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.api.url, headers=headers, timeout=30)


@pytest.fixture
def stack() -> Iterator[Stack]:
    redis = RedisServer(appendonly=True).start()
    postgres = PostgresServer().start()
    settings = Settings(redis_url=redis.url, database_url=postgres.url, secret_key=SECRET_KEY)
    pool = open_pool(settings.database_url, 1, wait=True)
    migrate(pool)
    app, new_key = Apps(AppRepository(pool, keyring(settings))).create("faults")
    pool.close()
    api = ApiServer(tally_env(settings))
    yield Stack(redis, postgres, settings, api, new_key.api_key, app.app_id)
    api.stop()
    redis.stop()
    postgres.stop()


def test_postgresql_down_does_not_stop_deducts_and_entries_arrive_after(stack: Stack) -> None:
    worker = WorkerProcess(tally_env(stack.settings))
    try:
        with stack.client() as client:
            client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
            wait_until(lambda: len(ledger(stack.settings, stack.app_id)) == 1, 15, "the add")
            stack.postgres.halt()
            responses = fire(
                stack.api.url,
                stack.api_key,
                [("/credits/deduct", {"user_id": "u", "amount": 1})] * 200,
            )
            assert [r.status_code for r in responses] == [200] * 200
            assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 800
            # History still shows every entry: PostgreSQL's share is not needed for page one.
            page = client.get("/credits/history", params={"user_id": "u", "limit": 10}).json()
            assert [e["balance_after"] for e in page["entries"]] == list(range(800, 810))
            assert httpx.get(stack.api.url + "/healthz").json()["postgres"] == "unavailable"
            stack.postgres.start()
            wait_until(lambda: len(ledger(stack.settings, stack.app_id)) == 201, 60, "201 rows")
        rows = ledger(stack.settings, stack.app_id)
        assert sum(r["amount"] for r in rows) == 800
        assert [r["seq"] for r in rows] == list(range(1, 202))
    finally:
        worker.stop()


def test_redis_killed_and_restarted_with_aof_keeps_balances(stack: Stack) -> None:
    with stack.client() as client:
        for user, amount in [("a", 100), ("b", 250)]:
            client.post("/credits/add", json={"user_id": user, "amount": amount})
        client.post("/credits/deduct", json={"user_id": "a", "amount": 30})
        wait_until(lambda: (stack.redis.root / "appendonlydir").exists(), 5, "the append-only file")
        time.sleep(1.5)  # appendfsync everysec: what the last second wrote may be lost
        stack.redis.kill()
        assert client.get("/credits/balance", params={"user_id": "a"}).status_code == 503
        stack.redis.start()
        # The same API process reconnects by itself.
        wait_until(
            lambda: client.get("/credits/balance", params={"user_id": "a"}).status_code == 200,
            10,
            "the API to reconnect",
        )
        assert client.get("/credits/balance", params={"user_id": "a"}).json()["balance"] == 70
        assert client.get("/credits/balance", params={"user_id": "b"}).json()["balance"] == 250
        deducted = client.post("/credits/deduct", json={"user_id": "b", "amount": 50}).json()
        assert deducted["balance_after"] == 200


def test_webhook_received_while_redis_is_down_is_applied_when_it_is_back(stack: Stack) -> None:
    from tests.test_webhooks import STRIPE_SECRET, Hooks, stripe_intent

    _update_app(stack.settings, stack.app_id, {"stripe_webhook_secret": STRIPE_SECRET})
    hooks = Hooks(stack.settings, stack.api, AppUnderTest(stack.app_id, stack.api_key, ""))
    stack.redis.kill()
    event = stripe_intent("evt_down", "pi_down", {"tally_user_id": "u", "tally_credits": "42"})
    response = hooks.stripe(event)
    assert response.status_code == 200 and response.json()["status"] == "pending"
    stack.redis.start()
    worker = WorkerProcess(tally_env(stack.settings))
    try:
        hooks.settled(1)
        assert hooks.events()[0]["status"] == "credited"
        assert hooks.balance("u") == 42
    finally:
        worker.stop()


def test_redis_out_of_memory_is_503_and_healthz_says_so(stack: Stack) -> None:
    with stack.client() as client:
        client.post("/credits/add", json={"user_id": "u", "amount": 100})
        direct = redis.Redis.from_url(stack.redis.url)
        # Without the account scripts' library, which Redis at maxmemory will not load either.
        direct.function_flush()
        # Well below what Redis uses: exactly at it, a little memory freed meanwhile (a client's
        # buffer) would let the next write through.
        direct.config_set("maxmemory", direct.info("memory")["used_memory"] // 2)
        try:
            refused = [
                client.post("/credits/deduct", json={"user_id": "u", "amount": 1}),
                client.post("/credits/add", json={"user_id": "new", "amount": 1}),
            ]
            for response in refused:
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "1"
                assert "out of memory" in response.json()["error"]
            # A batch reports each operation: refused ones as 503, none as applied.
            batch = client.post(
                "/credits/batch",
                json={"operations": [{"type": "deduct", "user_id": "u", "amount": 1}] * 2},
            )
            assert batch.status_code == 200
            for result in batch.json()["results"]:
                assert result["success"] is False and result["status"] == 503
                assert "out of memory" in result["error"]
            # Still ready: the reads Redis serves need no script.
            assert httpx.get(stack.api.url + "/readyz").json()["ready"] is True
            health = httpx.get(stack.api.url + "/healthz")
            assert health.status_code == 503
            assert health.json()["status"] == "unavailable" and health.json()["redis"] == "oom"
        finally:
            direct.config_set("maxmemory", 0)
        # Nothing was half-applied, and writes work again at once.
        assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 100
        assert client.post("/credits/deduct", json={"user_id": "u", "amount": 1}).status_code == 200
        assert httpx.get(stack.api.url + "/healthz").json()["redis"] == "ok"


def test_scripts_flushed_in_a_tight_loop_are_reloaded_never_500(stack: Stack) -> None:
    with stack.client() as client:
        client.post("/credits/add", json={"user_id": "u", "amount": 10_000})
    done = threading.Event()
    flushes = 0

    def flush_scripts() -> None:
        nonlocal flushes
        direct = redis.Redis.from_url(stack.redis.url)
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            # The account scripts are functions (FCALL), the rest scripts (EVALSHA).
            direct.script_flush() if flushes % 2 else direct.function_flush()
            flushes += 1

    flusher = threading.Thread(target=flush_scripts)
    flusher.start()
    try:
        deducts = [("/credits/deduct", {"user_id": "u", "amount": 1})] * 300
        batch = {"operations": [{"type": "deduct", "user_id": "u", "amount": 1}] * 10}
        responses = fire(
            stack.api.url, stack.api_key, [*deducts, *[("/credits/batch", batch)] * 20]
        )
    finally:
        done.set()
        flusher.join()
    assert flushes > 100
    codes = [r.status_code for r in responses]
    assert 500 not in codes and set(codes) <= {200, 503}
    applied = codes[:300].count(200) + sum(
        sum(1 for result in r.json()["results"] if result["success"])
        for r in responses[300:]
        if r.status_code == 200
    )
    with stack.client() as client:
        balance = client.get("/credits/balance", params={"user_id": "u"}).json()["balance"]
    # Every success applied once, and nothing else: no call ran twice after a reload.
    assert balance == 10_000 - applied
    # Most calls get through even so; how many depends on how the flusher and the server share
    # the CPU (a loaded machine saw 204 of 500), so the bar is one that broken reloading misses.
    assert applied >= 100


def _count(settings: Settings, app_id: str) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger_entries WHERE app_id = %s", (app_id,)
        ).fetchone()
    return int(row[0]) if row else 0


def test_worker_rides_out_a_redis_outage_mid_drain_and_resumes_by_itself(stack: Stack) -> None:
    from tests.test_webhooks import STRIPE_SECRET, Hooks, stripe_intent

    _update_app(stack.settings, stack.app_id, {"stripe_webhook_secret": STRIPE_SECRET})
    hooks = Hooks(stack.settings, stack.api, AppUnderTest(stack.app_id, stack.api_key, ""))
    operations = [{"type": "deduct", "user_id": f"u{i % 50}", "amount": 1} for i in range(1000)]
    with stack.client() as client:
        for i in range(50):
            client.post("/credits/add", json={"user_id": f"u{i}", "amount": 1_000})
        for _ in range(30):  # a backlog of 30,050 entries, no worker yet
            assert client.post("/credits/batch", json={"operations": operations}).status_code == 200
    total = 30_050
    time.sleep(1.5)  # appendfsync everysec: the backlog is on disk before Redis is killed
    worker = WorkerProcess(tally_env(stack.settings))
    try:
        wait_until(lambda: _count(stack.settings, stack.app_id) > 0, 30, "the drain to start")
        stack.redis.kill()
        assert _count(stack.settings, stack.app_id) < total, "drained before the outage"
        # A payment arrives meanwhile: stored in PostgreSQL, queued once Redis is back.
        event = stripe_intent(
            "evt_outage", "pi_outage", {"tally_user_id": "p", "tally_credits": "7"}
        )
        assert hooks.stripe(event).json()["status"] == "pending"
        time.sleep(30)
        assert worker.process.poll() is None, "the worker exited during the outage"
        stack.redis.start()
        wait_until(lambda: _count(stack.settings, stack.app_id) == total + 1, 90, "the drain")
        hooks.settled(1)
        assert hooks.events()[0]["status"] == "credited"
        assert worker.process.poll() is None
    finally:
        worker.stop()
    rows = ledger(stack.settings, stack.app_id)
    assert len({row["ledger_id"] for row in rows}) == total + 1
    assert sum(row["amount"] for row in rows if row["user_id"] != "p") == 50 * 1_000 - 30_000


def test_history_serves_every_entry_across_a_postgresql_outage(stack: Stack) -> None:
    from tests.test_ledger import assert_whole_history

    deducts = {"operations": [{"type": "deduct", "user_id": "u", "amount": 1}] * 500}
    with stack.client() as client:
        client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
        stack.postgres.halt()
        assert client.post("/credits/batch", json=deducts).status_code == 200
        # Nothing has reached PostgreSQL: Redis alone serves every page.
        assert_whole_history(client, "u", list(range(500, 1_001)))
        stack.postgres.start()
        assert_whole_history(client, "u", list(range(500, 1_001)))
        worker = WorkerProcess(tally_env(stack.settings))
        try:
            wait_until(lambda: _count(stack.settings, stack.app_id) == 501, 60, "the drain")
        finally:
            worker.stop()
        assert_whole_history(client, "u", list(range(500, 1_001)))


def test_a_redis_restart_costs_no_request_once_redis_is_back(stack: Stack) -> None:
    deduct = ("/credits/deduct", {"user_id": "u", "amount": 1})
    with stack.client() as client:
        client.post("/credits/add", json={"user_id": "u", "amount": 1_000_000})
    # Many concurrent requests: the API's pool holds many connections, all broken below.
    assert {r.status_code for r in fire(stack.api.url, stack.api_key, [deduct] * 300)} == {200}
    time.sleep(1.5)  # appendfsync everysec
    stack.redis.kill()
    stack.redis.start()
    for _ in range(3):
        codes = [r.status_code for r in fire(stack.api.url, stack.api_key, [deduct] * 200)]
        assert codes == [200] * 200, f"{200 - codes.count(200)} failed: {set(codes)}"
        time.sleep(2)


def _marked(stack: Stack) -> bool:
    direct = redis.Redis.from_url(stack.redis.url)
    return all(direct.exists(complete_key(shard)) for shard in range(SHARDS))


def test_a_new_users_first_add_needs_no_postgresql_when_redis_can_vouch(stack: Stack) -> None:
    worker = WorkerProcess(tally_env(stack.settings))
    try:
        with stack.client() as client:
            client.post("/credits/add", json={"user_id": "old", "amount": 100})
            wait_until(lambda: _count(stack.settings, stack.app_id) == 1, 15, "the add")
            # Redis loses everything; the worker puts every account back, then vouches again.
            redis.Redis.from_url(stack.redis.url).flushall()
            wait_until(lambda: _marked(stack), 30, "every shard marked complete")
            stack.postgres.halt()
            added = client.post("/credits/add", json={"user_id": "new", "amount": 5})
            assert added.status_code == 200, added.text
            assert added.json()["balance_after"] == 5
            deducted = client.post("/credits/deduct", json={"user_id": "new", "amount": 2})
            assert deducted.json()["balance_after"] == 3
            ghost = client.get("/credits/balance", params={"user_id": "ghost"})
            assert (ghost.status_code, ghost.json()["balance"]) == (200, 0)
            # The account the flush lost came back from the ledger, not as a new one.
            old = client.get("/credits/balance", params={"user_id": "old"}).json()
            assert old["balance"] == 100
            # Where Redis cannot vouch (its mark is gone), only PostgreSQL can tell: 503.
            direct = redis.Redis.from_url(stack.redis.url)
            direct.delete(complete_key(shard_of(stack.app_id, "unvouched")))
            refused = client.post("/credits/add", json={"user_id": "unvouched", "amount": 1})
            assert refused.status_code == 503
            stack.postgres.start()
            wait_until(lambda: _count(stack.settings, stack.app_id) == 3, 60, "three rows")
            wait_until(lambda: _marked(stack), 30, "the shard marked again")
    finally:
        worker.stop()
    rows = [r for r in ledger(stack.settings, stack.app_id) if r["user_id"] == "new"]
    assert [(r["seq"], r["amount"], r["balance_after"]) for r in rows] == [(1, 5, 5), (2, -2, 3)]


def test_a_batch_reports_what_it_applied_when_some_accounts_wait_for_postgresql(
    stack: Stack,
) -> None:
    with stack.client() as client:
        client.post("/credits/add", json={"user_id": "known", "amount": 10})
        direct = redis.Redis.from_url(stack.redis.url)
        direct.delete(complete_key(shard_of(stack.app_id, "stranger")))
        stack.postgres.halt()
        operations = [
            {"type": "deduct", "user_id": "known", "amount": 1},
            {"type": "add", "user_id": "stranger", "amount": 1},  # Redis cannot vouch
            {"type": "deduct", "user_id": "known", "amount": 2},
        ]
        response = client.post("/credits/batch", json={"operations": operations})
        stack.postgres.start()
    assert response.status_code == 200
    applied, waiting, also = response.json()["results"]
    assert (applied["success"], applied["balance_after"]) == (True, 9)
    assert (waiting["success"], waiting["status"]) == (False, 503)
    assert (also["success"], also["balance_after"]) == (True, 7)


def _update_app(settings: Settings, app_id: str, changes: dict[str, Any]) -> None:
    pool = open_pool(settings.database_url, 1, wait=True)
    Apps(AppRepository(pool, keyring(settings))).update(app_id, changes)
    pool.close()
