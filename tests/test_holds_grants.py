"""Holds and expiring grants against a real `tally serve`, Redis, PostgreSQL and workers."""

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

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
from tests.test_faults import Stack, stack  # noqa: F401  (the fixture)
from tests.test_ledger import ledger, wait_until


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def grant(client: httpx.Client, user: str, amount: int, **delta: float) -> str:
    response = client.post(
        "/credits/add", json={"user_id": user, "amount": amount, "expires_at": later(**delta)}
    )
    assert response.status_code == 200, response.text
    grant_id: str = response.json()["grant_id"]
    return grant_id


def hold(client: httpx.Client, user: str, amount: int, **extra: Any) -> httpx.Response:
    return client.post("/credits/holds", json={"user_id": user, "amount": amount, **extra})


def account(client: httpx.Client, user: str) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/credits/balance", params={"user_id": user}).json()
    return body


def entries(client: httpx.Client, user: str) -> list[dict[str, Any]]:
    page = client.get("/credits/history", params={"user_id": user, "limit": 1000}).json()
    found: list[dict[str, Any]] = page["entries"][::-1]
    return found


def kinds(client: httpx.Client, user: str) -> list[str]:
    return [entry["kind"] for entry in entries(client, user)]


# --- holds ---------------------------------------------------------------------------------------


def test_hold_then_capture_spends_the_cost_and_releases_the_rest(client: httpx.Client) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    made = hold(client, "u", 30, ttl_seconds=60, reference_id="call-1")
    assert made.status_code == 200
    body = made.json()
    assert {k: body[k] for k in ("success", "user_id", "amount", "balance", "available")} == {
        "success": True, "user_id": "u", "amount": 30, "balance": 100, "available": 70,
    }  # fmt: skip
    hold_id = body["hold_id"]
    assert account(client, "u") | {"updated_at": None} == {
        "user_id": "u", "balance": 100, "updated_at": None, "available": 70, "held": 30,
        "grants": [],
    }  # fmt: skip
    # A plain deduct cannot spend what is held.
    refused = client.post("/credits/deduct", json={"user_id": "u", "amount": 71})
    assert refused.status_code == 402
    assert refused.json() == {
        "success": False, "error": "Insufficient credits", "balance": 100, "available": 70,
    }  # fmt: skip
    captured = client.post(f"/credits/holds/{hold_id}/capture", json={"amount": 20})
    assert captured.status_code == 200
    answer = captured.json()
    assert (answer["balance_before"], answer["balance_after"]) == (100, 80)
    assert (answer["captured"], answer["released"], answer["available"]) == (20, 10, 80)
    assert account(client, "u")["held"] == 0
    again = client.post(f"/credits/holds/{hold_id}/capture")
    assert again.status_code == 409 and "already captured" in again.json()["error"]
    assert client.post(f"/credits/holds/{hold_id}/release").status_code == 409
    shown = client.get(f"/credits/holds/{hold_id}").json()
    assert (shown["status"], shown["captured"], shown["reference_id"]) == ("captured", 20, "call-1")
    assert client.get("/credits/holds", params={"user_id": "u"}).json()["holds"] == []
    history = entries(client, "u")
    assert [(e["kind"], e["amount"], e["held"]) for e in history] == [
        ("add", 100, None), ("hold", 0, 30), ("deduct", -20, -30),
    ]  # fmt: skip
    assert history[2]["hold_id"] == hold_id


def test_capture_rules_and_release(client: httpx.Client, test_app: AppUnderTest) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    hold_id = hold(client, "u", 40).json()["hold_id"]
    too_much = client.post(f"/credits/holds/{hold_id}/capture", json={"amount": 41})
    assert too_much.status_code == 400 and "40" in too_much.json()["error"]
    listed = client.get("/credits/holds", params={"user_id": "u"}).json()["holds"]
    assert [(h["hold_id"], h["amount"], h["status"]) for h in listed] == [(hold_id, 40, "active")]
    released = client.post(f"/credits/holds/{hold_id}/release")
    assert released.status_code == 200
    assert (released.json()["released"], released.json()["available"]) == (40, 100)
    assert client.post(f"/credits/holds/{hold_id}/capture").status_code == 409
    assert client.get(f"/credits/holds/{hold_id}").json()["status"] == "released"
    assert client.post("/credits/holds/hold_nope/capture").status_code == 404
    assert hold(client, "u", 1, ttl_seconds=0).status_code == 400
    assert hold(client, "u", 1, ttl_seconds=86_401).status_code == 400
    assert hold(client, "u", 0).status_code == 400


def test_another_apps_hold_is_404(
    client: httpx.Client, api_server: ApiServer, settings: Settings
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    hold_id = hold(client, "u", 10).json()["hold_id"]
    created = json.loads(tally(settings, "apps", "create", "other", "--json").stdout)
    other = {"Authorization": f"Bearer {created['api_key']}"}
    for path in (f"/credits/holds/{hold_id}/capture", f"/credits/holds/{hold_id}/release"):
        assert httpx.post(api_server.url + path, headers=other).status_code == 404
    assert httpx.get(f"{api_server.url}/credits/holds/{hold_id}", headers=other).status_code == 404
    assert client.get(f"/credits/holds/{hold_id}").json()["status"] == "active"


def test_hold_idempotency_replays_and_refuses_a_changed_request(client: httpx.Client) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    first = hold(client, "u", 10, ttl_seconds=60, **{}).json()
    key = {"Idempotency-Key": "h-1"}
    one = client.post("/credits/holds", json={"user_id": "u", "amount": 10}, headers=key)
    two = client.post("/credits/holds", json={"user_id": "u", "amount": 10}, headers=key)
    assert two.headers.get("idempotent-replayed") == "true"
    assert one.json() == two.json() and one.json()["hold_id"] != first["hold_id"]
    changed = client.post("/credits/holds", json={"user_id": "u", "amount": 11}, headers=key)
    assert changed.status_code == 422
    assert account(client, "u")["held"] == 20
    capture_key = {"Idempotency-Key": "c-1"}
    path = f"/credits/holds/{one.json()['hold_id']}/capture"
    captured = client.post(path, json={"amount": 5}, headers=capture_key)
    replayed = client.post(path, json={"amount": 5}, headers=capture_key)
    assert captured.json() == replayed.json() and replayed.headers["idempotent-replayed"] == "true"
    # A new key is a new request: the hold is settled.
    for again in ({"Idempotency-Key": "c-2"}, {}):
        refused = client.post(path, json={"amount": 5}, headers=again)
        assert refused.status_code == 409 and "already captured" in refused.json()["error"]
    other = client.post("/credits/holds", json={"user_id": "u", "amount": 10}).json()["hold_id"]
    client.post(f"/credits/holds/{other}/release")
    late = client.post(f"/credits/holds/{other}/capture", headers={"Idempotency-Key": "c-3"})
    assert late.status_code == 409 and "already released" in late.json()["error"]


def test_200_concurrent_holds_against_a_balance_for_50(
    client: httpx.Client, api_server: ApiServer, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 500})
    requests = [("/credits/holds", {"user_id": "u", "amount": 10})] * 200
    statuses = [r.status_code for r in fire(api_server.url, test_app.api_key, requests)]
    assert statuses.count(200) == 50 and statuses.count(402) == 150
    assert account(client, "u") | {"updated_at": None} == {
        "user_id": "u", "balance": 500, "updated_at": None, "available": 0, "held": 500,
        "grants": [],
    }  # fmt: skip


def test_holds_and_deducts_together_never_overspend(
    client: httpx.Client, api_server: ApiServer, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
    requests = [
        ("/credits/holds" if i % 2 else "/credits/deduct", {"user_id": "u", "amount": 7})
        for i in range(400)
    ]
    responses = fire(api_server.url, test_app.api_key, requests)
    won = [path for (path, _), r in zip(requests, responses, strict=True) if r.status_code == 200]
    assert len(won) == 1_000 // 7
    holds = [r.json()["hold_id"] for r in responses if "hold_id" in r.json()]
    # Every hold captured at once, by several callers each: each captures once.
    captures = [(f"/credits/holds/{h}/capture", {}) for h in holds for _ in range(3)]
    settled = fire(api_server.url, test_app.api_key, captures)
    assert [r.status_code for r in settled].count(200) == len(holds)
    assert {r.status_code for r in settled} == {200, 409}
    state = account(client, "u")
    assert (state["balance"], state["held"]) == (1_000 - 7 * len(won), 0)


def test_capture_and_release_race_settles_once(
    client: httpx.Client, api_server: ApiServer, test_app: AppUnderTest, settings: Settings
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    hold_id = hold(client, "u", 50).json()["hold_id"]
    requests = [
        (f"/credits/holds/{hold_id}/{'capture' if i % 2 else 'release'}", {}) for i in range(40)
    ]
    statuses = [r.status_code for r in fire(api_server.url, test_app.api_key, requests)]
    assert statuses.count(200) == 1 and statuses.count(409) == 39
    drain(settings)
    rows = [r for r in ledger(settings, test_app.app_id) if r["hold_id"] == hold_id]
    assert len(rows) == 2 and rows[0]["kind"] == "hold"


def test_expiry_racing_captures_one_wins_never_both(
    client: httpx.Client, api_server: ApiServer, test_app: AppUnderTest, settings: Settings
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    made = hold(client, "u", 60, ttl_seconds=1).json()
    expires = datetime.fromisoformat(made["expires_at"]).timestamp()
    time.sleep(max(0.0, expires - time.time() - 0.05))
    requests = [(f"/credits/holds/{made['hold_id']}/capture", {"amount": 60})] * 30
    statuses = [r.status_code for r in fire(api_server.url, test_app.api_key, requests)]
    assert statuses.count(200) <= 1 and set(statuses) <= {200, 409}
    time.sleep(max(0.0, expires - time.time() + 0.1))
    state = account(client, "u")  # lets a due expiry happen
    captured = statuses.count(200)
    assert (state["balance"], state["held"]) == (100 - 60 * captured, 0)
    drain(settings)
    rows = [r for r in ledger(settings, test_app.app_id) if r["hold_id"] == made["hold_id"]]
    assert [r["kind"] for r in rows] == ["hold", "deduct" if captured else "hold_expire"]


# --- grants --------------------------------------------------------------------------------------


def test_grants_burn_soonest_expiry_first_then_oldest_then_lasting_credits(
    client: httpx.Client,
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    late = grant(client, "u", 50, days=2)
    # The same expiry to the millisecond: the older grant burns first.
    expiry = later(days=1)
    first, tie = (
        client.post(
            "/credits/add", json={"user_id": "u", "amount": amount, "expires_at": expiry}
        ).json()["grant_id"]
        for amount in (30, 20)
    )
    spent = client.post("/credits/deduct", json={"user_id": "u", "amount": 40}).json()
    assert spent["balance_after"] == 160
    assert entries(client, "u")[-1]["grants"] == [
        {"grant_id": first, "amount": -30}, {"grant_id": tie, "amount": -10},
    ]  # fmt: skip
    state = account(client, "u")
    assert [(g["grant_id"], g["remaining"]) for g in state["grants"]] == [
        (first, 0), (tie, 10), (late, 50),
    ]  # fmt: skip
    client.post("/credits/deduct", json={"user_id": "u", "amount": 100})
    assert entries(client, "u")[-1]["grants"] == [
        {"grant_id": tie, "amount": -10}, {"grant_id": late, "amount": -50},
    ]  # fmt: skip
    assert [g["remaining"] for g in account(client, "u")["grants"]] == [0, 0, 0]
    assert account(client, "u")["balance"] == 60


def test_a_grant_expires_once_as_an_expire_entry(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 10})
    grant_id = grant(client, "u", 50, seconds=1)
    client.post("/credits/deduct", json={"user_id": "u", "amount": 20})
    assert account(client, "u")["grants"][0]["remaining"] == 30
    time.sleep(1.2)
    state = account(client, "u")
    assert (state["balance"], state["grants"]) == (10, [])
    assert kinds(client, "u") == ["add", "add", "deduct", "expire"]
    assert entries(client, "u")[-1]["grants"] == [{"grant_id": grant_id, "amount": -30}]
    account(client, "u")
    drain(settings)
    rows = ledger(settings, test_app.app_id)
    assert [r["kind"] for r in rows].count("expire") == 1
    assert sum(r["amount"] for r in rows) == 10


def test_refund_gives_credits_back_to_their_grant_and_expires_what_outlived_it(
    client: httpx.Client,
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    short = grant(client, "u", 20, seconds=1)
    long = grant(client, "u", 20, days=1)
    deduct = client.post("/credits/deduct", json={"user_id": "u", "amount": 50}).json()
    assert entries(client, "u")[-1]["grants"] == [
        {"grant_id": short, "amount": -20}, {"grant_id": long, "amount": -20},
    ]  # fmt: skip
    time.sleep(1.2)
    refunded = client.post("/credits/refund", json={"ledger_id": deduct["ledger_id"]})
    assert refunded.status_code == 200
    # +50 back: 20 to the long grant, 10 never-expiring, 20 to the expired grant, which leaves
    # again at once.
    refund, expire = entries(client, "u")[-2:]
    assert (refund["kind"], refund["amount"]) == ("refund", 50)
    assert refund["grants"] == [
        {"grant_id": short, "amount": 20}, {"grant_id": long, "amount": 20},
    ]  # fmt: skip
    assert (expire["kind"], expire["amount"], expire["grants"]) == (
        "expire", -20, [{"grant_id": short, "amount": -20}],
    )  # fmt: skip
    state = account(client, "u")
    assert state["balance"] == 120
    assert [(g["grant_id"], g["remaining"]) for g in state["grants"]] == [(long, 20)]


def test_refunding_a_grant_takes_what_is_left_of_it(client: httpx.Client) -> None:
    grant_id = grant(client, "u", 50, days=1)
    client.post("/credits/add", json={"user_id": "u", "amount": 5})
    client.post("/credits/deduct", json={"user_id": "u", "amount": 20})
    refunded = client.post("/credits/refund", json={"ledger_id": grant_id})
    assert refunded.status_code == 200 and refunded.json()["amount"] == -30
    assert account(client, "u") | {"updated_at": None} == {
        "user_id": "u", "balance": 5, "updated_at": None, "available": 5, "held": 0, "grants": [],
    }  # fmt: skip
    assert client.post("/credits/refund", json={"ledger_id": grant_id}).status_code == 409


def test_refunding_a_purchase_never_makes_grant_credits_lasting(client: httpx.Client) -> None:
    paid = client.post("/credits/add", json={"user_id": "u", "amount": 100}).json()
    grant(client, "u", 50, days=1)
    client.post("/credits/deduct", json={"user_id": "u", "amount": 60})  # the grant's 50 first
    client.post("/credits/refund", json={"ledger_id": paid["ledger_id"]})
    # 90 left: 90 lasting, 0 granted; the refund takes 90 lasting credits and 10 more the user
    # does not have: refused, nothing written.
    state = account(client, "u")
    assert (state["balance"], state["grants"][0]["remaining"]) == (90, 0)
    grant(client, "v", 50, days=1)
    paid_v = client.post("/credits/add", json={"user_id": "v", "amount": 100}).json()
    client.post("/credits/deduct", json={"user_id": "v", "amount": 20})  # from the grant
    assert (
        client.post("/credits/refund", json={"ledger_id": paid_v["ledger_id"]}).status_code == 200
    )
    state = account(client, "v")
    assert (state["balance"], state["grants"][0]["remaining"]) == (30, 30)


def test_a_grant_first_pays_back_an_overdraft(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    tally(settings, "apps", "update", test_app.app_id, "--overdraft-limit", "100")
    client.patch("/credits/config", json={"overdraft_enabled": True})
    wait_until(
        lambda: (
            client.post("/credits/deduct", json={"user_id": "u", "amount": 30}).status_code == 200
        ),
        5,
        "the overdraft setting",
    )
    grant_id = grant(client, "u", 50, days=1)
    state = account(client, "u")
    assert state["balance"] == 20
    assert [(g["grant_id"], g["remaining"]) for g in state["grants"]] == [(grant_id, 20)]
    assert entries(client, "u")[-1]["grants"] == [{"grant_id": grant_id, "amount": -30}]


def test_expires_at_rules(client: httpx.Client) -> None:
    def add(**body: Any) -> httpx.Response:
        return client.post("/credits/add", json={"user_id": "u", "amount": 1, **body})

    assert add(expires_at=later(seconds=-1)).status_code == 400
    assert add(expires_at=later(days=3_653)).status_code == 400
    assert add(expires_at="2030-01-01T00:00:00").json()["error"].startswith("expires_at must")
    assert add(expires_at="tomorrow").status_code == 400
    assert add(expires_at=later(days=3_650)).status_code == 200
    deduct = client.post(
        "/credits/deduct", json={"user_id": "u", "amount": 1, "expires_at": later(days=1)}
    )
    assert deduct.status_code == 400
    batch = client.post(
        "/credits/batch",
        json={"operations": [
            {"type": "add", "user_id": "b", "amount": 5, "expires_at": later(days=1)},
            {"type": "deduct", "user_id": "b", "amount": 2},
        ]},
    )  # fmt: skip
    assert [r["success"] for r in batch.json()["results"]] == [True, True]
    assert account(client, "b")["grants"][0]["remaining"] == 3


# --- durability ----------------------------------------------------------------------------------


def test_rebuild_after_flushall_restores_balance_grants_and_holds(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 100})
    grant(client, "u", 40, days=1)
    started = time.monotonic()
    expiring = grant(client, "u", 30, seconds=5)
    client.post("/credits/deduct", json={"user_id": "u", "amount": 10})  # from `expiring`
    lasting_hold = hold(client, "u", 50, ttl_seconds=600).json()["hold_id"]
    short_hold = hold(client, "u", 5, ttl_seconds=5).json()["hold_id"]
    drain(settings)
    before = account(client, "u")
    holds_before = client.get("/credits/holds", params={"user_id": "u"}).json()
    redis_of(settings).flushall()
    assert account(client, "u") == before
    assert client.get("/credits/holds", params={"user_id": "u"}).json() == holds_before
    assert time.monotonic() - started < 4.5, "too slow to test a flush before the expiries"
    time.sleep(max(0.0, started + 5.2 - time.monotonic()))
    # Past their time while Redis had lost them: each expires once now.
    state = account(client, "u")
    assert [h["hold_id"] for h in client.get("/credits/holds", params={"user_id": "u"}).json()[
        "holds"]] == [lasting_hold]  # fmt: skip
    assert state["held"] == 50 and expiring not in [g["grant_id"] for g in state["grants"]]
    # The lasting hold reserved the expiring grant's 20 (grants first, soonest first): they
    # expire when the hold gives them back.
    client.post(f"/credits/holds/{lasting_hold}/release")
    drain(settings)
    rows = ledger(settings, test_app.app_id)
    assert [r["kind"] for r in rows].count("hold_expire") == 1
    assert [r["hold_id"] for r in rows if r["kind"] == "hold_expire"] == [short_hold]
    expired = [r for r in rows if r["kind"] == "expire"]
    assert [(r["amount"], r["grants"]) for r in expired] == [
        (-20, [{"grant_id": expiring, "amount": -20}])
    ]
    assert sum(r["amount"] for r in rows) == state["balance"] - 20
    report = json.loads(tally(settings, "reconcile", "--json", check=False).stdout)
    assert not [d for d in report["drift"] if d["app_id"] == test_app.app_id]


def test_reconcile_checks_grants_and_holds(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    grant(client, "u", 40, days=1)
    hold(client, "u", 15)
    client.post("/credits/deduct", json={"user_id": "u", "amount": 5})
    drain(settings)
    clean = json.loads(tally(settings, "reconcile", "--json", check=False).stdout)
    assert not [d for d in clean["drift"] if d["app_id"] == test_app.app_id]
    r = redis_of(settings, decode=True)
    [key] = r.scan_iter(match=f"*:grants:{test_app.app_id}:u")
    [(grant_id, value)] = r.hgetall(key).items()
    expires, seq, left = value.split()
    r.hset(key, grant_id, f"{expires} {seq} {int(left) + 7}")  # grant credits out of nowhere
    found = tally(settings, "reconcile", "--json", check=False)
    assert found.returncode == 3
    [drift] = [d for d in json.loads(found.stdout)["drift"] if d["app_id"] == test_app.app_id]
    assert "grant credits left differ from the ledger" in drift["reason"]


def test_expiry_happens_once_with_two_workers_sweeping(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    users = [f"idle-{i}" for i in range(20)]
    for user in users:
        client.post("/credits/add", json={"user_id": user, "amount": 10})
        grant(client, user, 25, seconds=1)
        hold(client, user, 30, ttl_seconds=1)
    workers = [WorkerProcess(tally_env(settings)) for _ in range(2)]
    try:
        # Nobody touches these accounts: the workers' sweep expires them.
        def expired() -> int:
            return [r["kind"] for r in ledger(settings, test_app.app_id)].count("hold_expire")

        wait_until(lambda: expired() == 20, 20, "20 holds to expire")
        time.sleep(1.5)
    finally:
        for worker in workers:
            worker.stop()
    rows = ledger(settings, test_app.app_id)
    assert [r["kind"] for r in rows].count("hold_expire") == 20
    assert [r["kind"] for r in rows].count("expire") == 20
    assert all(account(client, user)["available"] == 10 for user in users)


def test_burn_order_survives_a_worker_sigkill_and_a_redis_restart(
    stack: Stack,  # noqa: F811
) -> None:
    cycles = 2
    env = tally_env(stack.settings) | {"TALLY_OUTBOX_BATCH_SIZE": "5"}
    with stack.client() as client:
        client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
        late = grant(client, "u", 300, days=2)
        soon = grant(client, "u", 200, days=1)
        for _ in range(cycles):
            worker = WorkerProcess(env)
            fire(
                stack.api.url,
                stack.api_key,
                [("/credits/deduct", {"user_id": "u", "amount": 5})] * 40,
            )
            wait_until(lambda: len(ledger(stack.settings, stack.app_id)) > 3, 20, "progress")
            worker.kill()
            time.sleep(1.5)  # appendfsync everysec
            stack.redis.kill()
            stack.redis.start()
            wait_until(lambda: client.get("/credits/balance", params={"user_id": "u"}).status_code
                       == 200, 10, "Redis back")  # fmt: skip
        state = account(client, "u")
        # 400 deducted: the soonest grant's 200 first, then 200 of the later one.
        assert state["balance"] == 1_100
        assert [(g["grant_id"], g["remaining"]) for g in state["grants"]] == [
            (soon, 0),
            (late, 100),
        ]
        worker = WorkerProcess(env)
        try:
            wait_until(lambda: len(ledger(stack.settings, stack.app_id)) == 3 + 40 * cycles, 30,
                       "every entry")  # fmt: skip
        finally:
            worker.stop()
        rows = ledger(stack.settings, stack.app_id)
        drawn: dict[str, int] = {}
        for row in rows:
            for part in row["grants"] or ():
                drawn[part["grant_id"]] = drawn.get(part["grant_id"], 0) + part["amount"]
        assert drawn == {soon: -200, late: -200}
        assert sum(r["amount"] for r in rows) == 1_100
