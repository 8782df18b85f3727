"""Write-through to PostgreSQL, history, refunds and recovery, with real Redis, PostgreSQL and
`tally worker` processes."""

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from engine.settings import Settings
from tests.conftest import (
    ApiServer,
    AppUnderTest,
    WorkerProcess,
    drain,
    fire,
    redis_of,
    tally,
    tally_env,
)


def ledger(settings: Settings, app_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(settings.database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM ledger_entries WHERE app_id = %s ORDER BY user_id, seq", (app_id,)
        ).fetchall()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def balance(client: httpx.Client, user: str) -> int:
    value: int = client.get("/credits/balance", params={"user_id": user}).json()["balance"]
    return value


# --- write-through -------------------------------------------------------------------------------


def test_burst_worker_persists_every_entry_with_all_fields(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post(
        "/credits/add",
        json={"user_id": "u", "amount": 100, "description": "Welcome", "reference_id": "pi_1",
              "metadata": {"plan": "pro", "big": 123456789012345678901234567890}},
        headers={"Idempotency-Key": "welcome-u"},
    )  # fmt: skip
    deducted = client.post("/credits/deduct", json={"user_id": "u", "amount": 30}).json()
    drain(settings)
    rows = ledger(settings, test_app.app_id)
    assert [(r["kind"], r["amount"], r["balance_after"], r["seq"]) for r in rows] == [
        ("add", 100, 100, 1),
        ("deduct", -30, 70, 2),
    ]
    add = rows[0]
    assert (add["description"], add["reference_id"], add["idempotency_key"]) == (
        "Welcome", "pi_1", "welcome-u"
    )  # fmt: skip
    assert add["metadata"] == {"plan": "pro", "big": 123456789012345678901234567890}
    assert str(rows[1]["ledger_id"]) == deducted["ledger_id"]
    assert rows[1]["created_at"].tzinfo is not None
    # Nothing is left behind in Redis once persisted.
    r = redis_of(settings)
    assert sum(r.xlen(f"tally:{{s{s}}}:outbox") for s in range(64)) == 0
    assert sum(r.hlen(f"tally:{{s{s}}}:unpersisted") for s in range(64)) == 0


def test_running_worker_persists_continuously(
    api_server: ApiServer, settings: Settings, test_app: AppUnderTest, client: httpx.Client
) -> None:
    worker = WorkerProcess(tally_env(settings))
    try:
        client.post("/credits/add", json={"user_id": "u", "amount": 1000})
        fire(
            api_server.url,
            test_app.api_key,
            [("/credits/deduct", {"user_id": "u", "amount": 1})] * 50,
        )
        wait_until(lambda: len(ledger(settings, test_app.app_id)) == 51, 15, "51 rows")
        assert sum(r["amount"] for r in ledger(settings, test_app.app_id)) == 950
    finally:
        worker.stop()


def test_worker_killed_mid_batch_loses_and_doubles_nothing(
    api_server: ApiServer, settings: Settings, test_app: AppUnderTest, client: httpx.Client
) -> None:
    drain(settings)  # start from empty outboxes so the kills land in this test's batches
    users = [f"user-{i}" for i in range(30)]
    for user in users:
        client.post("/credits/add", json={"user_id": user, "amount": 1_000})
    fire(
        api_server.url,
        test_app.api_key,
        [
            ("/credits/deduct", {"user_id": users[i % 30], "amount": 1 + i % 7})
            for i in range(2_970)
        ],
    )
    expected = sum(1_000 for _ in users) - sum(1 + i % 7 for i in range(2_970))
    env = tally_env(settings) | {"TALLY_OUTBOX_BATCH_SIZE": "10"}
    seen = 0
    for _ in range(3):
        worker = WorkerProcess(env)
        wait_until(lambda s=seen: len(ledger(settings, test_app.app_id)) > s, 20, "progress")
        worker.kill()  # SIGKILL: no chance to acknowledge what it read
        seen = len(ledger(settings, test_app.app_id))
        assert seen < 3_000, "worker finished before it could be killed; make batches smaller"
    worker = WorkerProcess(env)
    try:
        wait_until(lambda: len(ledger(settings, test_app.app_id)) == 3_000, 60, "3000 rows")
        time.sleep(0.5)  # nothing more arrives: no duplicates by any other id
        rows = ledger(settings, test_app.app_id)
        assert len(rows) == 3_000
        assert sum(r["amount"] for r in rows) == expected
        assert sum(balance(client, user) for user in users) == expected
        for user in users:
            seqs = [r["seq"] for r in rows if r["user_id"] == user]
            assert seqs == list(range(1, len(seqs) + 1))
    finally:
        worker.stop()


# --- history -------------------------------------------------------------------------------------


def test_history_newest_first_with_documented_fields(
    client: httpx.Client, settings: Settings
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 10, "metadata": {"a": 1}})
    client.post("/credits/deduct", json={"user_id": "u", "amount": 3, "description": "AI"})
    body = client.get("/credits/history", params={"user_id": "u"}).json()
    assert set(body) == {"user_id", "entries", "limit", "offset", "has_more"}
    assert (body["user_id"], body["limit"], body["offset"], body["has_more"]) == ("u", 50, 0, False)
    deduct, add = body["entries"]
    assert {"ledger_id", "kind", "amount", "balance_after", "description", "reference_id",
            "metadata", "created_at"} <= set(deduct)  # fmt: skip
    assert (deduct["kind"], deduct["amount"], deduct["balance_after"], deduct["description"]) == (
        "deduct", -3, 7, "AI"
    )  # fmt: skip
    assert (add["kind"], add["amount"], add["metadata"]) == ("add", 10, {"a": 1})
    assert deduct["created_at"].endswith("Z")
    # The reauth-style names of the same facts.
    assert (deduct["amount_delta"], deduct["reason"]) == (-3, "AI")


def test_history_pages_merge_persisted_and_recent_without_gaps(
    client: httpx.Client, settings: Settings
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
    for i in range(20):
        client.post("/credits/deduct", json={"user_id": "u", "amount": 1, "reference_id": str(i)})
    drain(settings)  # 21 entries in PostgreSQL...
    for i in range(20, 34):
        client.post("/credits/deduct", json={"user_id": "u", "amount": 1, "reference_id": str(i)})
    # ...and 14 only in Redis. Walk the pages.
    seen: list[str] = []
    offset = 0
    while True:
        page = client.get("/credits/history", params={"user_id": "u", "limit": 7, "offset": offset})
        body = page.json()
        seen += [e["ledger_id"] for e in body["entries"]]
        offset += 7
        if not body["has_more"]:
            break
    assert len(seen) == len(set(seen)) == 35
    everything = client.get("/credits/history", params={"user_id": "u", "limit": 1000}).json()
    assert [e["ledger_id"] for e in everything["entries"]] == seen
    refs = [e["reference_id"] for e in everything["entries"]]
    assert refs == [str(i) for i in range(33, -1, -1)] + [None]


def walk_history(client: httpx.Client, user: str, limit: int) -> tuple[list[Any], list[bool]]:
    """Every page of a user's history: the entries, and has_more of each page."""
    entries: list[Any] = []
    more: list[bool] = []
    while True:
        params = {"user_id": user, "limit": limit, "offset": len(more) * limit}
        page = client.get("/credits/history", params=params)
        assert page.status_code == 200, page.text
        entries += page.json()["entries"]
        more.append(page.json()["has_more"])
        if not more[-1]:
            return entries, more


def assert_whole_history(client: httpx.Client, user: str, balances: list[int]) -> None:
    """Pages of 100 serve every entry once, newest first, with has_more right on each."""
    entries, more = walk_history(client, user, 100)
    pages = -(-len(balances) // 100)
    assert more == [True] * (pages - 1) + [False]
    assert len({e["ledger_id"] for e in entries}) == len(entries)
    assert [e["balance_after"] for e in entries] == balances


def test_history_serves_every_entry_while_the_worker_is_behind(
    client: httpx.Client, settings: Settings
) -> None:
    drain(settings)
    deducts = {"operations": [{"type": "deduct", "user_id": "u", "amount": 1}] * 450}
    client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
    client.post("/credits/batch", json=deducts)
    # 451 entries, none persisted: the newest 200 in the recent list, the rest beyond it.
    assert_whole_history(client, "u", list(range(550, 1_001)))
    drain(settings)
    client.post("/credits/batch", json=deducts)
    # Now 451 in PostgreSQL, then 250 in Redis only, of which 50 are beyond the recent list.
    assert_whole_history(client, "u", list(range(100, 1_001)))
    drain(settings)
    assert_whole_history(client, "u", list(range(100, 1_001)))
    past = client.get("/credits/history", params={"user_id": "u", "offset": 901}).json()
    assert (past["entries"], past["has_more"]) == ([], False)
    unknown = client.get("/credits/history", params={"user_id": "nobody"}).json()
    assert (unknown["entries"], unknown["has_more"]) == ([], False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"user_id": "u", "limit": "0"}, "limit"),
        ({"user_id": "u", "limit": "1001"}, "limit"),
        ({"user_id": "u", "limit": "ten"}, "limit"),
        ({"user_id": "u", "limit": "1.5"}, "limit"),
        ({"user_id": "u", "offset": "-1"}, "offset"),
        ({"user_id": "u", "sort": "asc"}, "unknown query parameter sort"),
        ({"limit": "5"}, "user_id is required"),
    ],
)
def test_bad_history_queries_are_400(
    client: httpx.Client, params: dict[str, str], message: str
) -> None:
    response = client.get("/credits/history", params=params)
    assert response.status_code == 400 and message in response.json()["error"]


# --- refunds -------------------------------------------------------------------------------------


def refund(client: httpx.Client, ledger_id: str, **headers: str) -> httpx.Response:
    return client.post(
        "/credits/refund", json={"ledger_id": ledger_id, "description": "oops"}, headers=headers
    )


def test_refund_reverses_a_deduct_once(client: httpx.Client, settings: Settings) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    spent = client.post("/credits/deduct", json={"user_id": "u", "amount": 40}).json()
    response = refund(client, spent["ledger_id"])
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "success",
        "ledger_id",
        "refunded_ledger_id",
        "user_id",
        "amount",
        "balance_after",
    }
    assert (body["refunded_ledger_id"], body["user_id"], body["amount"], body["balance_after"]) == (
        spent["ledger_id"], "u", 40, 100
    )  # fmt: skip
    again = refund(client, spent["ledger_id"])
    assert again.status_code == 409 and again.json()["success"] is False
    drain(settings)
    assert refund(client, spent["ledger_id"]).status_code == 409  # persisted: still once
    history = client.get("/credits/history", params={"user_id": "u"}).json()["entries"]
    assert (history[0]["kind"], history[0]["refund_of"]) == ("refund", spent["ledger_id"])
    assert balance(client, "u") == 100


def test_two_concurrent_refunds_apply_once(
    api_server: ApiServer, test_app: AppUnderTest, client: httpx.Client
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    spent = client.post("/credits/deduct", json={"user_id": "u", "amount": 40}).json()
    responses = fire(
        api_server.url,
        test_app.api_key,
        [("/credits/refund", {"ledger_id": spent["ledger_id"]})] * 10,
    )
    assert sorted(r.status_code for r in responses) == [200] + [409] * 9
    assert balance(client, "u") == 100


def test_refund_of_an_old_entry_after_redis_lost_it(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    spent = client.post("/credits/deduct", json={"user_id": "u", "amount": 40}).json()
    first = refund(client, spent["ledger_id"])
    drain(settings)
    with psycopg.connect(settings.database_url) as conn:  # make them months old
        conn.execute(
            "UPDATE ledger_entries SET created_at = created_at - interval '120 days'"
            " WHERE app_id = %s", (test_app.app_id,)
        )  # fmt: skip
    redis_of(settings).flushall()
    again = refund(client, spent["ledger_id"])
    assert again.status_code == 409
    assert again.json()["refund_ledger_id"] == first.json()["ledger_id"]
    assert balance(client, "u") == 100


def test_refund_of_an_old_unrefunded_entry_works_from_postgresql(
    client: httpx.Client, settings: Settings
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    spent = client.post("/credits/deduct", json={"user_id": "u", "amount": 40}).json()
    drain(settings)
    redis_of(settings).flushall()
    assert refund(client, spent["ledger_id"]).json()["balance_after"] == 100
    assert refund(client, spent["ledger_id"]).status_code == 409


def test_refund_of_spent_add_is_402(client: httpx.Client) -> None:
    added = client.post("/credits/add", json={"user_id": "u", "amount": 100}).json()
    client.post("/credits/deduct", json={"user_id": "u", "amount": 80})
    response = refund(client, added["ledger_id"])
    assert response.status_code == 402 and response.json()["balance"] == 20
    assert balance(client, "u") == 20


def test_refund_errors(
    client: httpx.Client, api_server: ApiServer, repository: Any, settings: Settings
) -> None:
    from tests.test_api_credits import other_app_client

    spent = client.post("/credits/add", json={"user_id": "u", "amount": 5}).json()
    assert refund(client, "2b1f7a57-9c37-4d6b-9a0e-3f3c2f9e0a11").status_code == 404
    assert refund(client, "not-a-uuid").status_code == 400
    with other_app_client(api_server, repository) as other:
        assert refund(other, spent["ledger_id"]).status_code == 404  # another app's entry
    drain(settings)
    with other_app_client(api_server, repository) as other:
        assert refund(other, spent["ledger_id"]).status_code == 404
    reversal = refund(client, spent["ledger_id"]).json()
    assert refund(client, reversal["ledger_id"]).status_code == 400  # a refund of a refund
    missing = client.post("/credits/refund", json={})
    assert missing.status_code == 400 and "ledger_id is required" in missing.json()["error"]


def test_refund_with_idempotency_key_replays(client: httpx.Client) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    spent = client.post("/credits/deduct", json={"user_id": "u", "amount": 40}).json()
    first = refund(client, spent["ledger_id"], **{"Idempotency-Key": "refund-1"})
    again = refund(client, spent["ledger_id"], **{"Idempotency-Key": "refund-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert balance(client, "u") == 100


# --- recovery and reconciliation -----------------------------------------------------------------


def test_flushall_loses_nothing_persisted_and_everything_recovers(
    api_server: ApiServer, settings: Settings, test_app: AppUnderTest, client: httpx.Client
) -> None:
    for user in ("a", "b", "c"):
        client.post("/credits/add", json={"user_id": user, "amount": 100})
        client.post("/credits/deduct", json={"user_id": user, "amount": 7})
    drain(settings)
    before = {user: balance(client, user) for user in ("a", "b", "c")}
    redis_of(settings).flushall()
    assert {user: balance(client, user) for user in ("a", "b", "c")} == before
    # Keys still authenticate, deducts continue from the restored balance...
    assert (
        client.post("/credits/deduct", json={"user_id": "a", "amount": 3}).json()["balance_after"]
        == 90
    )
    # ...and a running worker recreates its consumer groups and persists what follows.
    worker = WorkerProcess(tally_env(settings))
    try:
        wait_until(lambda: len(ledger(settings, test_app.app_id)) == 7, 15, "7 rows")
    finally:
        worker.stop()
    rows = [r for r in ledger(settings, test_app.app_id) if r["user_id"] == "a"]
    assert [r["seq"] for r in rows] == [1, 2, 3]


def test_reconcile_reports_and_repairs_drift(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "honest", "amount": 50})
    client.post("/credits/add", json={"user_id": "drifted", "amount": 50})
    drain(settings)
    r = redis_of(settings, decode=True)
    [key] = [k for k in r.scan_iter(match=f"*:acct:{test_app.app_id}:drifted")]
    r.hincrby(key, "balance", 13)  # credits out of nowhere

    found = tally(settings, "reconcile", "--json", check=False)
    assert found.returncode == 3
    report = json.loads(found.stdout)
    mine = [d for d in report["drift"] if d["app_id"] == test_app.app_id]
    assert mine == [
        {"app_id": test_app.app_id, "user_id": "drifted", "redis_balance": 63, "ledger_balance": 50,
         "seq": 1, "ledger_entries": 1, "reason": "balance differs from ledger", "repaired": False}
    ]  # fmt: skip
    with psycopg.connect(settings.database_url) as conn:
        stored = conn.execute(
            "SELECT drift FROM reconciliation_reports WHERE report_id = %s", (report["report_id"],)
        ).fetchone()
    assert stored is not None and any(d["user_id"] == "drifted" for d in stored[0])

    repaired = json.loads(tally(settings, "reconcile", "--repair", "--json").stdout)
    assert any(d["user_id"] == "drifted" and d["repaired"] for d in repaired["drift"])
    assert balance(client, "drifted") == 50
    clean = json.loads(tally(settings, "reconcile", "--json", check=False).stdout)
    assert not [d for d in clean["drift"] if d["app_id"] == test_app.app_id]


def test_reconcile_skips_accounts_whose_entries_are_still_in_the_outbox(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    drain(settings)
    client.post("/credits/add", json={"user_id": "pending", "amount": 50})
    report = json.loads(tally(settings, "reconcile", "--json").stdout)
    assert report["accounts_skipped"] >= 1
    assert not [d for d in report["drift"] if d["app_id"] == test_app.app_id]


def test_scheduled_reconciliation_job_runs_in_the_worker(settings: Settings) -> None:
    with psycopg.connect(settings.database_url) as conn:
        before = conn.execute("SELECT count(*) FROM reconciliation_reports").fetchone()
    redis_of(settings).delete("tally:reconcile:scheduled")
    worker = WorkerProcess(tally_env(settings) | {"TALLY_RECONCILE_INTERVAL_SECONDS": "2"})
    try:

        def reported() -> bool:
            with psycopg.connect(settings.database_url) as conn:
                now = conn.execute("SELECT count(*) FROM reconciliation_reports").fetchone()
            return bool(now and before and now[0] > before[0])

        wait_until(reported, 20, "a reconciliation report")
    finally:
        worker.stop()


# --- lag is visible ------------------------------------------------------------------------------


def test_status_and_health_show_outbox_lag(
    client: httpx.Client, api_server: ApiServer, settings: Settings
) -> None:
    drain(settings)
    client.post("/credits/add", json={"user_id": "u", "amount": 5})
    time.sleep(1.1)
    status = json.loads(tally(settings, "status", "--json").stdout)
    assert status["outbox_depth"] == 1 and status["oldest_age_seconds"] >= 1
    busy = [s for s in status["shards"] if s["depth"]]
    assert len(busy) == 1 and busy[0]["oldest_age_seconds"] >= 1
    assert tally(settings, "status", "--max-lag", "0.5", check=False).returncode == 1
    assert tally(settings, "status", "--max-lag", "60").returncode == 0
    health = httpx.get(api_server.url + "/healthz").json()
    assert health["status"] == "ok" and health["postgres"] == "ok"
    assert health["outbox"]["depth"] == 1 and health["outbox"]["oldest_age_seconds"] >= 1
    drain(settings)
    assert json.loads(tally(settings, "status", "--json").stdout)["outbox_depth"] == 0
