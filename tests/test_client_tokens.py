"""Client tokens: a browser acts for one user, reads what that user may read, and nothing more."""

import base64
import json
import time

import httpx
import pytest

from engine.accounts import client_tokens
from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from engine.errors import AuthenticationError
from engine.settings import Settings
from tests.conftest import ApiServer, AppUnderTest, tally


def token_for(client: httpx.Client, user_id: str, **extra: object) -> str:
    response = client.post("/client-tokens", json={"user_id": user_id, **extra})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def as_browser(api_server: ApiServer, token: str, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=api_server.url, headers={"Authorization": f"Bearer {token}", **headers}
    )


def test_a_token_reads_its_users_balance_transactions_and_config(
    client: httpx.Client, api_server: ApiServer
) -> None:
    client.post("/credits/add", json={"user_id": "alice", "amount": 100, "description": "gift"})
    client.post("/credits/deduct", json={"user_id": "alice", "amount": 30, "description": "run"})
    client.post("/credits/add", json={"user_id": "bob", "amount": 5})
    issued = client.post("/client-tokens", json={"user_id": "alice", "ttl_seconds": 60}).json()
    assert issued["user_id"] == "alice" and issued["token"].startswith("tct_")
    assert issued["expires_at"].endswith("Z")

    with as_browser(api_server, issued["token"]) as browser:
        assert browser.get("/client/balance").json()["balance"] == 70
        listed = browser.get("/client/transactions", params={"limit": 10}).json()
        assert [(t["amount_delta"], t["reason"]) for t in listed["transactions"]] == [
            (-30, "run"),
            (100, "gift"),
        ]
        assert listed["transactions"][0]["id"] == listed["transactions"][0]["ledger_id"]
        assert listed["transactions"][0]["balance_after"] == 70
        config = browser.get("/client/config").json()
        assert config["display_name"] == "Credits" and "cors_origins" not in config


def test_a_token_for_one_user_cannot_reach_another_or_change_credits(
    client: httpx.Client, api_server: ApiServer, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "bob", "amount": 500})
    alice = token_for(client, "alice")
    with as_browser(api_server, alice) as browser:
        # There is no user to choose: asking for another is refused, not ignored.
        for path in ("/client/balance", "/client/transactions"):
            refused = browser.get(path, params={"user_id": "bob"})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"] == "unknown query parameter user_id"
        assert browser.get("/client/balance").json() == {
            "user_id": "alice",
            "balance": 0,
            "updated_at": None,
            "available": 0,
            "held": 0,
            "grants": [],
        }
        # Server routes refuse it whatever the body says.
        for path, body in (
            ("/credits/deduct", {"user_id": "bob", "amount": 1}),
            ("/credits/add", {"user_id": "alice", "amount": 1000}),
            ("/credits/refund", {"ledger_id": "00000000-0000-4000-8000-000000000000"}),
            ("/client-tokens", {"user_id": "bob"}),
        ):
            response = browser.post(path, json=body)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["success"] is False
        assert browser.get("/credits/balance", params={"user_id": "bob"}).status_code == 403
        assert browser.patch("/credits/config", json={"overdraft_limit": 10}).status_code == 403
    # A token re-signed for bob without the secret is worthless.
    body, _, signature = alice.removeprefix("tct_").partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "bob"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with as_browser(api_server, f"tct_{forged_body}.{signature}") as forger:
        response = forger.get("/client/balance")
        assert response.status_code == 401
        assert "invalid client token" in response.json()["error"]
    assert client.get("/credits/balance", params={"user_id": "bob"}).json()["balance"] == 500


def test_tokens_expire_and_rotating_the_secret_revokes_them(
    client: httpx.Client, api_server: ApiServer, settings: Settings, test_app: AppUnderTest
) -> None:
    short = token_for(client, "alice", ttl_seconds=1)
    long = token_for(client, "alice", ttl_seconds=3600)
    time.sleep(1.1)
    with as_browser(api_server, short) as browser:
        expired = browser.get("/client/balance")
        assert expired.status_code == 401 and "expired" in expired.json()["error"]
    with as_browser(api_server, long) as browser:
        assert browser.get("/client/balance").status_code == 200
        assert client.post("/client-tokens/revoke").json() == {"success": True}
        time.sleep(1.0)  # the API re-reads the app's secret within auth_cache_seconds
        assert browser.get("/client/balance").status_code == 401
    fresh = token_for(client, "alice")
    with as_browser(api_server, fresh) as browser:
        assert browser.get("/client/balance").status_code == 200
        tally(settings, "apps", "rotate-client-secret", test_app.app_id)
        time.sleep(1.0)
        assert browser.get("/client/balance").status_code == 401


def test_token_requests_are_validated(client: httpx.Client, api_server: ApiServer) -> None:
    cases = [
        ({}, "user_id is required"),
        ({"user_id": ""}, "user_id must be a non-empty string of at most 256 characters"),
        ({"user_id": "a", "ttl_seconds": 0}, "ttl_seconds must be an integer from 1 to 86400"),
        ({"user_id": "a", "ttl_seconds": 86_401}, "ttl_seconds must be an integer"),
        ({"user_id": "a", "scope": "all"}, "unknown field scope"),
    ]
    for body, message in cases:
        response = client.post("/client-tokens", json=body)
        assert response.status_code == 400, body
        assert response.json()["error"].startswith(message)
    with httpx.Client(base_url=api_server.url) as anonymous:
        assert anonymous.get("/client/balance").status_code == 401
        garbage = anonymous.get("/client/balance", headers={"Authorization": "Bearer tct_x.y"})
        assert garbage.status_code == 401
        api_key = client.headers["Authorization"]
        # An API key is not a client token: the browser routes want the latter.
        assert anonymous.get("/client/balance", headers={"Authorization": api_key}).status_code == (
            401
        )


def test_cors_follows_each_apps_allowed_origins(
    client: httpx.Client, api_server: ApiServer, repository: AppRepository, test_app: AppUnderTest
) -> None:
    allowed, other = "https://app.example.com", "https://evil.example.com"
    Apps(repository).update(test_app.app_id, {"cors_origins": [allowed]})
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with httpx.Client(base_url=api_server.url) as anonymous:
        ok = anonymous.options("/client/balance", headers={"Origin": allowed, **preflight})
        assert ok.status_code == 204
        assert ok.headers["access-control-allow-origin"] == allowed
        assert "Authorization" in ok.headers["access-control-allow-headers"]
        refused = anonymous.options("/client/balance", headers={"Origin": other, **preflight})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
    token = token_for(client, "alice")
    with as_browser(api_server, token, Origin=allowed) as browser:
        response = browser.get("/client/balance")
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == allowed
    with as_browser(api_server, token, Origin=other) as browser:
        response = browser.get("/client/balance")
        assert response.status_code == 403
        assert other in response.json()["error"]
        # A refused origin gets no grant, not even one to read the refusal with.
        assert "access-control-allow-origin" not in response.headers
    # Server routes are not for browsers: no CORS headers.
    server = client.get("/credits/balance", params={"user_id": "a"}, headers={"Origin": allowed})
    assert "access-control-allow-origin" not in server.headers


def test_cors_origins_are_validated(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest
) -> None:
    bad = tally(
        settings,
        "apps",
        "update",
        test_app.app_id,
        "--cors-origins",
        "app.example.com",
        check=False,
    )
    assert bad.returncode == 1 and "cors_origins must be" in bad.stderr
    good = tally(settings, "apps", "update", test_app.app_id, "--cors-origins",
                 "https://a.example.com, http://localhost:3000", "--json")  # fmt: skip
    assert json.loads(good.stdout)["cors_origins"] == [
        "https://a.example.com",
        "http://localhost:3000",
    ]
    assert "client_token_secret" not in good.stdout


def test_token_format_is_checked_offline() -> None:
    token = client_tokens.mint("app_1", "secret", "alice", 60, now=1_000)
    assert client_tokens.verify(token, "secret", now=1_059).user_id == "alice"
    with pytest.raises(AuthenticationError, match="expired"):
        client_tokens.verify(token, "secret", now=1_060)
    with pytest.raises(AuthenticationError, match="invalid client token"):
        client_tokens.verify(token, "another secret", now=1_000)
    for broken in ("tct_", "tct_.", "tct_!!!.abc", token[:-2] + "!!", "tct_e30.e30"):
        with pytest.raises(AuthenticationError):
            client_tokens.verify(broken, "secret", now=1_000)
