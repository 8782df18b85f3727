"""The credits HTTP API against a real `tally serve`, Redis and PostgreSQL."""

from typing import Any

import httpx
import pytest

from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from engine.models import MAX_AMOUNT
from tests.conftest import ApiServer, AppUnderTest, fire


def add(client: httpx.Client, user: str, amount: int, **extra: Any) -> httpx.Response:
    return client.post("/credits/add", json={"user_id": user, "amount": amount, **extra})


def deduct(client: httpx.Client, user: str, amount: int, **extra: Any) -> httpx.Response:
    return client.post("/credits/deduct", json={"user_id": user, "amount": amount, **extra})


def test_add_creates_the_user_and_answers_the_documented_fields(client: httpx.Client) -> None:
    response = add(client, "user_001", 100, description="Welcome credits")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "ledger_id", "user_id", "amount", "balance_after"}
    assert body["success"] is True
    assert (body["user_id"], body["amount"], body["balance_after"]) == ("user_001", 100, 100)
    assert len(body["ledger_id"]) == 36


def test_deduct_answers_balance_before_and_after(client: httpx.Client) -> None:
    add(client, "u", 100)
    response = deduct(client, "u", 10, description="AI generation")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "ledger_id", "balance_before", "balance_after"}
    assert (body["success"], body["balance_before"], body["balance_after"]) == (True, 100, 90)


def test_insufficient_credits_is_402_with_balance_and_writes_nothing(client: httpx.Client) -> None:
    add(client, "u", 5)
    response = deduct(client, "u", 6)
    assert response.status_code == 402
    assert response.json() == {"success": False, "error": "Insufficient credits", "balance": 5}
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 5


def test_deduct_from_unknown_user_is_402_with_zero(client: httpx.Client) -> None:
    response = deduct(client, "never-seen", 1)
    assert response.status_code == 402
    assert response.json()["balance"] == 0


def test_balance(client: httpx.Client) -> None:
    add(client, "u", 42)
    body = client.get("/credits/balance", params={"user_id": "u"}).json()
    assert set(body) == {"user_id", "balance", "updated_at", "available", "held", "grants"}
    assert (body["user_id"], body["balance"], body["available"]) == ("u", 42, 42)
    assert (body["held"], body["grants"]) == (0, [])
    assert body["updated_at"].endswith("Z") and body["updated_at"].startswith("20")


def test_balance_of_unknown_user_is_zero_with_null_updated_at(client: httpx.Client) -> None:
    body = client.get("/credits/balance", params={"user_id": "ghost"}).json()
    assert body == {
        "user_id": "ghost", "balance": 0, "updated_at": None, "available": 0, "held": 0,
        "grants": [],
    }  # fmt: skip


def test_big_amounts_stay_exact(client: httpx.Client) -> None:
    assert add(client, "u", MAX_AMOUNT).json()["balance_after"] == MAX_AMOUNT
    over = add(client, "u", 1)
    assert over.status_code == 400 and "above 9007199254740991" in over.json()["error"]
    assert deduct(client, "u", MAX_AMOUNT - 1).json()["balance_after"] == 1


def other_app_client(api_server: ApiServer, repository: AppRepository) -> httpx.Client:
    _, new_key = Apps(repository).create("other")
    headers = {"Authorization": f"Bearer {new_key.api_key}"}
    return httpx.Client(base_url=api_server.url, headers=headers, timeout=30)


def test_tenants_are_isolated(
    client: httpx.Client, api_server: ApiServer, repository: AppRepository
) -> None:
    add(client, "shared-name", 50)
    with other_app_client(api_server, repository) as other:
        assert (
            other.get("/credits/balance", params={"user_id": "shared-name"}).json()["balance"] == 0
        )
        assert deduct(other, "shared-name", 1).status_code == 402
    assert client.get("/credits/balance", params={"user_id": "shared-name"}).json()["balance"] == 50


# --- errors -------------------------------------------------------------------------------------

BAD_BODIES = [
    (b"", "body is not valid JSON: Expecting value at line 1, column 1"),
    (b"not json", "body is not valid JSON: Expecting value at line 1, column 1"),
    (
        b'{"user_id": "u",\n "amount": 1,}',
        "body is not valid JSON: Expecting property name enclosed in double quotes"
        " at line 2, column 14",
    ),
    (b'{"user_id": "u", "amount": 1, "amount": 2}', "body has the key 'amount' more than once"),
    (b'{"user_id": "\xff", "amount": 1}', "body is not valid UTF-8 (byte 13)"),
    (b'{"user_id": "\\ud800", "amount": 1}', "lone surrogate"),
    (
        b'{"user_id": "u", "amount": 1, "metadata": ' + b'{"a":' * 40 + b"1" + b"}" * 41,
        "body is nested deeper than 32 levels",
    ),
    (
        b'{"user_id": "u", "amount": 1, "metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        "body is nested deeper than 32 levels",
    ),
    (b'{"user_id": "   ", "amount": 1}', "user_id must not start or end with whitespace"),
    (b'{"user_id": "user_001 ", "amount": 1}', "user_id must not start or end with whitespace"),
    (b'{"user_id": "a\\nb", "amount": 1}', "user_id must be printable text"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'"text"', "request body must be a JSON object"),
    (b"null", "request body must be a JSON object"),
    (b'{"amount": 1}', "user_id is required"),
    (b'{"user_id": "", "amount": 1}', "user_id"),
    (b'{"user_id": 7, "amount": 1}', "user_id"),
    (b'{"user_id": null, "amount": 1}', "user_id"),
    (b'{"user_id": "' + b"x" * 257 + b'", "amount": 1}', "user_id"),
    (b'{"user_id": "a\\u0000b", "amount": 1}', "user_id must not contain NUL"),
    (b'{"user_id": "u"}', "amount is required"),
    (b'{"user_id": "u", "amount": 0}', "amount"),
    (b'{"user_id": "u", "amount": -5}', "amount"),
    (b'{"user_id": "u", "amount": 1.5}', "amount"),
    (b'{"user_id": "u", "amount": 1.0}', "amount"),
    (b'{"user_id": "u", "amount": 1e300}', "amount"),
    (b'{"user_id": "u", "amount": 9007199254740992}', "amount"),
    (b'{"user_id": "u", "amount": 100000000000000000000000}', "amount"),
    (b'{"user_id": "u", "amount": true}', "amount"),
    (b'{"user_id": "u", "amount": "10"}', "amount"),
    (b'{"user_id": "u", "amount": null}', "amount"),
    (b'{"user_id": "u", "amount": 1, "metadata": [1]}', "metadata"),
    (b'{"user_id": "u", "amount": 1, "metadata": "x"}', "metadata"),
    (b'{"user_id": "u", "amount": 1, "metadata": {"a": NaN}}', "NaN is not a JSON number"),
    (b'{"user_id": "u", "amount": 1, "description": 5}', "description"),
    (b'{"user_id": "u", "amount": 1, "reference_id": {}}', "reference_id"),
    (b'{"user_id": "u", "amount": 1, "colour": "red"}', "unknown field colour"),
]


@pytest.mark.parametrize("path", ["/credits/add", "/credits/deduct"])
@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
def test_bad_bodies_are_400_naming_the_problem(
    client: httpx.Client, path: str, body: bytes, message: str
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["success"] is False
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "user_id is required"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u", "limit": "5"}, "unknown query parameter limit"),
        ([("user_id", "a"), ("user_id", "b")], "more than once"),
    ],
)
def test_bad_balance_queries_are_400(client: httpx.Client, params: Any, message: str) -> None:
    response = client.get("/credits/balance", params=params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_body_over_64_kib_is_413(client: httpx.Client) -> None:
    big = {"user_id": "u", "amount": 1, "description": "x", "metadata": {"blob": "y" * 70_000}}
    response = client.post("/credits/add", json=big)
    assert response.status_code == 413
    assert response.json()["success"] is False

    def chunks() -> Any:
        yield b'{"user_id": "u", "amount": 1, "metadata": {"blob": "'
        for _ in range(70):
            yield b"z" * 1024
        yield b'"}}'

    chunked = client.post("/credits/add", content=chunks())
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not_a_tally_key",
        "Bearer tally_short",
        "Bearer tally_" + "A" * 43,
    ],
)
def test_missing_malformed_or_unknown_keys_are_401(
    api_server: ApiServer, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [
        ("POST", "/credits/add"),
        ("POST", "/credits/deduct"),
        ("GET", "/credits/balance?user_id=u"),
    ]:
        response = httpx.request(
            method, api_server.url + path, headers=headers, json={"user_id": "u", "amount": 1}
        )
        assert response.status_code == 401
        assert response.json()["success"] is False
        assert (
            "key" in response.json()["error"].lower()
            or "authorization" in response.json()["error"].lower()
        )


def test_unknown_path_and_method_are_json(client: httpx.Client) -> None:
    assert client.get("/nope").json() == {"success": False, "error": "Not Found"}
    response = client.get("/credits/deduct")
    assert response.status_code == 405 and response.json()["success"] is False


# --- idempotency ---------------------------------------------------------------------------------


def test_repeated_key_returns_first_response_and_applies_once(client: httpx.Client) -> None:
    add(client, "u", 100)
    headers = {"Idempotency-Key": "order_abc123"}
    first = client.post("/credits/deduct", json={"user_id": "u", "amount": 10}, headers=headers)
    again = client.post("/credits/deduct", json={"user_id": "u", "amount": 10}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 90


def test_repeated_add_key_applies_once(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "order_abc123_credits"}
    for _ in range(3):
        response = client.post(
            "/credits/add", json={"user_id": "u", "amount": 500}, headers=headers
        )
        assert response.json()["balance_after"] == 500


@pytest.mark.parametrize(
    "changed",
    [
        ("/credits/deduct", {"user_id": "u", "amount": 11}),
        ("/credits/deduct", {"user_id": "u", "amount": 10, "description": "other"}),
        ("/credits/deduct", {"user_id": "u", "amount": 10, "metadata": {"a": 1}}),
        ("/credits/add", {"user_id": "u", "amount": 10}),
    ],
)
def test_same_key_with_a_different_request_is_422(
    client: httpx.Client, changed: tuple[str, dict[str, Any]]
) -> None:
    add(client, "u", 100)
    headers = {"Idempotency-Key": "k-1"}
    assert client.post("/credits/deduct", json={"user_id": "u", "amount": 10}, headers=headers)
    path, body = changed
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 90


def test_402_is_not_remembered_so_the_key_works_after_a_top_up(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": "report-42"}
    refused = client.post("/credits/deduct", json={"user_id": "u", "amount": 10}, headers=headers)
    assert refused.status_code == 402
    add(client, "u", 10)
    accepted = client.post("/credits/deduct", json={"user_id": "u", "amount": 10}, headers=headers)
    assert accepted.status_code == 200 and accepted.json()["balance_after"] == 0


@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\there"])
def test_malformed_idempotency_key_is_400(client: httpx.Client, key: str) -> None:
    response = client.post(
        "/credits/add",
        json={"user_id": "u", "amount": 1},
        headers={"Idempotency-Key": key.encode("utf-8")},  # type: ignore[dict-item]
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]


def test_idempotency_keys_are_scoped_per_app(
    client: httpx.Client, api_server: ApiServer, repository: AppRepository
) -> None:
    headers = {"Idempotency-Key": "same-key"}
    with other_app_client(api_server, repository) as other:
        a = client.post("/credits/add", json={"user_id": "u", "amount": 5}, headers=headers)
        b = other.post("/credits/add", json={"user_id": "u", "amount": 5}, headers=headers)
    assert a.json()["ledger_id"] != b.json()["ledger_id"]


def test_forty_concurrent_requests_with_one_key_apply_once(
    api_server: ApiServer, test_app: AppUnderTest, client: httpx.Client
) -> None:
    add(client, "u", 1000)
    request = ("/credits/deduct", {"user_id": "u", "amount": 7})
    responses = fire(
        api_server.url, test_app.api_key, [request] * 40, **{"Idempotency-Key": "burst"}
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["ledger_id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 39
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 993


# --- races ---------------------------------------------------------------------------------------


def test_500_concurrent_deducts_on_300_credits(
    api_server: ApiServer, test_app: AppUnderTest, client: httpx.Client
) -> None:
    add(client, "racer", 300)
    request = ("/credits/deduct", {"user_id": "racer", "amount": 1})
    responses = fire(api_server.url, test_app.api_key, [request] * 500)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 300
    assert codes.count(402) == 200
    afters = sorted(r.json()["balance_after"] for r in responses if r.status_code == 200)
    assert afters == list(range(300))  # every balance from 299 down to 0 handed out exactly once
    assert client.get("/credits/balance", params={"user_id": "racer"}).json()["balance"] == 0


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_a_body_that_is_not_declared_json_is_415(
    client: httpx.Client, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = b'{"user_id": "u", "amount": 1}'
    response = client.post("/credits/add", content=body, headers=headers)
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["error"]
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 0
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert client.post("/credits/add", content=body, headers=charset).status_code == 200


def test_a_query_parameter_on_a_write_is_400_and_applies_nothing(client: httpx.Client) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 10})
    dry = client.post("/credits/deduct?dry_run=1", json={"user_id": "u", "amount": 1})
    assert dry.status_code == 400
    assert "dry_run" in dry.json()["error"]
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 10


def test_two_authorization_headers_are_401_and_apply_nothing(
    api_server: ApiServer, test_app: AppUnderTest, repository: AppRepository
) -> None:
    _, other = Apps(repository).create("other")
    headers = [
        ("Authorization", f"Bearer {test_app.api_key}"),
        ("Authorization", f"Bearer {other.api_key}"),
        ("Content-Type", "application/json"),
    ]
    body = b'{"user_id": "u", "amount": 5}'
    response = httpx.post(api_server.url + "/credits/add", content=body, headers=headers)
    assert response.status_code == 401
    for key in (test_app.api_key, other.api_key):
        balance = httpx.get(
            api_server.url + "/credits/balance",
            params={"user_id": "u"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert balance.json()["balance"] == 0


def test_user_ids_are_compared_byte_for_byte(client: httpx.Client) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # the same to the eye, not to Tally
    client.post("/credits/add", json={"user_id": composed, "amount": 1})
    client.post("/credits/add", json={"user_id": decomposed, "amount": 2})
    for user, expected in ((composed, 1), (decomposed, 2)):
        balance = client.get("/credits/balance", params={"user_id": user}).json()["balance"]
        assert balance == expected
    spaced = client.get("/credits/balance", params={"user_id": " cafe"})
    assert spaced.status_code == 400 and "whitespace" in spaced.json()["error"]
