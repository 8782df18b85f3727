"""Redis memory that grows with activity, not with history, against a real `tally serve`,
`tally worker`, Redis and PostgreSQL: persisted entries leave the recent lists, idle accounts
leave Redis and come back from the ledger as they were, and idempotency records replay the
first response from a few fields."""

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from engine.settings import Settings
from engine.store.keys import SHARDS, account_keys, complete_key
from tests.browser import VISA, Browser
from tests.conftest import AppUnderTest, WorkerProcess, drain, tally, tally_env
from tests.test_auto_top_up import TOP_UP, browser  # noqa: F401  (the fixture)
from tests.test_faults import Stack, stack  # noqa: F401  (the fixture)
from tests.test_holds_grants import account, grant, hold, later
from tests.test_ledger import ledger, wait_until, walk_history


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


def evicting_worker(settings: Settings, **env: str) -> WorkerProcess:
    """A worker that evicts every account idle for a second."""
    return WorkerProcess(tally_env(settings) | {"TALLY_ACCOUNT_IDLE_SECONDS": "1", **env})


def in_redis(settings: Settings, app_id: str, user: str) -> bool:
    return bool(_redis(settings).exists(account_keys(app_id, user).account))


def wait_evicted(settings: Settings, app_id: str, *users: str) -> None:
    wait_until(lambda: not any(in_redis(settings, app_id, user) for user in users), 20, "eviction")


@pytest.fixture
def evicting(settings: Settings) -> Iterator[WorkerProcess]:
    worker = evicting_worker(settings)
    yield worker
    worker.stop()


def recent(settings: Settings, app_id: str, user: str) -> int:
    return int(_redis(settings).llen(account_keys(app_id, user).recent))


# --- the recent list -----------------------------------------------------------------------------


def test_persisted_entries_leave_the_recent_list_and_history_stays_whole(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
    for i in range(20):
        client.post("/credits/deduct", json={"user_id": "u", "amount": 1, "reference_id": str(i)})
    assert recent(settings, test_app.app_id, "u") == 21
    drain(settings)
    assert recent(settings, test_app.app_id, "u") == 0
    for i in range(20, 34):
        client.post("/credits/deduct", json={"user_id": "u", "amount": 1, "reference_id": str(i)})
    assert recent(settings, test_app.app_id, "u") == 14
    entries, _ = walk_history(client, "u", 5)
    assert [e["reference_id"] for e in entries] == [str(i) for i in range(33, -1, -1)] + [None]
    assert [e["balance_after"] for e in entries] == list(range(966, 1_001))


def test_history_has_no_gap_or_duplicate_while_a_flush_runs(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    drain(settings)
    client.post("/credits/add", json={"user_id": "u", "amount": 10_000})
    for _ in range(2):
        operations = [{"type": "deduct", "user_id": "u", "amount": 1}] * 500
        assert client.post("/credits/batch", json={"operations": operations}).status_code == 200
    expected = list(range(9_000, 10_001))
    # Small batches: the worker persists (and takes out of Redis) a few entries at a time while
    # the pages are read, so that entries move from Redis to PostgreSQL between the two reads.
    worker = WorkerProcess(tally_env(settings) | {"TALLY_OUTBOX_BATCH_SIZE": "3"})
    walks = mid_flush = 0
    try:
        while True:
            persisted = len(ledger(settings, test_app.app_id))
            entries, _ = walk_history(client, "u", 37)
            walks += 1
            assert [e["balance_after"] for e in entries] == expected
            assert len({e["ledger_id"] for e in entries}) == len(expected)
            if persisted == len(expected):
                break
            mid_flush += persisted > 0
    finally:
        worker.stop()
    assert mid_flush >= 2, f"only {mid_flush} of {walks} walks ran while entries were persisted"
    assert recent(settings, test_app.app_id, "u") == 0


# --- idle eviction -------------------------------------------------------------------------------


def test_an_idle_account_leaves_redis_and_its_next_deduct_sees_its_balance(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest, evicting: WorkerProcess
) -> None:
    client.post("/credits/add", json={"user_id": "idle", "amount": 100})
    client.post("/credits/deduct", json={"user_id": "idle", "amount": 30})
    wait_evicted(settings, test_app.app_id, "idle")
    keys = account_keys(test_app.app_id, "idle")
    assert _redis(settings).sismember(keys.tombstone(), keys.tombstone_member())
    assert _redis(settings).exists(keys.recent) == 0
    deducted = client.post("/credits/deduct", json={"user_id": "idle", "amount": 5}).json()
    assert (deducted["balance_before"], deducted["balance_after"]) == (70, 65)
    # Back in Redis; its tombstone stays (lua/evict_account.lua says why).
    wait_until(lambda: len(ledger(settings, test_app.app_id)) == 3, 15, "three rows")
    rows = ledger(settings, test_app.app_id)
    assert [(r["seq"], r["amount"], r["balance_after"]) for r in rows] == [
        (1, 100, 100), (2, -30, 70), (3, -5, 65),
    ]  # fmt: skip
    # Refused deducts of unknown users leave nothing behind for long either.
    assert (
        client.post("/credits/deduct", json={"user_id": "nobody", "amount": 1}).status_code == 402
    )
    wait_evicted(settings, test_app.app_id, "nobody")
    nobody = account_keys(test_app.app_id, "nobody")
    assert not _redis(settings).sismember(nobody.tombstone(), nobody.tombstone_member())


def test_an_evicted_account_with_a_hold_a_grant_and_auto_top_up_is_as_it_was(
    browser: Browser,  # noqa: F811
    client: httpx.Client,
    settings: Settings,
    test_app: AppUnderTest,
    evicting: WorkerProcess,
) -> None:
    user = "alice"
    client.post("/credits/add", json={"user_id": user, "amount": 600})
    granted = grant(client, user, 300, days=1)
    held = hold(client, user, 100, ttl_seconds=600).json()["hold_id"]  # 100 of the grant
    browser.save_card(VISA)
    assert browser.put("/client/auto-top-up", json=TOP_UP).status_code == 200  # below 500
    before = account(client, user)
    assert {k: before[k] for k in ("balance", "available", "held")} == {
        "balance": 900, "available": 800, "held": 100,
    }  # fmt: skip
    assert [(g["grant_id"], g["remaining"]) for g in before["grants"]] == [(granted, 200)]
    holds_before = client.get("/credits/holds", params={"user_id": user}).json()
    assert [h["hold_id"] for h in holds_before["holds"]] == [held]
    wait_evicted(settings, test_app.app_id, user)
    keys = account_keys(test_app.app_id, user)
    assert _redis(settings).hget(keys.top_up(), "threshold") == "500"  # the settings stay
    # Rebuilt from the ledger by the first read: balance, its clock, the grant and the hold.
    assert account(client, user) == before
    assert client.get("/credits/holds", params={"user_id": user}).json() == holds_before
    wait_evicted(settings, test_app.app_id, user)
    # The hold settles from a rebuilt account: 60 spent (of its grant credits), 40 back.
    captured = client.post(f"/credits/holds/{held}/capture", json={"amount": 60}).json()
    assert (captured["balance_before"], captured["balance_after"]) == (900, 840)
    assert (captured["captured"], captured["released"], captured["available"]) == (60, 40, 840)
    assert [g["remaining"] for g in account(client, user)["grants"]] == [240]
    wait_evicted(settings, test_app.app_id, user)
    # 240 grant credits, then 160 lasting: 440 left, below the threshold: a top-up starts.
    deducted = client.post("/credits/deduct", json={"user_id": user, "amount": 400}).json()
    assert (deducted["balance_after"], deducted.get("auto_top_up_started")) == (440, True)
    assert [g["remaining"] for g in account(client, user)["grants"]] == [0]
    wait_until(lambda: account(client, user)["balance"] == 2_440, 30, "the top-up")
    report = json.loads(tally(settings, "reconcile", "--json", check=False).stdout)
    assert not [d for d in report["drift"] if d["app_id"] == test_app.app_id]


def test_a_grant_of_an_evicted_account_expires_on_time(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest, evicting: WorkerProcess
) -> None:
    client.post("/credits/add", json={"user_id": "g", "amount": 50})
    expires = time.time() + 4
    granted = grant(client, "g", 30, seconds=4)
    wait_evicted(settings, test_app.app_id, "g")
    assert time.time() < expires - 0.5, "too slow to evict before the expiry"

    def expired() -> list[dict[str, Any]]:
        return [r for r in ledger(settings, test_app.app_id) if r["kind"] == "expire"]

    # Nothing asks for the account: the worker's sweep rebuilds it to expire its grant.
    wait_until(lambda: bool(expired()), 15, "the expiry")
    [row] = expired()
    assert (row["amount"], row["grants"]) == (-30, [{"grant_id": granted, "amount": -30}])
    assert row["created_at"].timestamp() - expires < 2.5
    assert (account(client, "g")["balance"], account(client, "g")["grants"]) == (50, [])


def test_replays_after_the_entry_left_redis_are_the_first_response_byte_for_byte(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    def send(path: str, body: dict[str, Any], key: str) -> httpx.Response:
        response = client.post(path, json=body, headers={"Idempotency-Key": key})
        assert response.status_code == 200, response.text
        return response

    grant_body = {"user_id": "r", "amount": 40, "expires_at": later(days=1)}
    calls: list[tuple[str, dict[str, Any], str]] = [
        ("/credits/add", {"user_id": "r", "amount": 500}, "add"),
        ("/credits/add", grant_body, "grant"),
        ("/credits/deduct", {"user_id": "r", "amount": 70, "metadata": {"a": 1}}, "deduct"),
        ("/credits/holds", {"user_id": "r", "amount": 50, "ttl_seconds": 600}, "hold"),
        ("/credits/holds", {"user_id": "r", "amount": 20, "ttl_seconds": 600}, "hold-2"),
    ]
    firsts = [send(*call) for call in calls]
    deducted = firsts[2].json()
    hold_ids = [firsts[3].json()["hold_id"], firsts[4].json()["hold_id"]]
    calls += [
        ("/credits/refund", {"ledger_id": deducted["ledger_id"]}, "refund"),
        (f"/credits/holds/{hold_ids[0]}/capture", {"amount": 30}, "capture"),
        (f"/credits/holds/{hold_ids[1]}/release", {}, "release"),
    ]
    firsts += [send(*call) for call in calls[5:]]
    drain(settings)
    worker = evicting_worker(settings)
    try:
        wait_evicted(settings, test_app.app_id, "r")
    finally:
        worker.stop()
    keys = account_keys(test_app.app_id, "r")
    stored = _redis(settings).get(keys.idempotency("deduct")) or ""
    assert len(stored) < 120 and '"metadata"' not in stored  # a few fields, not the entry
    for call, first in zip(calls, firsts, strict=True):
        again = send(*call)
        assert again.content == first.content, call
        assert again.headers["idempotent-replayed"] == "true"
    assert not in_redis(settings, test_app.app_id, "r")  # no replay needed the account
    changed = client.post(
        "/credits/deduct",
        json={"user_id": "r", "amount": 71},
        headers={"Idempotency-Key": "deduct"},
    )
    assert changed.status_code == 422
    assert account(client, "r")["balance"] == 500 + 40 - 70 + 70 - 30


def test_a_refund_marker_stays_a_day_once_its_refund_is_persisted(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "m", "amount": 100})
    spent = client.post("/credits/deduct", json={"user_id": "m", "amount": 40}).json()
    assert client.post("/credits/refund", json={"ledger_id": spent["ledger_id"]}).status_code == 200
    marker = account_keys(test_app.app_id, "m").refund_marker(spent["ledger_id"])
    assert _redis(settings).ttl(marker) == -1  # until PostgreSQL has the refund
    drain(settings)
    assert 86_000 < _redis(settings).ttl(marker) <= 86_400
    _redis(settings).delete(marker)  # a day later
    again = client.post("/credits/refund", json={"ledger_id": spent["ledger_id"]})
    assert again.status_code == 409  # PostgreSQL refuses it, and the marker is back for a day
    assert 86_000 < _redis(settings).ttl(marker) <= 86_400
    assert account(client, "m")["balance"] == 100


def test_reconciliation_finds_no_drift_after_eviction_and_rebuild(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    users = [f"rec-{i}" for i in range(6)]
    for number, user in enumerate(users):
        client.post("/credits/add", json={"user_id": user, "amount": 100 + number})
        grant(client, user, 10 * number + 5, days=1)
        if number % 2:
            hold(client, user, 20, ttl_seconds=600)
        client.post("/credits/deduct", json={"user_id": user, "amount": 7})
    drain(settings)
    balances = {user: account(client, user) for user in users}
    worker = evicting_worker(settings)
    try:
        wait_evicted(settings, test_app.app_id, *users)
    finally:
        worker.stop()

    def drifted() -> list[Any]:
        report = json.loads(tally(settings, "reconcile", "--json", check=False).stdout)
        return [d for d in report["drift"] if d["app_id"] == test_app.app_id]

    assert drifted() == []
    assert {user: account(client, user) for user in users} == balances  # rebuilt by the reads
    assert all(in_redis(settings, test_app.app_id, user) for user in users)
    assert drifted() == []


def test_an_evicted_account_is_never_read_as_new_while_postgresql_is_down(
    stack: Stack,  # noqa: F811
) -> None:
    worker = evicting_worker(stack.settings)
    direct = redis.Redis.from_url(stack.redis.url)
    try:
        with stack.client() as client:
            client.post("/credits/add", json={"user_id": "old", "amount": 100})
            wait_evicted(stack.settings, stack.app_id, "old")
            wait_until(
                lambda: all(direct.exists(complete_key(s)) for s in range(SHARDS)),
                30, "every shard marked complete",
            )  # fmt: skip
            stack.postgres.halt()
            # Redis vouches for a new user, but not for one it evicted: only PostgreSQL knows.
            assert (
                client.post("/credits/add", json={"user_id": "new", "amount": 5}).status_code == 200
            )
            for response in (
                client.get("/credits/balance", params={"user_id": "old"}),
                client.post("/credits/deduct", json={"user_id": "old", "amount": 1}),
                client.post("/credits/add", json={"user_id": "old", "amount": 1}),
            ):
                assert response.status_code == 503, response.text
            stack.postgres.start()
            wait_until(
                lambda: client.get("/credits/balance", params={"user_id": "old"}).status_code
                == 200, 30, "PostgreSQL back",
            )  # fmt: skip
            assert (
                client.get("/credits/balance", params={"user_id": "old"}).json()["balance"] == 100
            )
    finally:
        worker.stop()


def test_a_worker_without_idle_seconds_evicts_nothing(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "kept", "amount": 1})
    worker = WorkerProcess(tally_env(settings) | {"TALLY_ACCOUNT_IDLE_SECONDS": "0"})
    try:
        wait_until(lambda: len(ledger(settings, test_app.app_id)) == 1, 15, "the row")
        time.sleep(2)
    finally:
        worker.stop()
    assert in_redis(settings, test_app.app_id, "kept")
