"""Events out: webhook endpoints, signed deliveries with retries, thresholds decided in the
scripts, plan limits. Against a real `tally serve`, worker, Redis, PostgreSQL and an HTTP
receiver on loopback that checks every signature with the `standardwebhooks` package."""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import httpx
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine.events.deliveries import Deliveries
from engine.events.repository import EventRepository, Outgoing
from engine.settings import Settings
from tests.conftest import AppUnderTest, WorkerProcess, fire, tally, tally_env
from tests.test_ledger import wait_until


@dataclass
class Received:
    event_id: str
    type: str
    body: dict[str, Any]
    status: int  # what the receiver answered


@dataclass
class Receiver:
    """An app's backend: verifies each delivery, fails the first `failures` attempts of every
    event, or never answers while `hang` is set."""

    secrets: list[str] = field(default_factory=list)
    failures: int = 0
    hang: threading.Event = field(default_factory=threading.Event)
    received: list[Received] = field(default_factory=list)
    forged: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def attempts(self, event_id: str) -> int:
        with self.lock:
            return sum(1 for r in self.received if r.event_id == event_id)

    def delivered(self, kind: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.status == 204 and kind in (None, r.type)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if state.hang.is_set():
                time.sleep(30)  # longer than Tally waits (10 s)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = None
            for secret in state.secrets:
                try:
                    verified = Webhook(secret).verify(body, headers)
                    break
                except WebhookVerificationError:
                    continue
            if verified is None:
                state.forged += 1
                self.send_response(401)
                self.end_headers()
                return
            event_id = headers["webhook-id"]
            with state.lock:
                seen = sum(1 for r in state.received if r.event_id == event_id)
                status = 503 if seen < state.failures else 204
                state.received.append(Received(event_id, verified["type"], verified, status))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.hang.clear()
    server.shutdown()
    server.server_close()


@pytest.fixture
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    process = WorkerProcess(events_env(settings))
    yield process
    process.stop()


def events_env(settings: Settings) -> dict[str, str]:
    return tally_env(settings) | {"TALLY_EVENT_RETRY_BASE_SECONDS": "0.2"}


def add_endpoint(client: httpx.Client, receiver: Receiver, *events: str) -> dict[str, Any]:
    body: dict[str, Any] = {"url": receiver.url}
    if events:
        body["events"] = list(events)
    made = client.post("/webhook-endpoints", json=body)
    assert made.status_code == 201, made.text
    endpoint: dict[str, Any] = made.json()
    receiver.secrets.append(endpoint["secret"])
    return endpoint


def deliveries(client: httpx.Client, endpoint_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.get(f"/webhook-endpoints/{endpoint_id}/deliveries").json()[
        "deliveries"
    ]
    return found


def deduct(client: httpx.Client, user: str, amount: int) -> httpx.Response:
    return client.post("/credits/deduct", json={"user_id": user, "amount": amount})


def add(client: httpx.Client, user: str, amount: int) -> httpx.Response:
    return client.post("/credits/add", json={"user_id": user, "amount": amount})


# --- endpoints -----------------------------------------------------------------------------------


def test_endpoints_are_made_listed_changed_and_removed(
    client: httpx.Client, test_app: AppUnderTest, settings: Settings, receiver: Receiver
) -> None:
    made = add_endpoint(client, receiver, "balance.low", "credits.added")
    assert made["id"].startswith("we_") and made["secret"].startswith("whsec_")
    assert made["events"] == ["balance.low", "credits.added"]
    listed = client.get("/webhook-endpoints").json()["endpoints"]
    assert [e["id"] for e in listed] == [made["id"]]
    assert "secret" not in listed[0]  # shown once
    changed = client.patch(f"/webhook-endpoints/{made['id']}", json={"events": ["*"]})
    assert changed.status_code == 200 and changed.json()["events"] == ["*"]
    for bad, message in (
        ({"url": "http://example.com/hooks"}, "https"),
        ({"url": "ftp://example.com"}, "https"),
        ({"url": receiver.url, "events": ["balance.lowish"]}, "unknown event types"),
        ({"url": receiver.url, "events": []}, "events must be"),
        ({"url": receiver.url, "extra": 1}, "extra"),
    ):
        refused = client.post("/webhook-endpoints", json=bad)
        assert refused.status_code == 400 and message in refused.json()["error"], refused.text
    other = tally(settings, "apps", "create", "other", "--json")
    other_key = json.loads(other.stdout)["api_key"]
    stranger = {"Authorization": f"Bearer {other_key}"}
    assert client.delete(f"/webhook-endpoints/{made['id']}", headers=stranger).status_code == 404
    assert client.delete(f"/webhook-endpoints/{made['id']}").json() == {"success": True}
    assert client.delete(f"/webhook-endpoints/{made['id']}").status_code == 404
    assert client.get("/webhook-endpoints").json() == {"endpoints": []}

    # The operator's way.
    made_by_cli = tally(
        settings, "endpoints", "add", test_app.app_id, receiver.url, "--events", "balance.low",
        "--json",
    )  # fmt: skip
    added = json.loads(made_by_cli.stdout)
    assert added["secret"].startswith("whsec_") and added["events"] == ["balance.low"]
    listing = tally(settings, "endpoints", "list", test_app.app_id).stdout
    assert added["id"] in listing and "secret" not in listing
    wrong = tally(
        settings, "endpoints", "add", test_app.app_id, receiver.url, "--events", "nope",
        check=False,
    )  # fmt: skip
    assert wrong.returncode != 0 and "unknown event types nope" in wrong.stderr
    tally(settings, "endpoints", "remove", added["id"])
    assert tally(settings, "endpoints", "list", test_app.app_id, "--json").stdout.strip() == "[]"


def test_events_are_signed_retried_and_logged_once_each(
    client: httpx.Client, receiver: Receiver, worker: WorkerProcess
) -> None:
    receiver.failures = 3
    endpoint = add_endpoint(client, receiver)
    add(client, "u", 100)
    added = client.post("/credits/add", json={"user_id": "u", "amount": 5, "reference_id": "r"})
    ledger_id = added.json()["ledger_id"]
    refunded = client.post("/credits/refund", json={"ledger_id": ledger_id})
    assert refunded.status_code == 200
    wait_until(lambda: len(receiver.delivered()) == 3, 30, "3 events through 3 failures each")
    events = receiver.delivered()
    assert [e.type for e in sorted(events, key=lambda e: e.body["data"]["sequence"])] == [
        "credits.added", "credits.added", "credits.refunded",
    ]  # fmt: skip
    for event in events:
        assert receiver.attempts(event.event_id) == 4
        assert set(event.body) == {"type", "timestamp", "data"}
        assert event.body["data"]["user_id"] == "u"
    assert receiver.forged == 0
    refund = next(e for e in events if e.type == "credits.refunded").body["data"]
    assert refund["refund_of"] == ledger_id and refund["amount"] == -5
    log = deliveries(client, endpoint["id"])
    assert len(log) == 3 and len({d["event_id"] for d in log}) == 3
    assert {(d["status"], d["attempts"], d["response_code"]) for d in log} == {
        ("delivered", 4, 204)
    }


def test_concurrent_deducts_crossing_thresholds_yield_one_event_per_crossing(
    client: httpx.Client, api_server: Any, test_app: AppUnderTest, receiver: Receiver,
    worker: WorkerProcess,
) -> None:  # fmt: skip
    config = client.patch("/credits/config", json={"low_balance_thresholds": [100, 500, 0]})
    assert config.json()["low_balance_thresholds"] == [500, 100, 0]
    add_endpoint(client, receiver, "balance.low", "balance.depleted")
    add(client, "u", 1_000)
    time.sleep(1)  # the API's key cache learns the thresholds (TALLY_AUTH_CACHE_SECONDS)
    ten = ("/credits/deduct", {"user_id": "u", "amount": 10})
    responses = fire(api_server.url, test_app.api_key, [ten] * 100)
    assert [r.status_code for r in responses] == [200] * 100
    wait_until(lambda: len(receiver.delivered()) == 4, 30, "three balance.low, one depleted")
    time.sleep(1)  # nothing more comes
    lows = receiver.delivered("balance.low")
    assert sorted(e.body["data"]["threshold"] for e in lows) == [0, 100, 500]
    for event in lows:
        data = event.body["data"]
        assert data["available_before"] > data["threshold"] >= data["available"]
    [depleted] = receiver.delivered("balance.depleted")
    assert depleted.body["data"]["balance"] == 0 and depleted.body["data"]["floor"] == 0
    # Re-armed once the balance is above a threshold again: 600, then down past 500 once more.
    add(client, "u", 600)
    assert deduct(client, "u", 150).status_code == 200
    assert deduct(client, "u", 10).status_code == 200
    wait_until(lambda: len(receiver.delivered("balance.low")) == 4, 30, "the re-armed 500")
    assert receiver.delivered("balance.low")[-1].body["data"]["threshold"] == 500
    # A threshold list is checked.
    too_many = client.patch("/credits/config", json={"low_balance_thresholds": [1, 2, 3, 4, 5, 6]})
    assert too_many.status_code == 400 and "at most 5" in too_many.json()["error"]


def test_a_killed_worker_loses_no_event(
    client: httpx.Client, receiver: Receiver, settings: Settings
) -> None:
    add_endpoint(client, receiver, "credits.added")
    for user in range(20):
        add(client, f"u{user}", 10)
    receiver.hang.set()  # deliveries in flight when the worker dies
    first = WorkerProcess(events_env(settings))
    try:
        wait_until(lambda: _pending_deliveries(settings) >= 20, 30, "events made")
        time.sleep(0.5)
        first.kill()
    finally:
        first.stop()
    receiver.hang.clear()
    second = WorkerProcess(events_env(settings))
    try:
        wait_until(lambda: len(receiver.delivered()) == 20, 60, "every event after the crash")
    finally:
        second.stop()
    assert sorted(e.body["data"]["user_id"] for e in receiver.delivered()) == sorted(
        f"u{user}" for user in range(20)
    )


def _pending_deliveries(settings: Settings) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM event_deliveries").fetchone()
    return int(row[0]) if row else 0


def test_a_receiver_that_never_answers_does_not_slow_deducts_or_the_ledger(
    client: httpx.Client, api_server: Any, test_app: AppUnderTest, receiver: Receiver,
    worker: WorkerProcess, settings: Settings,
) -> None:  # fmt: skip
    receiver.hang.set()
    add_endpoint(client, receiver)
    for user in range(10):
        add(client, f"u{user}", 1_000)  # ten credits.added events, each holding a sender 10 s
    started = time.monotonic()
    responses = fire(
        api_server.url, test_app.api_key,
        [("/credits/deduct", {"user_id": f"u{n % 10}", "amount": 1}) for n in range(300)],
    )  # fmt: skip
    assert [r.status_code for r in responses] == [200] * 300
    assert time.monotonic() - started < 10
    # The ledger keeps up while every sender waits on the receiver.
    wait_until(lambda: _rows(settings, test_app.app_id) == 310, 10, "310 rows persisted")
    receiver.hang.clear()


def stored_events(settings: Settings, app_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of the app's events, oldest first: what its endpoints are sent."""
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT type, data FROM events WHERE app_id = %s ORDER BY created_at, event_id",
            (app_id,),
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


def _rows(settings: Settings, app_id: str) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM ledger_entries WHERE app_id = %s", (app_id,))
        found = row.fetchone()
    return int(found[0]) if found else 0


def test_a_rotated_secret_signs_alongside_the_old_one_and_redelivery_sends_again(
    client: httpx.Client, receiver: Receiver, worker: WorkerProcess, settings: Settings
) -> None:
    endpoint = add_endpoint(client, receiver, "credits.added")
    old = receiver.secrets.pop()
    rotated = client.post(f"/webhook-endpoints/{endpoint['id']}/rotate-secret").json()
    assert rotated["secret"] != old and rotated["previous_secret_expires_at"]
    for count, secret in enumerate((old, rotated["secret"]), start=1):
        receiver.secrets[:] = [secret]  # a receiver knowing either secret verifies it
        add(client, "u", 1)
        wait_until(partial(_delivered, receiver, count), 30, "a signed event")
    assert receiver.forged == 0
    event_id = receiver.delivered()[-1].event_id
    again = json.loads(tally(settings, "events", "redeliver", event_id, "--json").stdout)
    assert again == {"event_id": event_id, "deliveries": 1}
    wait_until(lambda: receiver.attempts(event_id) == 2, 30, "the redelivery")
    assert client.post("/events/evt_nope/redeliver").status_code == 404


def _delivered(receiver: Receiver, count: int) -> bool:
    return len(receiver.delivered()) == count


def test_grants_and_holds_expiring_are_events(
    client: httpx.Client, receiver: Receiver, worker: WorkerProcess
) -> None:
    add_endpoint(client, receiver, "grant.expired", "hold.expired")
    expires = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    granted = client.post("/credits/add", json={"user_id": "u", "amount": 7, "expires_at": expires})
    assert granted.status_code == 200, granted.text
    held = client.post("/credits/holds", json={"user_id": "u", "amount": 3, "ttl_seconds": 1})
    assert held.status_code == 200
    # The grant expires with the 4 credits the hold left it, then the hold's 3 it reserved.
    wait_until(lambda: len(receiver.delivered()) == 3, 30, "both expiries")
    [hold_expired] = [e.body["data"] for e in receiver.delivered("hold.expired")]
    assert hold_expired["hold_id"] == held.json()["hold_id"] and hold_expired["released"] == 3
    grant_expired = [e.body["data"] for e in receiver.delivered("grant.expired")]
    assert sorted(g["amount"] for g in grant_expired) == [-4, -3]
    assert {g["grants"][0]["grant_id"] for g in grant_expired} == {granted.json()["grant_id"]}


# --- plan limits ---------------------------------------------------------------------------------


def test_monthly_operations_are_capped_exactly_on_one_user(
    client: httpx.Client, api_server: Any, test_app: AppUnderTest, settings: Settings
) -> None:
    add(client, "u", 1_000)
    tally(settings, "apps", "update", test_app.app_id, "--plan-monthly-operations", "51")
    time.sleep(1)  # the key cache learns the plan
    responses = fire(
        api_server.url, test_app.api_key, [("/credits/deduct", {"user_id": "u", "amount": 1})] * 200
    )
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 50 and codes.count(402) == 150  # 1 add + 50 deducts
    refused = next(r for r in responses if r.status_code == 402).json()
    assert refused == {
        "success": False, "error": "Plan limit reached", "limit": "monthly_operations",
        "used": 51, "allowed": 51,
    }  # fmt: skip
    # Reads keep working; the usage says where the app stands.
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 950
    usage = client.get("/usage").json()
    assert usage["operations"] == {"used": 51, "allowed": 51}
    assert usage["month"] == time.strftime("%Y-%m", time.gmtime())
    tally(settings, "apps", "update", test_app.app_id, "--plan-monthly-operations", "")
    time.sleep(1)
    assert deduct(client, "u", 1).status_code == 200
    assert client.get("/usage").json()["operations"] == {"used": 52, "allowed": None}


def test_monthly_operations_across_users_overshoot_at_most_one_sum_interval(
    client: httpx.Client, api_server: Any, test_app: AppUnderTest, settings: Settings,
    worker: WorkerProcess,
) -> None:  # fmt: skip
    users = [f"u{n}" for n in range(40)]
    for user in users:
        add(client, user, 100)
    tally(settings, "apps", "update", test_app.app_id, "--plan-monthly-operations", "100")
    time.sleep(1.5)  # the key cache learns the plan; the worker sums the 40 adds
    started = time.monotonic()
    responses = fire(
        api_server.url, test_app.api_key,
        [("/credits/deduct", {"user_id": users[n % 40], "amount": 1}) for n in range(200)],
    )  # fmt: skip
    elapsed = time.monotonic() - started
    admitted = [r.status_code for r in responses].count(200)
    # Never refused before the plan is used up; past it, by at most what other shards admitted
    # since the worker's last sum: everything, when all 200 came within one interval.
    assert admitted >= 60
    assert admitted <= 200 if elapsed < 2 else admitted < 140, (admitted, elapsed)
    time.sleep(1.5)  # summed again: every shard knows now
    assert all(deduct(client, user, 1).status_code == 402 for user in users)
    used = client.get("/usage").json()["operations"]["used"]
    assert used == 40 + admitted


def test_max_users_refuses_new_users_only(
    client: httpx.Client, test_app: AppUnderTest, settings: Settings
) -> None:
    for user in ("a", "b", "c"):
        add(client, user, 10)
    tally(settings, "worker", "--burst")  # the users are counted from the ledger
    tally(settings, "apps", "update", test_app.app_id, "--plan-max-users", "4")
    time.sleep(1)
    assert add(client, "d", 10).status_code == 200
    refused = add(client, "e", 10)
    assert refused.status_code == 402
    assert refused.json() == {
        "success": False, "error": "Plan limit reached", "limit": "max_users", "used": 4,
        "allowed": 4,
    }  # fmt: skip
    assert deduct(client, "a", 1).status_code == 200  # existing users carry on
    batch = client.post("/credits/batch", json={"operations": [
        {"type": "add", "user_id": "b", "amount": 1},
        {"type": "add", "user_id": "f", "amount": 1},
    ]}).json()  # fmt: skip
    assert [r["success"] for r in batch["results"]] == [True, False]
    assert batch["results"][1]["error"] == "Plan limit reached"
    tally(settings, "worker", "--burst")
    assert client.get("/usage").json()["users"] == {"used": 4, "allowed": 4}
    bad = tally(settings, "apps", "update", test_app.app_id, "--plan-max-users", "-1", check=False)
    assert bad.returncode != 0 and "plan_max_users" in bad.stderr


def test_plan_settings_show_in_the_app(test_app: AppUnderTest, settings: Settings) -> None:
    updated = tally(
        settings, "apps", "update", test_app.app_id, "--plan-max-users", "10",
        "--plan-monthly-operations", "1000", "--low-balance-thresholds", "5,50", "--json",
    )  # fmt: skip
    shown = json.loads(updated.stdout)
    assert (shown["plan_max_users"], shown["plan_monthly_operations"]) == (10, 1000)
    assert shown["low_balance_thresholds"] == [50, 5]
    unset = tally(
        settings, "apps", "update", test_app.app_id, "--plan-max-users", "",
        "--low-balance-thresholds", "", "--json",
    )  # fmt: skip
    cleared = json.loads(unset.stdout)
    assert (cleared["plan_max_users"], cleared["low_balance_thresholds"]) == (None, [])


def test_retries_double_from_the_base_and_stop_a_day_after_the_event() -> None:
    deliveries = Deliveries(cast(EventRepository, None), retry_base_seconds=5)

    def wait(attempts: int, age: timedelta = timedelta(0)) -> float | None:
        created = datetime.now(UTC) - age
        give_up_at = created + timedelta(hours=24)
        outgoing = Outgoing(1, "evt", attempts, "https://x", b"{}", ["whsec_eA=="], give_up_at)
        retry_at = deliveries._retry_at(outgoing)
        return None if retry_at is None else (retry_at - created).total_seconds()

    for attempts, base in ((0, 5), (1, 10), (2, 20), (10, 5 * 1024)):
        waited = wait(attempts)
        assert waited is not None and base <= waited <= base * 1.25 + 0.5
    assert wait(0, timedelta(hours=23, minutes=59, seconds=56)) is None  # past the day
    assert wait(15) is None  # 5 s x 2^15 is more than a day, jitter or not
