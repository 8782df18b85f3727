"""What an app's backend and its users' browsers do around Tally, for the billing tests.

Stripe.js is played by posting to localstripe with a publishable key, as the browser would;
everything Tally does with Stripe goes through Tally's own API.
"""

from decimal import Decimal
from typing import Any

import httpx

from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from tests.conftest import AppUnderTest

VISA = "4242424242424242"
# Saving it works; every charge is declined (Stripe's "attach succeeds, charge fails" card).
CHARGE_DECLINED = "4000000000000341"
# Declined as soon as it is saved.
DECLINED = "4000000000000002"
# Needs 3-D Secure: an off-session charge ends in requires_action.
AUTHENTICATION = "4000002500003155"


def enable_purchases(repository: AppRepository, app: AppUnderTest, **changes: Any) -> None:
    settings: dict[str, Any] = {
        "stripe_secret_key": "sk_test_tally",
        "credits_per_dollar": Decimal(100),
        "manual_top_up_available": True,
        "auto_top_up_available": True,
        "min_purchase_cents": 500,
        "max_purchase_cents": 50_000,
    }
    Apps(repository).update(app.app_id, settings | changes)


class Browser:
    """One user's browser: a client token minted by the app's backend, and Stripe.js."""

    def __init__(self, api_url: str, stripe_url: str, client: httpx.Client, user_id: str) -> None:
        response = client.post("/client-tokens", json={"user_id": user_id})
        assert response.status_code == 200, response.text
        self.token = response.json()["token"]
        self.user_id = user_id
        self.stripe = httpx.Client(base_url=stripe_url, timeout=30)
        self.http = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.put(path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.delete(path, **kwargs)

    def confirm_card_setup(self, client_secret: str, number: str) -> httpx.Response:
        """stripe.confirmCardSetup(clientSecret, {payment_method: {card}}) against localstripe."""
        setup_intent_id = client_secret.split("_secret_")[0]
        return self.stripe.post(
            f"/v1/setup_intents/{setup_intent_id}/confirm",
            data={
                "key": "pk_test_tally",
                "client_secret": client_secret,
                "payment_method_data[type]": "card",
                "payment_method_data[card][number]": number,
                "payment_method_data[card][exp_month]": "12",
                "payment_method_data[card][exp_year]": "2031",
                "payment_method_data[card][cvc]": "123",
            },
        )

    def save_card(self, number: str) -> dict[str, Any]:
        """The whole flow of adding a card: SetupIntent from Tally, confirm with Stripe.js,
        then tell Tally which SetupIntent it was."""
        intent = self.post("/client/payment-methods/setup-intent")
        assert intent.status_code == 200, intent.text
        confirmed = self.confirm_card_setup(intent.json()["client_secret"], number)
        assert confirmed.status_code == 200, confirmed.text
        if confirmed.json()["status"] == "requires_action":
            # Stripe.js shows the 3-D Secure challenge; the holder passes it.
            setup_intent_id = intent.json()["setup_intent_id"]
            passed = self.stripe.post(
                f"/v1/setup_intents/{setup_intent_id}/confirm",
                data={"key": "pk_test_tally", "client_secret": intent.json()["client_secret"]},
            )
            assert passed.json()["status"] == "succeeded", passed.text
        saved = self.post(
            "/client/payment-methods", json={"setup_intent_id": intent.json()["setup_intent_id"]}
        )
        assert saved.status_code == 201, saved.text
        card: dict[str, Any] = saved.json()
        return card

    def buy(self, amount_cents: int, payment_method_id: str, key: str) -> httpx.Response:
        return self.post(
            "/client/purchases",
            json={
                "amount_cents": amount_cents,
                "payment_method_id": payment_method_id,
                "idempotency_key": key,
            },
        )

    def close(self) -> None:
        self.http.close()
        self.stripe.close()
