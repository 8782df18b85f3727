"""Payment webhooks, signed exactly as each provider signs them, against real Redis,
PostgreSQL and a running `tally worker`."""

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from engine.settings import Settings
from tests.conftest import ApiServer, AppUnderTest, WorkerProcess, tally, tally_env
from tests.test_events import stored_events
from tests.test_ledger import ledger, wait_until

STRIPE_SECRET = "whsec_test_secret_for_tally"
POLAR_SECRET = "polar_whs_9fKc3uQ1XyZ0a7bT2eLmN4pR"
LEMON_SECRET = "lemon-signing-secret"


@pytest.fixture(scope="module")
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    process = WorkerProcess(tally_env(settings))
    yield process
    process.stop()


@pytest.fixture
def hooks(
    settings: Settings, test_app: AppUnderTest, api_server: ApiServer, worker: WorkerProcess
) -> "Hooks":
    tally(
        settings, "apps", "update", test_app.app_id,
        "--stripe-webhook-secret", STRIPE_SECRET, "--polar-webhook-secret", POLAR_SECRET,
        "--lemonsqueezy-webhook-secret", LEMON_SECRET,
    )  # fmt: skip
    return Hooks(settings, api_server, test_app)


class Hooks:
    def __init__(self, settings: Settings, api: ApiServer, app: AppUnderTest) -> None:
        self.settings, self.api, self.app = settings, api, app

    def url(self, provider: str) -> str:
        return f"{self.api.url}/webhooks/{provider}/{self.app.app_id}"

    def stripe(
        self, event: dict[str, Any], *, secret: str = STRIPE_SECRET, at: int | None = None,
        extra_signature: str | None = None, body: bytes | None = None,
    ) -> httpx.Response:  # fmt: skip
        body = body if body is not None else json.dumps(event).encode()
        timestamp = at if at is not None else int(time.time())
        signature = hmac.new(
            secret.encode(), f"{timestamp}.".encode() + json.dumps(event).encode(), hashlib.sha256
        ).hexdigest()
        header = f"t={timestamp},v1={signature}"
        if extra_signature:  # a rotated-out secret's signature first, as Stripe sends both
            header = f"t={timestamp},v1={extra_signature},v1={signature}"
        return httpx.post(self.url("stripe"), content=body, headers={"Stripe-Signature": header})

    def polar(
        self, event: dict[str, Any], *, message_id: str, secret: str = POLAR_SECRET,
        at: int | None = None, body: bytes | None = None,
    ) -> httpx.Response:  # fmt: skip
        signed_body = json.dumps(event).encode()
        timestamp = str(at if at is not None else int(time.time()))
        # Standard Webhooks, keyed as Polar's SDK keys it: the secret's own bytes.
        digest = hmac.new(
            secret.encode(), f"{message_id}.{timestamp}.".encode() + signed_body, hashlib.sha256
        ).digest()
        headers = {
            "webhook-id": message_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }
        return httpx.post(
            self.url("polar"), content=body if body is not None else signed_body, headers=headers
        )

    def lemonsqueezy(
        self, event: dict[str, Any], *, secret: str = LEMON_SECRET, body: bytes | None = None
    ) -> httpx.Response:
        signed_body = json.dumps(event).encode()
        signature = hmac.new(secret.encode(), signed_body, hashlib.sha256).hexdigest()
        headers = {"X-Signature": signature, "X-Event-Name": event["meta"]["event_name"]}
        return httpx.post(
            self.url("lemonsqueezy"),
            content=body if body is not None else signed_body,
            headers=headers,
        )

    def events(self, **where: str) -> list[dict[str, Any]]:
        args = ["webhooks", "list", "--app", self.app.app_id, "--json"]
        return [
            e for e in json.loads(tally(self.settings, *args).stdout)
            if all(e[k] == v for k, v in where.items())
        ]  # fmt: skip

    def settled(self, count: int) -> list[dict[str, Any]]:
        """Wait until `count` events exist and none is pending."""

        def done() -> bool:
            events = self.events()
            return len(events) == count and all(e["status"] != "pending" for e in events)

        wait_until(done, 30, f"{count} settled events")
        return self.events()

    def balance(self, user: str) -> int:
        response = httpx.get(
            f"{self.api.url}/credits/balance",
            params={"user_id": user},
            headers={"Authorization": f"Bearer {self.app.api_key}"},
        )
        value: int = response.json()["balance"]
        return value


def stripe_intent(
    event_id: str, payment_id: str, metadata: dict[str, str], amount: int = 1000,
    currency: str = "gbp",
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": payment_id, "object": "payment_intent", "amount": amount,
                            "amount_received": amount, "currency": currency,
                            "metadata": metadata}},
    }  # fmt: skip


def stripe_refund(event_id: str, payment_id: str, amount: int, refunded: int) -> dict[str, Any]:
    charge = {
        "id": "ch_" + payment_id,
        "object": "charge",
        "payment_intent": payment_id,
        "amount": amount,
        "amount_refunded": refunded,
        "refunded": refunded == amount,
    }
    return {"id": event_id, "type": "charge.refunded", "data": {"object": charge}}


# --- Stripe --------------------------------------------------------------------------------------


def test_stripe_payment_credits_once_with_payment_id_as_reference(hooks: Hooks) -> None:
    event = stripe_intent("evt_1", "pi_1", {"tally_user_id": "user_001", "tally_credits": "500"})
    response = hooks.stripe(event)
    assert response.status_code == 200 and response.json()["status"] == "pending"
    assert hooks.stripe(event).json()["status"] == "duplicate"  # redelivered
    [stored] = hooks.settled(1)
    assert (stored["status"], stored["credits"], stored["payment_id"]) == ("credited", 500, "pi_1")
    assert stored["deliveries"] == 2
    assert hooks.balance("user_001") == 500
    # The same payment under a new event id (its Checkout Session) credits nothing more.
    metadata = {"tally_user_id": "user_001", "tally_credits": "500"}
    session = {
        "id": "evt_2",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": "cs_1",
                "payment_status": "paid",
                "payment_intent": "pi_1",
                "amount_total": 1000,
                "currency": "gbp",
                "metadata": metadata,
            }
        },
    }
    hooks.stripe(session)
    assert {e["status"] for e in hooks.settled(2)} == {"credited", "duplicate"}
    assert hooks.balance("user_001") == 500
    tally(hooks.settings, "worker", "--burst")
    [entry] = ledger(hooks.settings, hooks.app.app_id)
    assert (entry["reference_id"], entry["amount"], entry["kind"]) == ("pi_1", 500, "add")


def test_five_concurrent_deliveries_credit_once(hooks: Hooks) -> None:
    events = [
        stripe_intent(f"evt_c{i % 2}", "pi_c", {"tally_user_id": "u", "tally_credits": "70"})
        for i in range(5)
    ]
    responses: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda e=e: responses.append(hooks.stripe(e))) for e in events
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [200] * 5
    settled = hooks.settled(2)
    assert sorted(e["status"] for e in settled) == ["credited", "duplicate"]
    assert sum(e["deliveries"] for e in settled) == 5
    assert hooks.balance("u") == 70


def test_credit_rate_when_tally_credits_is_absent(hooks: Hooks) -> None:
    tally(hooks.settings, "apps", "update", hooks.app.app_id, "--credit-rate", "100")
    hooks.stripe(stripe_intent("evt_gbp", "pi_gbp", {"tally_user_id": "g"}, 1000, "gbp"))
    hooks.stripe(stripe_intent("evt_jpy", "pi_jpy", {"tally_user_id": "j"}, 500, "jpy"))
    hooks.settled(2)
    assert (hooks.balance("g"), hooks.balance("j")) == (1000, 50_000)


def test_a_payment_for_no_user_is_acknowledged_and_ignored(hooks: Hooks) -> None:
    response = hooks.stripe(stripe_intent("evt_x", "pi_x", {}))
    assert response.status_code == 200
    [event] = hooks.settled(1)
    assert event["status"] == "ignored" and "no tally_user_id" in event["reason"]
    assert hooks.events(status="ignored") == [event]


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"tally_user_id": "u", "tally_credits": "ten"}, "tally_credits 'ten' is not an integer"),
        ({"tally_user_id": "u", "tally_credits": "0"}, "tally_credits '0' is not an integer"),
        ({"tally_user_id": "u"}, "no credit_rate"),
    ],
)
def test_a_paid_payment_tally_cannot_credit_is_failed_and_listed_for_a_look(
    hooks: Hooks, metadata: dict[str, str], reason: str
) -> None:
    response = hooks.stripe(stripe_intent("evt_x", "pi_x", metadata))
    assert response.status_code == 200
    [event] = hooks.settled(1)
    assert event["status"] == "failed" and reason in event["reason"]
    failed = json.loads(
        tally(
            hooks.settings, "webhooks", "list", "--failed", "--app", hooks.app.app_id, "--json"
        ).stdout
    )
    assert [e["id"] for e in failed] == [event["id"]]
    assert hooks.balance("u") == 0


def test_a_failed_payment_is_credited_by_a_retry_once_the_app_is_fixed(
    hooks: Hooks, worker: WorkerProcess
) -> None:
    hooks.stripe(stripe_intent("evt_norate", "pi_norate", {"tally_user_id": "u"}, 2500, "usd"))
    [event] = hooks.settled(1)
    assert event["status"] == "failed"
    tally(hooks.settings, "apps", "update", hooks.app.app_id, "--credit-rate", "10")
    tally(hooks.settings, "webhooks", "retry", str(event["id"]))
    [event] = hooks.settled(1)
    assert (event["status"], event["credits"]) == ("credited", 250)
    assert hooks.balance("u") == 250


def test_a_payment_made_for_another_app_is_not_credited_here(hooks: Hooks) -> None:
    # Two apps sharing a Stripe account both hear every payment Tally made for either.
    mine = {"tally_user_id": "u", "tally_credits": "5", "tally_app_id": hooks.app.app_id}
    theirs = mine | {"tally_app_id": "app_someone_else"}
    hooks.stripe(stripe_intent("evt_mine", "pi_mine", mine))
    hooks.stripe(stripe_intent("evt_theirs", "pi_theirs", theirs))
    statuses = {e["payment_id"]: (e["status"], e["reason"]) for e in hooks.settled(2)}
    assert statuses == {
        "pi_mine": ("credited", None),
        "pi_theirs": ("ignored", "payment belongs to app app_someone_else"),
    }
    assert hooks.balance("u") == 5


def test_unused_event_types_are_ignored_with_reason(hooks: Hooks) -> None:
    response = hooks.stripe({"id": "evt_c", "type": "customer.created", "data": {"object": {}}})
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert "customer.created" in hooks.events()[0]["reason"]


def test_bad_signatures_are_400_and_credit_nothing(hooks: Hooks) -> None:
    event = stripe_intent("evt_bad", "pi_bad", {"tally_user_id": "u", "tally_credits": "9"})
    tampered = json.dumps(event).replace('"9"', '"9000"').encode()
    assert hooks.stripe(event, body=tampered).status_code == 400
    assert hooks.stripe(event, secret="whsec_wrong").status_code == 400
    assert hooks.stripe(event, at=int(time.time()) - 301).status_code == 400
    unsigned = httpx.post(hooks.url("stripe"), json=event)
    assert unsigned.status_code == 400 and unsigned.json()["success"] is False
    assert hooks.events() == []
    # Secret rotation: any matching v1 signature is accepted.
    assert hooks.stripe(event, extra_signature="0" * 64).status_code == 200
    hooks.settled(1)
    assert hooks.balance("u") == 9


def test_stripe_refund_takes_credits_back_never_below_the_floor(hooks: Hooks) -> None:
    # An endpoint wanting payment events: the app's backend hears of both (nothing listens).
    httpx.post(
        f"{hooks.api.url}/webhook-endpoints",
        json={"url": "http://127.0.0.1:9/x", "events": ["payment.credited", "payment.refunded"]},
        headers={"Authorization": f"Bearer {hooks.app.api_key}"},
    )
    metadata = {"tally_user_id": "r", "tally_credits": "1000"}
    hooks.stripe(stripe_intent("evt_p", "pi_r", metadata, amount=2000))
    hooks.settled(1)
    hooks.stripe(stripe_refund("evt_r1", "pi_r", 2000, 500))  # a quarter refunded
    hooks.settled(2)
    assert hooks.balance("r") == 750
    httpx.post(
        f"{hooks.api.url}/credits/deduct",
        json={"user_id": "r", "amount": 700},
        headers={"Authorization": f"Bearer {hooks.app.api_key}"},
    )
    hooks.stripe(stripe_refund("evt_r2", "pi_r", 2000, 2000))  # then all of it
    hooks.settled(3)
    final = hooks.events(event_id="evt_r2")[0]
    assert hooks.balance("r") == 0
    assert (final["status"], final["credits"], final["shortfall"]) == ("taken_back", 50, 700)
    assert "700 of 750 credits could not be taken back" in final["reason"]
    hooks.stripe(stripe_refund("evt_r2b", "pi_r", 2000, 2000))  # the same refund, new event id
    hooks.settled(4)
    assert hooks.events(event_id="evt_r2b")[0]["status"] == "duplicate"
    assert hooks.balance("r") == 0
    wait_until(lambda: len(stored_events(hooks.settings, hooks.app.app_id)) == 3, 30, "events")
    told = stored_events(hooks.settings, hooks.app.app_id)
    assert [(kind, d["amount"], d["payment_id"]) for kind, d in told] == [
        ("payment.credited", 1000, "pi_r"),
        ("payment.refunded", -250, "pi_r"),
        ("payment.refunded", -50, "pi_r"),
    ]


# --- Polar ---------------------------------------------------------------------------------------


def polar_order(kind: str, order_id: str, **order: Any) -> dict[str, Any]:
    data = {"id": order_id, "total_amount": 2000, "currency": "usd", "metadata": {}} | order
    return {"type": kind, "timestamp": "2026-11-21T10:00:00Z", "data": data}


def test_polar_order_paid_credits_and_refund_takes_back(hooks: Hooks) -> None:
    paid = polar_order(
        "order.paid", "ord_1", metadata={"tally_user_id": "p", "tally_credits": "300"}
    )
    assert hooks.polar(paid, message_id="msg_1").status_code == 200
    assert hooks.polar(paid, message_id="msg_1").json()["status"] == "duplicate"
    assert hooks.polar(paid, message_id="msg_1b").status_code == 200  # same order, new message
    hooks.settled(2)
    assert hooks.balance("p") == 300
    refunded = polar_order("order.refunded", "ord_1", refunded_amount=2000)
    assert hooks.polar(refunded, message_id="msg_2").status_code == 200
    hooks.settled(3)
    assert hooks.balance("p") == 0


def test_polar_signature_and_timestamp_are_checked(hooks: Hooks) -> None:
    paid = polar_order("order.paid", "ord_2", metadata={"tally_user_id": "p", "tally_credits": "1"})
    now = int(time.time())
    assert hooks.polar(paid, message_id="m", at=now - 330).status_code == 400
    assert hooks.polar(paid, message_id="m", at=now + 330).status_code == 400
    assert hooks.polar(paid, message_id="m", secret="polar_whs_other").status_code == 400
    tampered = json.dumps(paid).replace('"1"', '"100"').encode()
    assert hooks.polar(paid, message_id="m", body=tampered).status_code == 400
    assert hooks.events() == []


# --- Lemon Squeezy -------------------------------------------------------------------------------


def lemon(
    event_name: str, order_id: str, custom: dict[str, str], **attributes: Any
) -> dict[str, Any]:
    attrs = {"status": "paid", "total": 999, "currency": "USD"} | attributes
    return {"meta": {"event_name": event_name, "custom_data": custom},
            "data": {"type": "orders", "id": order_id, "attributes": attrs}}  # fmt: skip


def test_lemonsqueezy_order_created_credits_and_refund_takes_back(hooks: Hooks) -> None:
    tally(hooks.settings, "apps", "update", hooks.app.app_id, "--credit-rate", "10")
    created = lemon("order_created", "1001", {"tally_user_id": "l"})
    assert hooks.lemonsqueezy(created).status_code == 200
    assert hooks.lemonsqueezy(created).json()["status"] == "duplicate"
    hooks.settled(1)
    assert hooks.balance("l") == 99  # $9.99 at 10 credits per dollar
    refunded = lemon("order_refunded", "1001", {}, status="refunded", refunded_amount=999)
    hooks.lemonsqueezy(refunded)
    hooks.settled(2)
    assert hooks.balance("l") == 0


def test_lemonsqueezy_bad_signature_is_400(hooks: Hooks) -> None:
    created = lemon("order_created", "1002", {"tally_user_id": "l", "tally_credits": "5"})
    assert hooks.lemonsqueezy(created, secret="wrong").status_code == 400
    assert hooks.lemonsqueezy(created, body=json.dumps(created).encode() + b" ").status_code == 400
    assert hooks.events() == []


# --- failures, audit -----------------------------------------------------------------------------


def test_failed_apply_is_listed_and_can_be_retried(hooks: Hooks) -> None:
    headers = {"Authorization": f"Bearer {hooks.app.api_key}"}
    httpx.post(f"{hooks.api.url}/credits/add", json={"user_id": "full", "amount": 2**53 - 10},
               headers=headers)  # fmt: skip
    hooks.stripe(stripe_intent("evt_f", "pi_f", {"tally_user_id": "full", "tally_credits": "20"}))
    [failed] = hooks.settled(1)
    assert failed["status"] == "failed" and "above" in failed["reason"]
    listed = json.loads(tally(hooks.settings, "webhooks", "list", "--failed", "--json").stdout)
    assert failed["id"] in [e["id"] for e in listed]
    httpx.post(f"{hooks.api.url}/credits/deduct", json={"user_id": "full", "amount": 100},
               headers=headers)  # fmt: skip
    tally(hooks.settings, "webhooks", "retry", str(failed["id"]))
    [retried] = hooks.settled(1)
    assert retried["status"] == "credited"
    assert hooks.balance("full") == 2**53 - 10 - 100 + 20


def test_unknown_app_or_provider_or_missing_secret(hooks: Hooks, api_server: ApiServer) -> None:
    assert (
        httpx.post(f"{api_server.url}/webhooks/stripe/app_nope", content=b"{}").status_code == 404
    )
    assert httpx.post(f"{hooks.url('paypal')}", content=b"{}").status_code == 404
    with psycopg.connect(hooks.settings.database_url) as conn:
        conn.execute(
            "UPDATE apps SET polar_webhook_secret = NULL WHERE app_id = %s", (hooks.app.app_id,)
        )
    paid = polar_order("order.paid", "o", metadata={"tally_user_id": "p", "tally_credits": "1"})
    response = hooks.polar(paid, message_id="m")
    assert response.status_code == 400 and "secret" in response.json()["error"]


def test_a_payment_in_an_unknown_currency_is_failed_not_guessed(hooks: Hooks) -> None:
    tally(hooks.settings, "apps", "update", hooks.app.app_id, "--credit-rate", "100")
    hooks.stripe(stripe_intent("evt_cur", "pi_cur", {"tally_user_id": "u"}, 1000, "dollars"))
    [event] = hooks.settled(1)
    assert event["status"] == "failed" and "unknown currency 'dollars'" in event["reason"]
    assert hooks.balance("u") == 0
