"""POST /credits/batch: many adds and deducts in one request, each all-or-nothing alone."""

from typing import Any

import httpx

from engine.settings import Settings
from tests.conftest import redis_of


def batch(client: httpx.Client, *operations: dict[str, Any]) -> httpx.Response:
    return client.post("/credits/batch", json={"operations": list(operations)})


def test_operations_apply_in_order_and_fail_alone(client: httpx.Client) -> None:
    response = batch(
        client,
        {"type": "add", "user_id": "a", "amount": 10},
        {"type": "deduct", "user_id": "a", "amount": 4},
        {"type": "deduct", "user_id": "a", "amount": 7},  # only 6 left: refused alone
        {"type": "deduct", "user_id": "a", "amount": 6},
        {"type": "add", "user_id": "b", "amount": 3, "description": "bonus"},
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["success"] for r in results] == [True, True, False, True, True]
    assert [r.get("balance_after") for r in results] == [10, 6, None, 0, 3]
    assert results[2] == {
        "success": False, "status": 402, "error": "Insufficient credits", "balance": 6
    }  # fmt: skip
    assert results[1]["amount"] == -4 and results[1]["balance_before"] == 10
    assert client.get("/credits/balance", params={"user_id": "a"}).json()["balance"] == 0
    history = client.get("/credits/history", params={"user_id": "a"}).json()["entries"]
    assert [e["amount"] for e in history] == [-6, -4, 10]


def test_idempotency_keys_work_per_operation(client: httpx.Client) -> None:
    ops = [
        {"type": "add", "user_id": "u", "amount": 100, "idempotency_key": "grant-1"},
        {"type": "deduct", "user_id": "u", "amount": 30, "idempotency_key": "use-1"},
    ]
    first = batch(client, *ops).json()["results"]
    again = batch(client, *ops).json()["results"]
    assert [r["ledger_id"] for r in first] == [r["ledger_id"] for r in again]
    assert [r["replayed"] for r in again] == [True, True]
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 70
    changed = {"type": "deduct", "user_id": "u", "amount": 31, "idempotency_key": "use-1"}
    assert batch(client, changed).json()["results"][0]["status"] == 422
    with_header = client.post(
        "/credits/batch", json={"operations": ops}, headers={"Idempotency-Key": "whole"}
    )
    assert with_header.status_code == 400 and "idempotency_key" in with_header.json()["error"]


def test_a_malformed_batch_is_refused_whole_naming_the_operation(client: httpx.Client) -> None:
    response = batch(
        client,
        {"type": "add", "user_id": "u", "amount": 5},
        {"type": "deduct", "user_id": "u", "amount": 1.5},
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("operations[1].amount must be an integer")
    assert batch(client, {"type": "refund", "user_id": "u", "amount": 1}).status_code == 400
    assert client.post("/credits/batch", json={"operations": []}).status_code == 400
    too_many = [{"type": "add", "user_id": "u", "amount": 1}] * 1001
    assert client.post("/credits/batch", json={"operations": too_many}).status_code == 400
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 0


def test_a_thousand_operations_over_many_new_users(
    client: httpx.Client, settings: Settings
) -> None:
    redis_of(settings).function_flush()  # "Function not found" is handled too
    redis_of(settings).script_flush()
    ops = [{"type": "add", "user_id": f"user-{i % 250}", "amount": 1} for i in range(1000)]
    results = batch(client, *ops).json()["results"]
    assert all(r["success"] for r in results)
    assert client.get("/credits/balance", params={"user_id": "user-7"}).json()["balance"] == 4
