"""The Python SDK (sdk/python, import package tally_credits) against the real stack: the
session's API for the calls, a private stack whose Redis goes down for the retry path, and a
wheel installed in a fresh virtualenv for the packaging."""

import asyncio
import base64
import contextlib
import hmac
import importlib.metadata
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import venv
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks.webhooks import Webhook
from tally_credits import (
    AddResult,
    APIError,
    AsyncHoldHandle,
    AsyncTally,
    AuthenticationError,
    BatchOperation,
    CaptureResult,
    DeductResult,
    Grant,
    HoldHandle,
    IdempotencyConflict,
    InsufficientBalance,
    ReleaseResult,
    RetryPolicy,
    ServiceUnavailable,
    Tally,
    TallyError,
    Transaction,
    WebhookEvent,
    WebhookVerificationError,
    verify_webhook,
)
from tally_credits.retry import parse_retry_after

from tests.conftest import ApiServer, AppUnderTest, PrivateStack, readme_example
from tests.servers import free_port

SDK = Path(__file__).resolve().parent.parent / "sdk" / "python"


class Recorder:
    """Every attempt the SDK makes (request hook) and every answer it gets (response hook)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []

    def client(self) -> httpx.Client:
        hooks: dict[str, list[Any]] = {
            "request": [self.requests.append],
            "response": [self.responses.append],
        }
        return httpx.Client(event_hooks=hooks)

    def async_client(self) -> httpx.AsyncClient:
        async def on_request(request: httpx.Request) -> None:
            self.requests.append(request)

        async def on_response(response: httpx.Response) -> None:
            self.responses.append(response)

        hooks: dict[str, list[Any]] = {"request": [on_request], "response": [on_response]}
        return httpx.AsyncClient(event_hooks=hooks)

    def posts(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path == path]

    def keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for r in self.requests]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def tally(api_server: ApiServer, test_app: AppUnderTest, recorder: Recorder) -> Iterator[Tally]:
    with recorder.client() as http, Tally(test_app.api_key, api_server.url, http_client=http) as t:
        yield t


def test_add_deduct_balance_and_history(tally: Tally) -> None:
    added = tally.credits.add(
        "alice", 100, description="Welcome credits", reference_id="pay_1", metadata={"plan": "pro"}
    )
    assert isinstance(added, AddResult)
    assert (added.user_id, added.amount, added.balance_after) == ("alice", 100, 100)
    assert not added.replayed and added.request_id
    spent = tally.credits.deduct("alice", 30, description="AI generation")
    assert isinstance(spent, DeductResult) and spent.success
    assert (spent.balance_before, spent.balance_after, spent.error) == (100, 70, None)

    balance = tally.credits.balance("alice")
    assert (balance.user_id, balance.balance) == ("alice", 70) and balance.updated_at
    nobody = tally.credits.balance("nobody")
    assert (nobody.balance, nobody.updated_at) == (0, None)

    page = tally.credits.history("alice")
    assert (page.user_id, page.limit, page.offset, page.has_more) == ("alice", 50, 0, False)
    newest, oldest = page.entries
    assert (newest.ledger_id, oldest.ledger_id) == (spent.ledger_id, added.ledger_id)
    assert (newest.kind, newest.amount, newest.amount_delta, newest.balance_after) == (
        "deduct", -30, -30, 70,
    )  # fmt: skip
    assert (newest.description, newest.reason) == ("AI generation", "AI generation")
    assert (oldest.reference_id, oldest.metadata) == ("pay_1", {"plan": "pro"})
    assert oldest.created_at and oldest.created_at.endswith("Z")
    second = tally.credits.history("alice", limit=1, offset=1)
    assert [e.ledger_id for e in second.entries] == [added.ledger_id] and not second.has_more
    assert tally.credits.history("alice", limit=1).has_more


def test_deduct_without_enough_credits_answers_success_false_and_writes_nothing(
    tally: Tally,
) -> None:
    tally.credits.add("bob", 5)
    refused = tally.credits.deduct("bob", 10, description="too much")
    assert not refused.success
    assert (refused.error, refused.balance, refused.ledger_id) == ("Insufficient credits", 5, None)
    assert refused.request_id
    assert tally.credits.balance("bob").balance == 5
    assert len(tally.credits.history("bob").entries) == 1


def test_refund_once_then_409_and_unknown_entry_404(tally: Tally) -> None:
    tally.credits.add("carol", 100)
    spent = tally.credits.deduct("carol", 40)
    assert spent.ledger_id
    refunded = tally.credits.refund(spent.ledger_id, description="generation failed")
    assert (refunded.refunded_ledger_id, refunded.user_id) == (spent.ledger_id, "carol")
    assert (refunded.amount, refunded.balance_after) == (40, 100)
    with pytest.raises(APIError) as again:
        tally.credits.refund(spent.ledger_id)
    assert again.value.status == 409 and again.value.request_id
    assert again.value.body["refund_ledger_id"] == refunded.ledger_id
    with pytest.raises(APIError) as unknown:
        tally.credits.refund(str(uuid.uuid4()))
    assert unknown.value.status == 404
    assert [e.kind for e in tally.credits.history("carol").entries] == ["refund", "deduct", "add"]


def test_batch_gives_each_operation_a_key_and_sends_no_header(
    tally: Tally, recorder: Recorder
) -> None:
    as_dict = {"type": "deduct", "user_id": "dan", "amount": 20, "description": "tokens"}
    operations: list[BatchOperation | dict[str, Any]] = [
        BatchOperation("add", "dan", 50),
        as_dict,
        BatchOperation("deduct", "erin", 1),
        {"type": "add", "user_id": "erin", "amount": 7, "idempotency_key": "grant-7"},
    ]
    result = tally.credits.batch(operations)
    first, second, refused, granted = result.results
    assert (first.success, first.amount, first.balance_after) == (True, 50, 50)
    assert (second.success, second.amount, second.balance_before, second.balance_after) == (
        True, -20, 50, 30,
    )  # fmt: skip
    assert (refused.success, refused.status, refused.error, refused.balance) == (
        False, 402, "Insufficient credits", 0,
    )  # fmt: skip
    assert result.failed == (refused,)
    assert granted.success and granted.idempotency_key == "grant-7"
    keys = [item.idempotency_key for item in result.results]
    for key in keys[:3]:
        assert key and uuid.UUID(key).version == 4
    assert len(set(keys)) == 4
    assert "idempotency_key" not in as_dict  # the caller's dict is left as it was

    (sent,) = recorder.posts("/credits/batch")
    assert "Idempotency-Key" not in sent.headers
    assert [op["idempotency_key"] for op in json.loads(sent.content)["operations"]] == keys

    # The same operations with the keys the result gave: nothing is applied twice.
    again = tally.credits.batch(
        [{"type": "add", "user_id": "dan", "amount": 50, "idempotency_key": first.idempotency_key}]
    )
    assert again.results[0].replayed and again.results[0].ledger_id == first.ledger_id
    assert tally.credits.balance("dan").balance == 30
    assert tally.credits.balance("erin").balance == 7


def test_reauth_names(tally: Tally) -> None:
    assert tally.deposit("fay", amount=100, request_uuid=str(uuid.uuid4()), note="Welcome") == 100
    assert tally.charge("fay", amount=30, note="API call: generate-report") == 70
    with pytest.raises(InsufficientBalance) as short:
        tally.charge("fay", amount=500, note="too much")
    assert (short.value.status, short.value.error) == (402, "Insufficient credits")
    assert short.value.balance == 70 and short.value.request_id
    assert tally.get_balance("fay") == 70
    assert tally.get_balance("nobody") == 0

    transactions = tally.get_transactions("fay")
    assert all(isinstance(t, Transaction) for t in transactions)
    history = tally.credits.history("fay").entries
    assert [t.id for t in transactions] == [e.ledger_id for e in history]
    assert [(t.amount_delta, t.reason, t.balance_after) for t in transactions] == [
        (-30, "API call: generate-report", 70),
        (100, "Welcome", 100),
    ]
    assert all(t.created_at and t.created_at.endswith("Z") for t in transactions)
    older = tally.get_transactions("fay", limit=1, offset=1)
    assert [t.id for t in older] == [history[1].ledger_id]


def test_same_idempotency_key_applies_once_and_replays(tally: Tally) -> None:
    first = tally.credits.add("gus", 100, idempotency_key="order-1")
    again = tally.credits.add("gus", 100, idempotency_key="order-1")
    assert again.ledger_id == first.ledger_id
    assert (first.replayed, again.replayed) == (False, True)
    spent = tally.credits.deduct("gus", 10, idempotency_key="call-1")
    assert tally.credits.deduct("gus", 10, idempotency_key="call-1") == DeductResult(
        success=True,
        ledger_id=spent.ledger_id,
        balance_before=100,
        balance_after=90,
        replayed=True,
    )
    # reauth's requestUuid is the same key.
    assert tally.charge("gus", amount=5, request_uuid="req-1") == 85
    assert tally.charge("gus", amount=5, request_uuid="req-1") == 85
    assert tally.get_balance("gus") == 85
    assert len(tally.credits.history("gus").entries) == 3
    with pytest.raises(IdempotencyConflict) as conflict:
        tally.credits.add("gus", 999, idempotency_key="order-1")
    assert conflict.value.status == 422 and conflict.value.request_id


def test_every_write_carries_an_idempotency_key(tally: Tally, recorder: Recorder) -> None:
    added = tally.credits.add("hal", 10)
    tally.credits.deduct("hal", 100)  # refused: 402
    spent = tally.credits.deduct("hal", 1)
    assert spent.ledger_id
    tally.credits.refund(spent.ledger_id)
    tally.deposit("hal", amount=1)
    tally.charge("hal", amount=1)
    tally.credits.balance("hal")
    posts = [r for r in recorder.requests if r.method == "POST"]
    assert len(posts) == 6
    keys = [r.headers["Idempotency-Key"] for r in posts]
    assert all(uuid.UUID(key).version == 4 for key in keys) and len(set(keys)) == 6
    assert all("Idempotency-Key" not in r.headers for r in recorder.requests if r.method == "GET")
    assert added.request_id == recorder.responses[0].headers["X-Request-Id"]


def test_errors_carry_the_request_id_and_nothing_shows_the_key(
    api_server: ApiServer, test_app: AppUnderTest, recorder: Recorder, caplog: Any
) -> None:
    key = test_app.api_key
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    shown: list[str] = []
    with recorder.client() as http:
        with Tally(wrong, api_server.url, http_client=http) as bad:
            with pytest.raises(AuthenticationError) as denied:
                bad.credits.balance("ian")
            shown += [repr(bad), str(bad)]
        assert denied.value.status == 401
        assert denied.value.request_id == recorder.responses[-1].headers["X-Request-Id"]

        with Tally(key, api_server.url, http_client=http) as tally:
            with pytest.raises(APIError) as invalid:
                tally.credits.deduct("ian", 0)
            assert invalid.value.status == 400 and "amount" in invalid.value.error
            assert invalid.value.request_id == recorder.responses[-1].headers["X-Request-Id"]
            refused = tally.credits.deduct("ian", 1)
            assert refused.request_id == recorder.responses[-1].headers["X-Request-Id"]
            shown += [repr(tally), str(tally), repr(tally.credits)]
            assert "api_key=<hidden>" in repr(tally) and api_server.url in repr(tally)

    for error in (denied.value, invalid.value):
        assert isinstance(error, TallyError)
        assert error.request_id and error.request_id in str(error)
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.status, copy.error, copy.request_id) == (
            error.status, error.error, error.request_id,
        )  # fmt: skip
        shown += [repr(error), str(error), repr(error.args), repr(error.body), repr(vars(error))]
    shown.append(caplog.text)
    for text in shown:
        assert key not in text and wrong not in text and key[6:] not in text


def test_async_client_core_calls(api_server: ApiServer, test_app: AppUnderTest) -> None:
    recorder = Recorder()

    async def run() -> None:
        async with (
            recorder.async_client() as http,
            AsyncTally(test_app.api_key, api_server.url, http_client=http) as tally,
        ):
            added = await tally.credits.add("jo", 100, description="Welcome")
            assert added.balance_after == 100 and added.request_id
            again = await tally.credits.add(
                "jo", 100, description="Welcome", idempotency_key=recorder.keys()[0]
            )
            assert again.replayed and again.ledger_id == added.ledger_id
            spent = await tally.credits.deduct("jo", 30)
            assert spent.success and spent.balance_after == 70 and spent.ledger_id
            refused = await tally.credits.deduct("jo", 1_000)
            assert (refused.success, refused.balance) == (False, 70)
            refunded = await tally.credits.refund(spent.ledger_id)
            assert refunded.balance_after == 100
            batch = await tally.credits.batch(
                [BatchOperation("deduct", "jo", 10), {"type": "add", "user_id": "kim", "amount": 3}]
            )
            assert [item.balance_after for item in batch.results] == [90, 3]
            assert (await tally.credits.balance("jo")).balance == 90
            page = await tally.credits.history("jo")
            assert [e.kind for e in page.entries] == ["deduct", "refund", "deduct", "add"]
            assert await tally.deposit("kim", amount=7, note="gift") == 10
            assert await tally.charge("kim", amount=4, request_uuid="r-1") == 6
            with pytest.raises(InsufficientBalance) as short:
                await tally.charge("kim", amount=100)
            assert short.value.balance == 6 and short.value.request_id
            assert await tally.get_balance("kim") == 6
            transactions = await tally.get_transactions("kim", limit=2)
            assert [(t.amount_delta, t.reason) for t in transactions] == [(-4, None), (7, "gift")]
            assert "api_key=<hidden>" in repr(tally) and test_app.api_key not in repr(tally)

    asyncio.run(run())
    posts = [r for r in recorder.requests if r.method == "POST"]
    assert all("Idempotency-Key" in r.headers for r in posts if r.url.path != "/credits/batch")


def test_hold_capture_part_releases_the_rest(tally: Tally, recorder: Recorder) -> None:
    tally.credits.add("hana", 100)
    with tally.hold(
        "hana", 60, description="AI generation", reference_id="job-1", metadata={"model": "m"}
    ) as h:
        assert isinstance(h, HoldHandle) and h.hold_id.startswith("hold_")
        assert (h.user_id, h.amount, h.balance, h.available) == ("hana", 60, 100, 40)
        assert h.expires_at.endswith("Z") and h.request_id and not h.replayed and not h.settled
        during = tally.credits.balance("hana")
        assert (during.balance, during.available, during.held) == (100, 40, 60)
        (active,) = tally.list_holds("hana").holds
        assert (active.hold_id, active.status, active.amount) == (h.hold_id, "active", 60)
        assert (active.description, active.reference_id, active.metadata) == (
            "AI generation", "job-1", {"model": "m"},
        )  # fmt: skip
        assert (active.settled_by, active.captured) == (None, None)
        # What holds reserve is not there to deduct.
        refused = tally.credits.deduct("hana", 41)
        assert (refused.success, refused.balance, refused.available) == (False, 100, 40)

        captured = h.capture(25, description="2,500 tokens")
    assert isinstance(captured, CaptureResult) and h.settled and h.settlement == captured
    assert (captured.hold_id, captured.user_id, captured.captured, captured.released) == (
        h.hold_id, "hana", 25, 35,
    )  # fmt: skip
    assert (captured.balance_before, captured.balance_after, captured.available) == (100, 75, 75)
    assert captured.ledger_id and captured.request_id and not captured.replayed
    # The block ended settled: no release was sent.
    assert recorder.posts(f"/credits/holds/{h.hold_id}/release") == []

    after = tally.credits.balance("hana")
    assert (after.balance, after.available, after.held) == (75, 75, 0)
    assert tally.credits.list_holds("hana").holds == ()
    settled = tally.get_hold(h.hold_id)
    assert (settled.status, settled.captured, settled.settled_by) == (
        "captured", 25, captured.ledger_id,
    )  # fmt: skip
    assert settled.ledger_id and settled.created_at.endswith("Z")

    # Settled once: a second capture, or a release, is a 409.
    for settle in (
        lambda: h.capture(1),
        lambda: tally.capture_hold(h.hold_id),
        lambda: tally.release_hold(h.hold_id),
    ):
        with pytest.raises(APIError) as again:
            settle()
        assert again.value.status == 409 and again.value.request_id
        assert "captured" in again.value.error
    assert h.settlement == captured
    assert tally.credits.balance("hana").balance == 75

    page = tally.credits.history("hana").entries
    capture = next(e for e in page if e.ledger_id == captured.ledger_id)
    assert (capture.kind, capture.amount, capture.hold_id, capture.held) == (
        "deduct", -25, h.hold_id, -60,
    )  # fmt: skip
    made = next(e for e in page if e.ledger_id == settled.ledger_id)
    assert (made.hold_id, made.held, made.expires_at) == (h.hold_id, 60, h.expires_at)

    # Every hold, capture and release carries an Idempotency-Key.
    writes = [r for r in recorder.requests if r.url.path.startswith("/credits/holds")]
    assert writes and all("Idempotency-Key" in r.headers for r in writes if r.method == "POST")


def test_capture_more_than_held_unknown_hold_and_replayed_capture(tally: Tally) -> None:
    tally.credits.add("ivo", 50)
    h = tally.credits.hold("ivo", 20, ttl_seconds=60)
    with pytest.raises(APIError) as too_much:
        h.capture(21)
    assert too_much.value.status == 400 and not h.settled
    first = h.capture(20, idempotency_key="job-9-capture")
    again = tally.capture_hold(h.hold_id, 20, idempotency_key="job-9-capture")
    assert (again.replayed, again.ledger_id, again.captured) == (True, first.ledger_id, 20)
    assert tally.credits.balance("ivo").balance == 30
    # Capturing everything by default, and a release that gives all back.
    whole = tally.hold("ivo", 10)
    assert whole.capture().captured == 10 and whole.settlement is not None
    kept = tally.hold("ivo", 5)
    released = tally.release_hold(kept.hold_id, description="cancelled")
    assert isinstance(released, ReleaseResult)
    assert (released.hold_id, released.released, released.balance, released.available) == (
        kept.hold_id, 5, 20, 20,
    )  # fmt: skip
    assert tally.get_hold(kept.hold_id).status == "released"

    for unknown in ("hold_nope", "hold_" + "0" * 24 + "_aXZv", "a/b?c"):
        with pytest.raises(APIError) as missing:
            tally.get_hold(unknown)
        assert missing.value.status == 404
        with pytest.raises(APIError) as missing:
            tally.capture_hold(unknown)
        assert missing.value.status == 404

    with pytest.raises(InsufficientBalance) as short:
        tally.hold("ivo", 21)
    assert (short.value.status, short.value.balance, short.value.available) == (402, 20, 20)
    assert tally.list_holds("ivo").holds == ()


def test_a_hold_block_releases_on_exit_and_on_an_exception(
    tally: Tally, recorder: Recorder
) -> None:
    tally.credits.add("jan", 100)

    with (
        pytest.raises(RuntimeError, match="the model failed") as failed,
        tally.hold("jan", 70) as h,
    ):
        assert tally.credits.balance("jan").available == 30
        raise RuntimeError("the model failed")
    assert not getattr(failed.value, "__notes__", None)
    assert isinstance(h.settlement, ReleaseResult) and h.settlement.released == 70
    assert tally.get_hold(h.hold_id).status == "released"
    assert tally.credits.balance("jan").available == 100

    # Left without a capture: released, nothing spent.
    with tally.hold("jan", 40) as quiet:
        pass
    assert tally.get_hold(quiet.hold_id).status == "released"
    # Released inside the block: once.
    with tally.hold("jan", 40) as dropped:
        dropped.release()
    assert len(recorder.posts(f"/credits/holds/{dropped.hold_id}/release")) == 1
    # A capture that fails inside the block: the exception goes on, the hold is released.
    with pytest.raises(APIError), tally.hold("jan", 10) as greedy:
        greedy.capture(11)
    assert tally.get_hold(greedy.hold_id).status == "released"
    # Settled behind the handle's back: the release on exit finds nothing to do.
    with tally.hold("jan", 10) as elsewhere:
        tally.capture_hold(elsewhere.hold_id, 4)
    assert tally.get_hold(elsewhere.hold_id).status == "captured"
    assert tally.credits.balance("jan").balance == 96

    # Expired before the block ended: the release's 409 does not replace the exception, nor
    # raise on a plain exit.
    with pytest.raises(KeyError) as lost, tally.hold("jan", 50, ttl_seconds=1) as expiring:
        time.sleep(1.3)
        raise KeyError("late")
    assert not getattr(lost.value, "__notes__", None)
    assert tally.get_hold(expiring.hold_id).status == "expired"
    with tally.hold("jan", 50, ttl_seconds=1) as slow:
        time.sleep(1.3)
    assert slow.settlement is None and tally.get_hold(slow.hold_id).status == "expired"
    with pytest.raises(APIError) as late:
        tally.capture_hold(slow.hold_id)
    assert late.value.status == 409 and "expired" in late.value.error
    final = tally.credits.balance("jan")
    assert (final.balance, final.available, final.held) == (96, 96, 0)


def test_a_release_that_fails_after_an_exception_is_noted_not_raised() -> None:
    """No answer to the release: the block's exception goes on, with a note; a plain exit
    raises the release's failure (the hold may still be active until it expires)."""
    created = {
        "success": True, "hold_id": "hold_x", "user_id": "u", "amount": 5,
        "expires_at": "2030-01-01T00:00:00.000Z", "balance": 5, "available": 0,
    }  # fmt: skip

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/credits/holds":
            return httpx.Response(200, json=created)
        return httpx.Response(503, json={"success": False, "error": "Redis is unavailable"})

    with (
        httpx.Client(transport=httpx.MockTransport(answer)) as http,
        Tally("tally_" + "k" * 43, "http://tally", max_retries=0, http_client=http) as tally,
    ):
        with pytest.raises(ValueError, match="boom") as raised, tally.hold("u", 5):
            raise ValueError("boom")
        (note,) = raised.value.__notes__
        assert "hold_x" in note and "Redis is unavailable" in note
        with pytest.raises(ServiceUnavailable), tally.hold("u", 5):
            pass


def test_grants_expire_and_the_balance_shows_them(tally: Tally) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=3)
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    trial = tally.credits.add("kai", 30, description="Trial credits", expires_at=soon)
    assert trial.grant_id == trial.ledger_id and trial.expires_at
    # Tally keeps milliseconds.
    assert abs(datetime.fromisoformat(trial.expires_at) - soon) < timedelta(milliseconds=2)
    monthly = tally.credits.add("kai", 20, expires_at=later)
    assert monthly.grant_id and monthly.expires_at and monthly.expires_at.endswith("Z")
    paid = tally.credits.add("kai", 100)
    assert (paid.grant_id, paid.expires_at) == (None, None)

    spent = tally.credits.deduct("kai", 10)  # from the grant that expires first
    assert spent.ledger_id and spent.balance_after == 140
    balance = tally.credits.balance("kai")
    assert (balance.balance, balance.available, balance.held) == (140, 140, 0)
    assert balance.grants == (
        Grant(trial.ledger_id, 20, trial.expires_at),
        Grant(monthly.ledger_id, 20, monthly.expires_at),
    )
    entries = {e.ledger_id: e for e in tally.credits.history("kai").entries}
    assert entries[trial.ledger_id].expires_at == trial.expires_at
    assert entries[paid.ledger_id].grants is None
    taken = entries[spent.ledger_id].grants
    assert taken is not None
    assert [(g.grant_id, g.amount) for g in taken] == [(trial.ledger_id, -10)]

    # A hold reserves grant credits too; what is left of the trial then expires.
    with tally.hold("kai", 15) as h:
        assert tally.credits.balance("kai").grants[0].remaining == 5
        h.capture(15)
    deadline = time.monotonic() + 10
    while tally.credits.balance("kai").grants[0].grant_id == trial.ledger_id:
        assert time.monotonic() < deadline, "the trial grant did not expire"
        time.sleep(0.2)
    expired = tally.credits.balance("kai")
    assert (expired.balance, expired.available) == (120, 120)
    assert [g.grant_id for g in expired.grants] == [monthly.ledger_id]

    # Batch adds take expires_at as well, as a datetime or a string.
    batch = tally.credits.batch(
        [
            BatchOperation("add", "lea", 5, expires_at=datetime.now(UTC) + timedelta(days=1)),
            {"type": "add", "user_id": "lea", "amount": 6, "expires_at": later},
            {"type": "add", "user_id": "lea", "amount": 7, "expires_at": soon + timedelta(1)},
        ]
    )
    assert [item.success for item in batch.results] == [True, True, True]
    assert sorted(g.remaining for g in tally.credits.balance("lea").grants) == [5, 6, 7]

    with pytest.raises(ValueError, match="time zone"):
        tally.credits.add("kai", 1, expires_at=datetime(2030, 1, 1))
    for wrong in ("2020-01-01T00:00:00Z", "2030-01-01T00:00:00", "tomorrow"):
        with pytest.raises(APIError) as refused:
            tally.credits.add("kai", 1, expires_at=wrong)
        assert refused.value.status == 400 and "expires_at" in refused.value.error


def test_async_holds(api_server: ApiServer, test_app: AppUnderTest) -> None:
    recorder = Recorder()

    async def run() -> None:
        async with (
            recorder.async_client() as http,
            AsyncTally(test_app.api_key, api_server.url, http_client=http) as tally,
        ):
            await tally.credits.add("max", 100, expires_at=datetime.now(UTC) + timedelta(days=1))
            async with tally.hold("max", 80, description="AI generation") as h:
                assert isinstance(h, AsyncHoldHandle)
                assert (h.amount, h.available) == (80, 20)
                assert [x.hold_id for x in (await tally.list_holds("max")).holds] == [h.hold_id]
                captured = await h.capture(30)
            assert (captured.captured, captured.released, captured.balance_after) == (30, 50, 70)
            with pytest.raises(APIError) as again:
                await h.capture(1)
            assert again.value.status == 409

            with pytest.raises(ZeroDivisionError):
                async with tally.credits.hold("max", 70) as failing:
                    _ = 1 / 0
            assert (await tally.get_hold(failing.hold_id)).status == "released"

            plain = await tally.hold("max", 5, ttl_seconds=30)
            assert isinstance(plain, AsyncHoldHandle) and not plain.settled
            released = await plain.release()
            assert plain.settlement == released and released.released == 5
            assert (await tally.get_hold(plain.hold_id)).status == "released"
            async with plain:  # settled already: nothing more is sent
                pass
            with pytest.raises(APIError) as twice:
                await tally.release_hold(plain.hold_id)
            assert twice.value.status == 409
            with pytest.raises(InsufficientBalance):
                async with tally.hold("max", 71):
                    pass
            balance = await tally.credits.balance("max")
            assert (balance.balance, balance.available, balance.held) == (70, 70, 0)
            assert [g.remaining for g in balance.grants] == [70]

    asyncio.run(run())
    releases = [r for r in recorder.requests if r.url.path.endswith("/release")]
    assert len(releases) == 3
    creates = recorder.posts("/credits/holds")
    assert len(creates) == 4 and len({r.headers["Idempotency-Key"] for r in creates}) == 4


@contextlib.contextmanager
def _unanswering_server() -> Iterator[int]:
    """A port that accepts connections and never answers: every read times out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


def test_no_answer_is_retried_with_the_same_key_then_raised(caplog: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    recorder = Recorder()
    started = time.monotonic()
    with (
        recorder.client() as http,
        Tally("tally_secret_key", closed, max_retries=3, backoff=0.01, http_client=http) as t,
    ):
        with pytest.raises(ServiceUnavailable) as down:
            t.credits.deduct("u", 1)
        assert (down.value.status, down.value.request_id) == (None, None)
        assert "ConnectError" in str(down.value)
        assert isinstance(down.value.__cause__, httpx.ConnectError)
        keys = recorder.keys()
        assert len(keys) == 4 and len(set(keys)) == 1 and keys[0]

        # A batch: no header, and the same body (the same per-operation keys) every attempt.
        recorder.requests.clear()
        with pytest.raises(ServiceUnavailable):
            t.credits.batch([{"type": "add", "user_id": "u", "amount": 1}])
        assert len(recorder.requests) == 4
        assert len({r.content for r in recorder.requests}) == 1
        assert "Idempotency-Key" not in recorder.requests[0].headers
    assert time.monotonic() - started < 5

    # A timeout is retried too.
    recorder = Recorder()
    with _unanswering_server() as port:
        with (
            recorder.client() as http,
            Tally(
                "tally_secret_key",
                f"http://127.0.0.1:{port}",
                timeout=0.2,
                max_retries=1,
                backoff=0.01,
                http_client=http,
            ) as t,
            pytest.raises(ServiceUnavailable) as slow,
        ):
            t.charge("u", amount=1, request_uuid="charge-1")
        assert isinstance(slow.value.__cause__, httpx.TimeoutException)
        assert recorder.keys() == ["charge-1", "charge-1"]

    # And the async client's retries keep the key as well.
    async def run() -> list[str | None]:
        async_recorder = Recorder()
        async with (
            async_recorder.async_client() as http,
            AsyncTally("tally_secret_key", closed, backoff=0.01, http_client=http) as t,
        ):
            with pytest.raises(ServiceUnavailable):
                await t.credits.add("u", 1)
        return async_recorder.keys()

    keys = asyncio.run(run())
    assert len(keys) == 3 and len(set(keys)) == 1
    assert "retry 1 of" in caplog.text and "tally_secret_key" not in caplog.text


def test_retry_policy_backoff_and_retry_after() -> None:
    policy = RetryPolicy(max_retries=5, backoff=0.5, max_backoff=2.0, max_retry_after=30)
    for retry, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (6, 2.0)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jittered over the whole range, not fixed
    assert policy.delay(0, retry_after=1.0) == 1.0
    assert policy.delay(3, retry_after=120.0) == 30.0
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert 8 <= (parse_retry_after(later) or 0) <= 11
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)


def test_deduct_while_redis_is_down_is_retried_and_applied_once(
    private_stack: PrivateStack,
) -> None:
    recorder = Recorder()
    stack = private_stack
    with (
        recorder.client() as http,
        Tally(
            stack.api_key,
            stack.api.url,
            max_retries=15,
            backoff=0.05,
            max_backoff=0.2,
            http_client=http,
        ) as tally,
    ):
        tally.credits.add("u", 100)
        # No worker runs here: a snapshot keeps the balance over Redis's restart.
        direct = redis.Redis(port=stack.redis.port)
        direct.save()
        direct.close()
        recorder.requests.clear()
        recorder.responses.clear()
        stack.redis.kill()

        outcome: list[DeductResult | BaseException] = []

        def deduct() -> None:
            try:
                outcome.append(tally.credits.deduct("u", 30, description="while down"))
            except BaseException as exc:  # handed to the test's thread
                outcome.append(exc)

        worker = threading.Thread(target=deduct)
        worker.start()
        deadline = time.monotonic() + 10
        while not any(r.status_code == 503 for r in recorder.responses):
            assert time.monotonic() < deadline, "no 503 while Redis was down"
            time.sleep(0.02)
        time.sleep(0.5)
        stack.redis.start()  # the same port and directory
        worker.join(15)
        assert not worker.is_alive()

        (result,) = outcome
        assert isinstance(result, DeductResult), result
        assert result.success and (result.balance_before, result.balance_after) == (100, 70)
        statuses = [r.status_code for r in recorder.responses]
        assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) <= {200, 503}
        keys = recorder.keys()
        assert len(keys) == len(statuses) >= 2 and len(set(keys)) == 1 and keys[0]

        # Applied exactly once.
        assert tally.credits.balance("u").balance == 70
        entries = tally.credits.history("u").entries
        assert [(e.kind, e.amount) for e in entries] == [("deduct", -30), ("add", 100)]


def _build_wheel(source: Path, out: Path) -> Path:
    try:
        importlib.metadata.version("build")
        command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)]
    except importlib.metadata.PackageNotFoundError:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)]
    subprocess.run(command, check=True, capture_output=True, cwd=out, timeout=300)
    (wheel,) = out.glob("tally_credits_sdk-*.whl")
    return wheel


QUICKSTART = """
import os
import tally_credits
from tally_credits import Tally

with Tally(api_key=os.environ["TALLY_API_KEY"], base_url=os.environ["TALLY_URL"]) as tally:
    added = tally.credits.add("quickstart-user", 100, description="Welcome credits")
    print("added", added.balance_after)
    spent = tally.credits.deduct("quickstart-user", 30, description="AI generation")
    print("deducted", spent.balance_after)
print("from", os.path.dirname(tally_credits.__file__))
"""


def test_wheel_installs_in_a_fresh_venv_and_runs_the_quickstart(
    api_server: ApiServer, test_app: AppUnderTest
) -> None:
    root = Path(tempfile.mkdtemp(prefix="tally-sdk-wheel-"))
    try:
        # Built from a copy, so the build leaves nothing (build/, *.egg-info) in the tree.
        source = root / "source"
        shutil.copytree(
            SDK, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        )
        out = root / "dist"
        out.mkdir()
        wheel = _build_wheel(source, out)
        names = zipfile.ZipFile(wheel).namelist()
        assert "tally_credits/py.typed" in names and "tally_credits/client.py" in names
        assert "tally_credits/webhooks.py" in names
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line
            for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        assert requires == ["Requires-Dist: httpx>=0.27"]

        env_dir = root / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        python = env_dir / "bin" / "python"
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", str(wheel)],
            check=True,
            capture_output=True,
            env=clean,
            timeout=300,
        )
        env = clean | {"TALLY_API_KEY": test_app.api_key, "TALLY_URL": api_server.url}

        def run(name: str, text: str) -> subprocess.CompletedProcess[str]:
            (root / name).write_text(text)
            return subprocess.run(
                [str(python), str(root / name)],
                capture_output=True, text=True, cwd=root, env=env, timeout=60,
            )  # fmt: skip

        done = run("quickstart.py", QUICKSTART)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[:2] == ["added 100", "deducted 70"]
        assert lines[2].startswith(f"from {env_dir}")
        done = run("readme.py", readme_example("python"))
        assert (done.returncode, done.stdout) == (0, "Balance after 90\n"), done.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_answer_that_is_not_tallys_is_an_api_error_with_its_request_id() -> None:
    """A proxy in front of Tally answering 200 with a page of its own."""
    page = httpx.MockTransport(
        lambda request: httpx.Response(200, text="<html>hi</html>", headers={"X-Request-Id": "r1"})
    )
    with (
        httpx.Client(transport=page) as http,
        Tally("tally_" + "k" * 43, "http://tally", http_client=http) as tally,
        pytest.raises(APIError) as raised,
    ):
        tally.credits.balance("u")
    assert raised.value.status == 200 and raised.value.request_id == "r1"


# Webhooks: signed by the `standardwebhooks` package (as Tally's sender and receivers' own
# libraries do), verified by the SDK.

WEBHOOK_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
WEBHOOK_BODY = json.dumps(
    {
        "type": "payment.credited",
        "timestamp": "2026-02-03T04:05:06.000000Z",
        "data": {"user_id": "user_002", "credits": 1000, "note": "Crédits €"},
    },
    ensure_ascii=False,  # UTF-8 on the wire: what is signed is bytes, not characters
)


def _signed_headers(
    body: str = WEBHOOK_BODY,
    *,
    secret: str = WEBHOOK_SECRET,
    msg_id: str = "msg_1",
    at: datetime | None = None,
) -> dict[str, str]:
    at = at or datetime.now(UTC).replace(microsecond=0)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def test_verify_webhook_accepts_what_standardwebhooks_signs() -> None:
    headers = _signed_headers()
    # The reference implementation agrees on the same message.
    assert Webhook(WEBHOOK_SECRET).verify(WEBHOOK_BODY, headers) == json.loads(WEBHOOK_BODY)
    for payload in (WEBHOOK_BODY, WEBHOOK_BODY.encode(), bytearray(WEBHOOK_BODY.encode())):
        event = verify_webhook(payload, headers, WEBHOOK_SECRET)
        assert event == WebhookEvent(
            id="msg_1",
            type="payment.credited",
            timestamp="2026-02-03T04:05:06.000000Z",
            data={"user_id": "user_002", "credits": 1000, "note": "Crédits €"},
            raw=json.loads(WEBHOOK_BODY),
        )
    # On the client classes too, with no client made.
    assert Tally.verify_webhook(WEBHOOK_BODY, headers, WEBHOOK_SECRET).type == "payment.credited"
    assert AsyncTally.verify_webhook(WEBHOOK_BODY, headers, WEBHOOK_SECRET).id == "msg_1"
    # A parsed body is no body: a TypeError, not a verification failure.
    with pytest.raises(TypeError, match="raw body"):
        verify_webhook(json.loads(WEBHOOK_BODY), headers, WEBHOOK_SECRET)  # type: ignore[arg-type]


def _refused(
    message: str, payload: bytes | str, headers: dict[str, str], secret: str, **options: Any
) -> WebhookVerificationError:
    with pytest.raises(WebhookVerificationError, match=message) as raised:
        verify_webhook(payload, headers, secret, **options)
    return raised.value


def test_a_webhook_with_a_wrong_secret_or_a_changed_message_does_not_verify() -> None:
    headers = _signed_headers()
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    error = _refused("no matching signature", WEBHOOK_BODY, headers, other)
    assert isinstance(error, TallyError) and error.status is None and error.request_id is None
    assert str(error) == "no matching signature in webhook-signature"
    assert other not in repr(error) and WEBHOOK_SECRET[6:] not in str(error)
    assert pickle.loads(pickle.dumps(error)).error == error.error
    tampered = WEBHOOK_BODY.replace("1000", "9000", 1)
    _refused("no matching signature", tampered, headers, WEBHOOK_SECRET)
    # Parsed and serialized again (other spacing) is other bytes.
    reserialized = json.dumps(json.loads(WEBHOOK_BODY), indent=1)
    _refused("no matching signature", reserialized, headers, WEBHOOK_SECRET)
    _refused(
        "no matching signature", WEBHOOK_BODY, headers | {"webhook-id": "msg_2"}, WEBHOOK_SECRET
    )
    later = str(int(headers["webhook-timestamp"]) + 1)
    changed = headers | {"webhook-timestamp": later}
    _refused("no matching signature", WEBHOOK_BODY, changed, WEBHOOK_SECRET)
    assert verify_webhook(WEBHOOK_BODY, headers, WEBHOOK_SECRET).id == "msg_1"


def test_the_webhook_timestamp_must_be_within_the_tolerance() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def at(seconds: int) -> dict[str, str]:
        return _signed_headers(at=now + timedelta(seconds=seconds))

    _refused("too old", WEBHOOK_BODY, at(-301), WEBHOOK_SECRET, now=now)
    _refused("too new", WEBHOOK_BODY, at(301), WEBHOOK_SECRET, now=now)
    assert verify_webhook(WEBHOOK_BODY, at(-300), WEBHOOK_SECRET, now=now)
    assert verify_webhook(WEBHOOK_BODY, at(300), WEBHOOK_SECRET, now=now.timestamp())
    assert verify_webhook(WEBHOOK_BODY, at(-3000), WEBHOOK_SECRET, now=now, tolerance=3600)
    _refused("too old", WEBHOOK_BODY, at(-31), WEBHOOK_SECRET, now=now, tolerance=30)
    # Without `now`, the clock: a message signed in 2026-03 is too old by now.
    _refused("too old", WEBHOOK_BODY, at(0), WEBHOOK_SECRET)
    for bad in ("soon", "1.7e9", "-5", "1772366400.5", "\uff11\uff17\uff17\uff12"):
        headers = at(0) | {"webhook-timestamp": bad}
        _refused("not unix seconds", WEBHOOK_BODY, headers, WEBHOOK_SECRET, now=now)


def test_any_one_of_several_webhook_signatures_verifies_during_a_rotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    at = datetime.now(UTC)
    signatures = [Webhook(s).sign("msg_r", at, WEBHOOK_BODY) for s in (old, WEBHOOK_SECRET)]
    base = {"webhook-id": "msg_r", "webhook-timestamp": str(int(at.timestamp()))}
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for listed in (" ".join(signatures), " ".join(reversed(signatures))):
        headers = base | {"webhook-signature": listed}
        assert verify_webhook(WEBHOOK_BODY, headers, WEBHOOK_SECRET).id == "msg_r"
        assert verify_webhook(WEBHOOK_BODY, headers, old).id == "msg_r"
    # Signatures are compared in constant time, whole.
    assert compared and all(len(a) == 32 for a, _ in compared)
    third = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    _refused("no matching", WEBHOOK_BODY, base | {"webhook-signature": " ".join(signatures)}, third)
    # Other versions and entries that are not signatures are skipped, not fatal.
    good = signatures[1]
    mixed = f"v1a,{good[3:]} junk v1,!!! v2,{good[3:]}  {good}"
    assert verify_webhook(WEBHOOK_BODY, base | {"webhook-signature": mixed}, WEBHOOK_SECRET)
    unversioned = f"v1a,{good[3:]} v2,{good[3:]} {good[3:]}"
    headers = base | {"webhook-signature": unversioned}
    _refused("no matching", WEBHOOK_BODY, headers, WEBHOOK_SECRET)


def test_webhook_header_names_in_any_case() -> None:
    headers = _signed_headers()
    upper = {name.upper(): value for name, value in headers.items()}
    title = {name.title(): value for name, value in headers.items()}
    for form in (headers, upper, title, httpx.Headers(upper)):
        assert verify_webhook(WEBHOOK_BODY, form, WEBHOOK_SECRET).type == "payment.credited"
    for name in headers:
        rest = {k: v for k, v in title.items() if k.lower() != name}
        missing = "missing webhook-id, webhook-timestamp or webhook-signature"
        _refused(missing, WEBHOOK_BODY, rest, WEBHOOK_SECRET)
        _refused("missing", WEBHOOK_BODY, rest | {name: ""}, WEBHOOK_SECRET)


def test_the_webhook_secret_whsec_prefix_and_padding_optional() -> None:
    key = os.urandom(24)
    secret = "whsec_" + base64.b64encode(key).decode()
    headers = _signed_headers(secret=secret)
    for form in (secret, secret.removeprefix("whsec_"), f" {secret}\n"):
        assert verify_webhook(WEBHOOK_BODY, headers, form).id == "msg_1"
    # A key whose base64 has padding, given without it (the reference accepts that too).
    odd = "whsec_" + base64.b64encode(os.urandom(31)).decode().rstrip("=")
    assert verify_webhook(WEBHOOK_BODY, _signed_headers(secret=odd), odd)
    for bad in ("whsec_", "", "whsec_not base64!", "whsec_abcde", "whsec_ab$d"):
        _refused("webhook secret", WEBHOOK_BODY, headers, bad)
    # The secret is checked first: a misconfigured receiver hears so even for a bad request.
    _refused("webhook secret", WEBHOOK_BODY, {}, "whsec_")
    with pytest.raises(TypeError, match="whsec_"):
        verify_webhook(WEBHOOK_BODY, headers, None)  # type: ignore[arg-type]


def test_a_signed_webhook_body_must_be_a_tally_event() -> None:
    cases: list[tuple[bytes, str]] = [
        (b"not json", "not JSON"),
        (b"{\xff}", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"type": "balance.low", "timestamp": "2026-01-01T00:00:00Z"}', "lacks"),
        (b'{"type": 1, "timestamp": "2026-01-01T00:00:00Z", "data": {}}', "lacks"),
    ]
    for body, message in cases:
        # Signed over the very bytes by hand: standardwebhooks signs text only.
        seconds = str(int(time.time()))
        key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
        mac = hmac.new(key, f"msg_1.{seconds}.".encode() + body, "sha256").digest()
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": seconds,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        }
        _refused(message, body, headers, WEBHOOK_SECRET)
