"""Auto top-up, end to end: deducts over HTTP, the Lua trigger, RQ workers, localstripe."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from engine.accounts.repository import AppRepository
from engine.settings import Settings
from engine.store.keys import account_keys
from tests.browser import CHARGE_DECLINED, VISA, Browser, enable_purchases
from tests.conftest import (
    RETRY_SECONDS,
    ApiServer,
    AppUnderTest,
    WorkerProcess,
    fire,
    redis_of,
    tally_env,
)
from tests.servers import LocalStripe
from tests.test_events import stored_events

TOP_UP = {"enabled": True, "threshold_cents": 500, "purchase_amount_cents": 2000}


@pytest.fixture
def browser(
    api_server: ApiServer,
    localstripe: LocalStripe,
    client: httpx.Client,
    repository: AppRepository,
    test_app: AppUnderTest,
) -> Iterator[Browser]:
    enable_purchases(repository, test_app)
    user = Browser(api_server.url, localstripe.url, client, "alice")
    yield user
    user.close()


@pytest.fixture
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    process = WorkerProcess(tally_env(settings))
    yield process
    process.stop()


def purchases(settings: Settings, app_id: str) -> list[tuple[str, str, str | None]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT source, status, failure_code FROM purchases WHERE app_id = %s"
            " ORDER BY purchase_id",
            (app_id,),
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_settings_are_validated_and_shared_with_the_server_api(
    browser: Browser, client: httpx.Client, repository: AppRepository, test_app: AppUnderTest
) -> None:
    assert browser.get("/client/auto-top-up").json() == {
        "user_id": "alice",
        "enabled": False,
        "threshold_cents": 0,
        "purchase_amount_cents": 0,
        "status": "active",
        "last_failure_reason": None,
        "retries_remaining": 3,
        "next_retry_at": None,
    }
    for body, status, message in (
        (TOP_UP | {"purchase_amount_cents": 100}, 400, "amount_cents must be from 500 to 50000"),
        (TOP_UP | {"threshold_cents": -1}, 400, "threshold_cents must be an integer from 0"),
        ({"enabled": True}, 400, "threshold_cents is required"),
        (TOP_UP | {"enabled": "yes"}, 400, "enabled must be true or false"),
    ):
        response = browser.put("/client/auto-top-up", json=body)
        assert (response.status_code, response.json()["error"][: len(message)]) == (
            status,
            message,
        )
    saved = browser.put("/client/auto-top-up", json=TOP_UP).json()
    assert {k: saved[k] for k in TOP_UP} == TOP_UP and saved["status"] == "active"
    server = client.get("/credits/auto-top-up", params={"user_id": "alice"}).json()
    assert server == saved
    off = {"user_id": "alice", "enabled": False, "threshold_cents": 0, "purchase_amount_cents": 0}
    assert client.put("/credits/auto-top-up", json=off).json()["enabled"] is False
    assert browser.get("/client/auto-top-up").json()["enabled"] is False

    enable_purchases(repository, test_app, auto_top_up_available=False)
    time.sleep(1.0)  # the API's app cache
    refused = browser.put("/client/auto-top-up", json=TOP_UP)
    assert refused.status_code == 403
    assert refused.json()["error"] == "auto top-up is not available for this app"


def test_concurrent_deducts_across_the_threshold_start_one_top_up(
    browser: Browser,
    client: httpx.Client,
    api_server: ApiServer,
    settings: Settings,
    test_app: AppUnderTest,
    worker: WorkerProcess,
) -> None:
    client.post("/credits/add", json={"user_id": "alice", "amount": 1000})
    browser.save_card(VISA)
    assert browser.put("/client/auto-top-up", json=TOP_UP).status_code == 200
    deducts = [("/credits/deduct", {"user_id": "alice", "amount": 20})] * 50
    responses = fire(api_server.url, test_app.api_key, deducts)
    assert [r.status_code for r in responses] == [200] * 50
    assert sum(bool(r.json().get("auto_top_up_started")) for r in responses) == 1
    # 1000 - 50 x 20 + 2000 credits ($20 at 100 credits per dollar).
    wait_for(lambda: browser.get("/client/balance").json()["balance"] == 2000)
    time.sleep(1.0)  # a second top-up, if one were coming, would have been charged by now
    assert purchases(settings, test_app.app_id) == [("auto_top_up", "succeeded", None)]
    assert browser.get("/client/balance").json()["balance"] == 2000
    status = browser.get("/client/auto-top-up").json()
    assert (status["status"], status["retries_remaining"]) == ("active", 3)


def test_a_declined_first_card_falls_back_to_the_next(
    browser: Browser, client: httpx.Client, settings: Settings, test_app: AppUnderTest, worker: Any
) -> None:
    # Events are kept for apps with an endpoint that wants them; nothing listens on port 9.
    client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks"})
    client.post("/credits/add", json={"user_id": "alice", "amount": 600})
    first = browser.save_card(CHARGE_DECLINED)
    browser.save_card(VISA)
    listed = browser.get("/client/payment-methods").json()["payment_methods"]
    assert listed[0]["id"] == first["id"]
    browser.put("/client/auto-top-up", json=TOP_UP)
    deducted = client.post("/credits/deduct", json={"user_id": "alice", "amount": 200}).json()
    assert deducted["auto_top_up_started"] is True
    wait_for(lambda: browser.get("/client/balance").json()["balance"] == 2400)
    assert purchases(settings, test_app.app_id) == [
        ("auto_top_up", "failed", "card_declined"),
        ("auto_top_up", "succeeded", None),
    ]
    assert browser.get("/client/auto-top-up").json()["status"] == "active"
    wait_for(lambda: "payment.credited" in dict(stored_events(settings, test_app.app_id)))
    events = dict(stored_events(settings, test_app.app_id))
    assert events["auto_top_up.succeeded"]["amount_cents"] == 2000
    assert events["auto_top_up.succeeded"]["credits"] == 2000
    assert (events["payment.credited"]["amount"], events["payment.credited"]["provider"]) == (
        2000, "stripe",
    )  # fmt: skip


def test_three_failed_rounds_pause_auto_top_up_with_the_reason(
    browser: Browser, client: httpx.Client, settings: Settings, test_app: AppUnderTest, worker: Any
) -> None:
    client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/hooks"})
    client.post("/credits/add", json={"user_id": "alice", "amount": 600})
    browser.save_card(CHARGE_DECLINED)
    browser.put("/client/auto-top-up", json=TOP_UP)
    client.post("/credits/deduct", json={"user_id": "alice", "amount": 200})

    wait_for(lambda: browser.get("/client/auto-top-up").json()["status"] == "retrying")
    retrying = browser.get("/client/auto-top-up").json()
    assert retrying["retries_remaining"] == 2 and retrying["next_retry_at"] is not None
    assert retrying["last_failure_reason"] == "visa ending 0341 declined (card_declined)"

    # Retries come after RETRY_SECONDS, then twice that.
    wait_for(lambda: browser.get("/client/auto-top-up").json()["status"] == "paused",
             timeout=20 + 3 * RETRY_SECONDS)  # fmt: skip
    paused = browser.get("/client/auto-top-up").json()
    assert (paused["retries_remaining"], paused["next_retry_at"]) == (0, None)
    assert paused["last_failure_reason"] == "visa ending 0341 declined (card_declined)"
    assert [p[1] for p in purchases(settings, test_app.app_id)] == ["failed"] * 3
    failed = [d for kind, d in stored_events(settings, test_app.app_id) if kind.startswith("auto")]
    assert [(d["status"], d["reason"]) for d in failed] == [
        ("retrying", "visa ending 0341 declined (card_declined)"),
        ("retrying", "visa ending 0341 declined (card_declined)"),
        ("paused", "visa ending 0341 declined (card_declined)"),
    ]

    # Paused: usage no longer starts top-ups, until the user saves the settings again.
    again = client.post("/credits/deduct", json={"user_id": "alice", "amount": 100}).json()
    assert "auto_top_up_started" not in again
    browser.save_card(VISA)
    resumed = browser.put("/client/auto-top-up", json=TOP_UP).json()
    assert (resumed["status"], resumed["retries_remaining"]) == ("active", 3)
    assert resumed["last_failure_reason"] is None
    started = client.post("/credits/deduct", json={"user_id": "alice", "amount": 1}).json()
    assert started["auto_top_up_started"] is True
    wait_for(lambda: browser.get("/client/balance").json()["balance"] == 299 + 2000)


def test_the_daily_limit_stops_runaway_top_ups(
    browser: Browser,
    client: httpx.Client,
    repository: AppRepository,
    settings: Settings,
    test_app: AppUnderTest,
    worker: Any,
) -> None:
    enable_purchases(repository, test_app, auto_top_up_daily_limit_cents=3000)
    client.post("/credits/add", json={"user_id": "alice", "amount": 600})
    browser.save_card(VISA)
    browser.put("/client/auto-top-up", json=TOP_UP)
    client.post("/credits/deduct", json={"user_id": "alice", "amount": 200})
    wait_for(lambda: browser.get("/client/balance").json()["balance"] == 2400)
    # Usage eats the top-up; a second $20 would pass the $30 day.
    client.post("/credits/deduct", json={"user_id": "alice", "amount": 2000})
    wait_for(lambda: browser.get("/client/auto-top-up").json()["last_failure_reason"] is not None)
    capped = browser.get("/client/auto-top-up").json()
    assert capped["last_failure_reason"] == (
        "daily auto top-up limit reached: 2000 of 3000 cents spent today"
    )
    assert capped["next_retry_at"].endswith("T00:00:00.000Z")
    assert purchases(settings, test_app.app_id) == [("auto_top_up", "succeeded", None)]
    assert browser.get("/client/balance").json()["balance"] == 400


def test_thresholds_lost_by_redis_come_back_from_postgresql(
    browser: Browser, client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "alice", "amount": 600})
    browser.save_card(VISA)
    browser.put("/client/auto-top-up", json=TOP_UP)
    redis = redis_of(settings, decode=True)
    top_up_key = account_keys(test_app.app_id, "alice").top_up()
    assert redis.hget(top_up_key, "threshold") == "500"
    redis.delete(top_up_key)  # as a Redis restart without persistence would
    # A worker puts the settings back when it starts (and every few minutes).
    worker = WorkerProcess(tally_env(settings))
    try:
        wait_for(lambda: redis.hget(top_up_key, "threshold") == "500")
        started = client.post("/credits/deduct", json={"user_id": "alice", "amount": 200}).json()
        assert started["auto_top_up_started"] is True
        wait_for(lambda: browser.get("/client/balance").json()["balance"] == 2400)
    finally:
        worker.stop()
        redis.close()


def test_a_top_up_that_leaves_the_balance_below_the_threshold_starts_another(
    browser: Browser, client: httpx.Client, settings: Settings, test_app: AppUnderTest, worker: Any
) -> None:
    # Also what a deduct landing while a top-up runs relies on: it finds the top-up pending and
    # starts nothing, so the finishing top-up looks at the balance once more.
    client.post("/credits/add", json={"user_id": "alice", "amount": 600})
    browser.save_card(VISA)
    small = {"enabled": True, "threshold_cents": 1000, "purchase_amount_cents": 500}
    browser.put("/client/auto-top-up", json=small)
    assert client.post("/credits/deduct", json={"user_id": "alice", "amount": 600}).json()[
        "auto_top_up_started"
    ]
    # 0 + 500 is still below 1000 credits: a second top-up follows, and no third.
    wait_for(lambda: browser.get("/client/balance").json()["balance"] == 1000)
    time.sleep(1.0)
    assert purchases(settings, test_app.app_id) == [("auto_top_up", "succeeded", None)] * 2
