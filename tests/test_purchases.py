"""Stored cards and purchases, against localstripe, real Redis, PostgreSQL and RQ workers."""

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from engine.accounts.repository import AppRepository
from engine.settings import Settings
from tests.browser import AUTHENTICATION, CHARGE_DECLINED, DECLINED, VISA, Browser, enable_purchases
from tests.conftest import ApiServer, AppUnderTest, WorkerProcess, tally_env
from tests.servers import LocalStripe, free_port

WEBHOOK_SECRET = "whsec_tally_test"


@pytest.fixture
def billing(repository: AppRepository, test_app: AppUnderTest) -> AppUnderTest:
    enable_purchases(repository, test_app, stripe_webhook_secret=WEBHOOK_SECRET)
    return test_app


@pytest.fixture
def browser(
    api_server: ApiServer, localstripe: LocalStripe, client: httpx.Client, billing: AppUnderTest
) -> Iterator[Browser]:
    user = Browser(api_server.url, localstripe.url, client, "alice")
    yield user
    user.close()


@pytest.fixture
def stripe_webhooks(
    localstripe: LocalStripe, api_server: ApiServer, billing: AppUnderTest
) -> Iterator[None]:
    """localstripe posts this app's payment_intent.succeeded events to Tally, signed."""
    config = f"{localstripe.url}/_config/webhooks/tally"
    url = f"{api_server.url}/webhooks/stripe/{billing.app_id}"
    events = {"events[]": ["payment_intent.succeeded"]}
    register = {"url": url, "secret": WEBHOOK_SECRET} | events
    assert httpx.post(config, data=register).status_code == 200
    yield
    # Point it at nothing, so that later tests' payments reach no app.
    nowhere = {"url": f"http://127.0.0.1:{free_port()}/", "secret": "x"} | events
    httpx.post(config, data=nowhere)


@pytest.fixture
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    process = WorkerProcess(tally_env(settings))
    yield process
    process.stop()


def webhook_statuses(settings: Settings, app_id: str) -> list[tuple[str, str | None]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT status, reason FROM webhook_events WHERE app_id = %s ORDER BY event_pk",
            (app_id,),
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_cards_are_saved_listed_ordered_and_deleted(browser: Browser) -> None:
    assert browser.get("/client/payment-methods").json() == {"payment_methods": []}
    visa = browser.save_card(VISA)
    assert visa == {
        "id": visa["id"],
        "provider": "stripe",
        "method_type": "card",
        "card_brand": "visa",
        "card_last4": "4242",
        "card_exp_month": 12,
        "card_exp_year": 2031,
        "priority": 1,
    }
    backup = browser.save_card(CHARGE_DECLINED)
    assert backup["priority"] == 2
    listed = browser.get("/client/payment-methods").json()["payment_methods"]
    assert [(c["id"], c["priority"]) for c in listed] == [(visa["id"], 1), (backup["id"], 2)]

    reordered = browser.put(
        "/client/payment-methods/order", json={"payment_method_ids": [backup["id"], visa["id"]]}
    )
    assert [c["card_last4"] for c in reordered.json()["payment_methods"]] == ["0341", "4242"]
    listed = browser.get("/client/payment-methods").json()["payment_methods"]
    assert [(c["card_last4"], c["priority"]) for c in listed] == [("0341", 1), ("4242", 2)]
    for wrong in ([visa["id"]], [visa["id"], visa["id"]], [visa["id"], backup["id"], "pm_x"]):
        response = browser.put("/client/payment-methods/order", json={"payment_method_ids": wrong})
        assert response.status_code == 400
        assert "exactly once" in response.json()["error"]

    assert browser.delete(f"/client/payment-methods/{backup['id']}").status_code == 200
    listed = browser.get("/client/payment-methods").json()["payment_methods"]
    assert [(c["id"], c["priority"]) for c in listed] == [(visa["id"], 1)]
    assert browser.delete(f"/client/payment-methods/{backup['id']}").status_code == 404


def test_a_declined_card_is_never_saved(browser: Browser) -> None:
    intent = browser.post("/client/payment-methods/setup-intent").json()
    declined = browser.confirm_card_setup(intent["client_secret"], DECLINED)
    assert declined.status_code == 402  # what Stripe.js shows the user
    response = browser.post(
        "/client/payment-methods", json={"setup_intent_id": intent["setup_intent_id"]}
    )
    assert response.status_code == 400
    assert "is canceled: confirm it with Stripe.js" in response.json()["error"]
    assert browser.get("/client/payment-methods").json() == {"payment_methods": []}


def test_users_cannot_touch_each_others_cards(
    browser: Browser, api_server: ApiServer, localstripe: LocalStripe, client: httpx.Client
) -> None:
    visa = browser.save_card(VISA)
    mallory = Browser(api_server.url, localstripe.url, client, "mallory")
    try:
        mallory.save_card(VISA)
        assert mallory.delete(f"/client/payment-methods/{visa['id']}").status_code == 404
        stolen = mallory.buy(1000, visa["id"], "steal-1")
        assert stolen.status_code == 404 and "no payment method" in stolen.json()["error"]
        other_intent = browser.post("/client/payment-methods/setup-intent").json()
        browser.confirm_card_setup(other_intent["client_secret"], VISA)
        hijack = mallory.post(
            "/client/payment-methods", json={"setup_intent_id": other_intent["setup_intent_id"]}
        )
        assert hijack.status_code == 404
    finally:
        mallory.close()
    assert [c["id"] for c in browser.get("/client/payment-methods").json()["payment_methods"]] == [
        visa["id"]
    ]


def test_a_purchase_credits_once_and_replays(browser: Browser, client: httpx.Client) -> None:
    client.post("/credits/add", json={"user_id": "alice", "amount": 500})
    visa = browser.save_card(VISA)
    bought = browser.buy(1000, visa["id"], "buy-1")
    assert bought.status_code == 200, bought.text
    body = bought.json()
    assert body["success"] is True and body["status"] == "succeeded"
    assert body["credits_purchased"] == 1000 and body["new_balance"] == 1500
    assert body["payment_intent_id"].startswith("pi_")
    assert "client_secret" not in body

    again = browser.buy(1000, visa["id"], "buy-1")
    assert again.json() == body and again.headers["Idempotent-Replayed"] == "true"
    conflict = browser.buy(2000, visa["id"], "buy-1")
    assert conflict.status_code == 422
    assert browser.get("/client/balance").json()["balance"] == 1500

    entry = browser.get("/client/transactions").json()["transactions"][0]
    assert (entry["amount_delta"], entry["reason"], entry["reference_id"]) == (
        1000,
        "stripe payment",
        body["payment_intent_id"],
    )


def test_a_decline_is_a_402_with_stripes_code(browser: Browser) -> None:
    card = browser.save_card(CHARGE_DECLINED)
    declined = browser.buy(1000, card["id"], "buy-declined")
    assert declined.status_code == 402
    body = declined.json()
    assert body["success"] is False and body["decline_code"] == "card_declined"
    assert "declined" in body["error"]
    assert "idempotent-replayed" not in declined.headers
    # The same key answers the same decline, marked as a replay; a new key tries again.
    replayed = browser.buy(1000, card["id"], "buy-declined")
    assert replayed.status_code == 402 and replayed.json() == body
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert browser.buy(1000, card["id"], "buy-declined-2").status_code == 402
    assert browser.get("/client/balance").json()["balance"] == 0


def test_purchases_respect_the_apps_settings(
    browser: Browser, repository: AppRepository, billing: AppUnderTest
) -> None:
    visa = browser.save_card(VISA)
    too_small = browser.buy(499, visa["id"], "small")
    assert too_small.status_code == 400
    assert too_small.json()["error"] == "amount_cents must be from 500 to 50000"
    assert browser.buy(50_001, visa["id"], "big").status_code == 400
    assert browser.buy(1000, "pm_unknown", "unknown").status_code == 404
    assert browser.post("/client/purchases", json={"amount_cents": "10"}).status_code == 400
    enable_purchases(repository, billing, manual_top_up_available=False)
    time.sleep(1.0)  # the API's app cache
    refused = browser.buy(1000, visa["id"], "off")
    assert refused.status_code == 403
    assert refused.json()["error"] == "buying credits is not available for this app"
    assert browser.get("/client/balance").json()["balance"] == 0


def test_the_webhook_of_a_purchase_never_credits_it_again(
    browser: Browser,
    settings: Settings,
    billing: AppUnderTest,
    stripe_webhooks: None,
    worker: WorkerProcess,
) -> None:
    visa = browser.save_card(VISA)
    bought = browser.buy(2500, visa["id"], "buy-webhook").json()
    assert bought["new_balance"] == 2500
    # localstripe sends payment_intent.succeeded about a second later; a worker applies it.
    wait_for(lambda: [s for s, _ in webhook_statuses(settings, billing.app_id)] == ["duplicate"])
    assert "already credited by its purchase" in str(webhook_statuses(settings, billing.app_id))
    assert browser.get("/client/balance").json()["balance"] == 2500


def test_a_card_that_needs_authentication_is_credited_by_the_webhook_once_paid(
    browser: Browser,
    localstripe: LocalStripe,
    settings: Settings,
    billing: AppUnderTest,
    stripe_webhooks: None,
    worker: WorkerProcess,
) -> None:
    card = browser.save_card(AUTHENTICATION)
    pending = browser.buy(1000, card["id"], "buy-3ds")
    assert pending.status_code == 202, pending.text
    body = pending.json()
    assert body["status"] == "requires_action" and body["credits_purchased"] == 0
    assert body["client_secret"].startswith(body["payment_intent_id"])
    assert browser.get("/client/balance").json()["balance"] == 0

    # stripe.handleCardAction(client_secret): the holder authenticates, the charge goes through.
    authenticated = httpx.post(
        f"{localstripe.url}/v1/payment_intents/{body['payment_intent_id']}/_authenticate",
        data={"key": "pk_test_tally", "client_secret": body["client_secret"], "success": "true"},
    )
    assert authenticated.json()["status"] == "succeeded"
    wait_for(lambda: browser.get("/client/balance").json()["balance"] == 1000)
    assert [s for s, _ in webhook_statuses(settings, billing.app_id)] == ["credited"]
    replay = browser.buy(1000, card["id"], "buy-3ds")
    assert replay.status_code == 200
    assert (replay.json()["status"], replay.json()["credits_purchased"]) == ("succeeded", 1000)
    assert browser.get("/client/balance").json()["balance"] == 1000


def test_a_refund_of_a_purchase_takes_its_credits_back(
    browser: Browser,
    settings: Settings,
    api_server: ApiServer,
    billing: AppUnderTest,
    worker: WorkerProcess,
) -> None:
    from tests.test_webhooks import Hooks, stripe_refund

    visa = browser.save_card(VISA)
    bought = browser.buy(2500, visa["id"], "buy-then-refund").json()
    assert bought["new_balance"] == 2500
    # The app refunds $10 of the $25 in Stripe; Stripe tells Tally with charge.refunded.
    hooks = Hooks(settings, api_server, billing)
    refund = stripe_refund("evt_refund_purchase", bought["payment_intent_id"], 2500, 1000)
    assert hooks.stripe(refund, secret=WEBHOOK_SECRET).status_code == 200
    wait_for(lambda: ("taken_back", None) in webhook_statuses(settings, billing.app_id))
    assert browser.get("/client/balance").json()["balance"] == 1500
