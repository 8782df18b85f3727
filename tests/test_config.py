"""Per-app credits configuration: GET/PATCH /credits/config and `tally apps update`."""

import json
import time
from typing import Any

import httpx
import pytest

from engine.settings import Settings
from tests.conftest import AppUnderTest, tally

DEFAULTS = {
    "credits_enabled": True,
    "credits_per_dollar": None,
    "display_name": "Credits",
    "display_symbol": None,
    "display_symbol_position": "left",
    "display_decimals": 0,
    "min_purchase_cents": 100,
    "max_purchase_cents": 100_000,
    "overdraft_enabled": False,
    "overdraft_limit": 0,
    "manual_top_up_available": False,
    "auto_top_up_available": False,
    "currency": "usd",
    "low_balance_thresholds": [],
}


def test_defaults_and_patch(client: httpx.Client) -> None:
    assert client.get("/credits/config").json() == DEFAULTS
    changed = {
        "credits_per_dollar": 100,
        "display_name": "Tokens",
        "display_symbol": "TK",
        "display_symbol_position": "right",
        "display_decimals": 2,
        "min_purchase_cents": 500,
        "max_purchase_cents": 50_000,
        "manual_top_up_available": True,
    }
    response = client.patch("/credits/config", json=changed)
    assert response.status_code == 200
    assert response.json() == DEFAULTS | changed
    assert client.get("/credits/config").json() == DEFAULTS | changed
    cleared = client.patch("/credits/config", json={"display_symbol": None}).json()
    assert cleared["display_symbol"] is None
    assert (
        client.patch("/credits/config", json={"credits_per_dollar": 0.5}).json()[
            "credits_per_dollar"
        ]
        == 0.5
    )


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"min_purchase_cents": 900, "max_purchase_cents": 800}, "max_purchase_cents"),
        ({"max_purchase_cents": 50}, "below min_purchase_cents"),
        ({"min_purchase_cents": -1}, "min_purchase_cents"),
        ({"overdraft_limit": -5}, "overdraft_limit"),
        ({"display_decimals": 9}, "display_decimals"),
        ({"display_symbol_position": "top"}, "display_symbol_position"),
        ({"credits_per_dollar": 0}, "credits_per_dollar"),
        ({"credits_per_dollar": "100"}, "credits_per_dollar"),
        ({"display_name": None}, "display_name cannot be null"),
        ({"credits_enabled": "yes"}, "credits_enabled"),
        ({"colour": "red"}, "unknown field colour"),
    ],
)
def test_invalid_patches_are_400_and_change_nothing(
    client: httpx.Client, patch: dict[str, Any], message: str
) -> None:
    response = client.patch("/credits/config", json=patch)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert client.get("/credits/config").json() == DEFAULTS


def test_overdraft_is_enforced_in_the_script_and_402_says_how_far(client: httpx.Client) -> None:
    client.patch("/credits/config", json={"overdraft_enabled": True, "overdraft_limit": 30})
    time.sleep(1.0)  # the key cache picks the new floor up within a second
    client.post("/credits/add", json={"user_id": "u", "amount": 10})
    assert (
        client.post("/credits/deduct", json={"user_id": "u", "amount": 40}).json()["balance_after"]
        == -30
    )
    refused = client.post("/credits/deduct", json={"user_id": "u", "amount": 1})
    assert refused.status_code == 402
    assert refused.json() == {
        "success": False, "error": "Insufficient credits", "balance": -30, "floor": -30
    }  # fmt: skip
    # Switching overdraft off keeps the limit but puts the floor back at 0.
    client.patch("/credits/config", json={"overdraft_enabled": False})
    time.sleep(1.0)
    client.post("/credits/add", json={"user_id": "u", "amount": 35})
    assert client.post("/credits/deduct", json={"user_id": "u", "amount": 6}).status_code == 402
    assert client.get("/credits/config").json()["overdraft_limit"] == 30


def test_cli_sets_the_same_configuration(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    out = tally(
        settings, "apps", "update", test_app.app_id, "--credits-per-dollar", "250",
        "--display-name", "Gems", "--auto-top-up-available", "true",
        "--min-purchase-cents", "200", "--json",
    )  # fmt: skip
    assert json.loads(out.stdout)["display_name"] == "Gems"
    config = client.get("/credits/config").json()
    assert (config["credits_per_dollar"], config["auto_top_up_available"]) == (250, True)
    assert config["min_purchase_cents"] == 200
    bad = tally(
        settings, "apps", "update", test_app.app_id, "--max-purchase-cents", "100", check=False
    )
    assert bad.returncode == 1 and "below min_purchase_cents" in bad.stderr


def test_credits_per_dollar_is_the_default_webhook_rate(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    from engine.accounts.apps import Apps
    from engine.accounts.repository import AppRepository
    from engine.store.db import open_pool
    from engine.vault.keyring import keyring

    pool = open_pool(settings.database_url, 1, wait=True)
    apps = Apps(AppRepository(pool, keyring(settings)))
    app = apps.update(test_app.app_id, {"credits_per_dollar": 100})
    pool.close()
    assert app.webhook_credit_rate == 100
    assert app.credit_rate is None
