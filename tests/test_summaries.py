"""The ledger's summaries (accounts, hourly and daily totals, refusals) against a real
PostgreSQL: kept by the trigger in the inserting transaction, each entry counted once."""

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from engine.ledger.repository import LedgerRepository
from engine.ledger.summaries import Summaries
from engine.models import LedgerEntry
from engine.settings import Settings
from engine.store.db import open_pool
from tests.conftest import ApiServer, AppUnderTest


@pytest.fixture
def stores(settings: Settings) -> Iterator[tuple[LedgerRepository, Summaries]]:
    pool = open_pool(settings.database_url, 2, wait=True)
    yield LedgerRepository(pool), Summaries(pool)
    pool.close()


def _entry(app_id: str, user_id: str, kind: str, amount: int, after: int, seq: int) -> LedgerEntry:
    return LedgerEntry(
        ledger_id=str(uuid.uuid4()), app_id=app_id, user_id=user_id, kind=kind, amount=amount,
        balance_after=after, description=None, reference_id=None, metadata=None,
        idempotency_key=None, refund_of=None, seq=seq, created_at_ms=int(time.time() * 1000),
    )  # fmt: skip


def test_summaries_follow_inserts_once_whatever_the_order(
    stores: tuple[LedgerRepository, Summaries], test_app: AppUnderTest
) -> None:
    ledger, summaries = stores
    app = test_app.app_id
    entries = [
        _entry(app, "ann", "add", 100, 100, 1),
        _entry(app, "ann", "deduct", -30, 70, 2),
        _entry(app, "ann", "deduct", -20, 50, 3),
        _entry(app, "bob", "add", 5, 5, 1),
    ]
    # The newest of ann's entries arrives first (two workers, two batches), then all again
    # (a replayed batch): the summaries must not count anything twice.
    assert ledger.insert_entries([entries[2]], []) == 1
    assert ledger.insert_entries(entries, []) == 3
    assert ledger.insert_entries(entries, []) == 0

    accounts = {a.user_id: a for a in summaries.accounts(app, "", None, 10)}
    assert accounts["ann"].balance == 50 and accounts["bob"].balance == 5
    totals = summaries.app_totals()[app]
    assert (totals.users, totals.added_today, totals.deducted_today, totals.deducts_today) == (
        2, 105, 50, 2,
    )  # fmt: skip
    today = summaries.days(app, 30)[-1]
    assert (today.day, today.added, today.deducted) == (datetime.now(UTC).date(), 105, 50)
    assert summaries.deducts_per_hour(app, 48)[-1][1] == 2
    assert summaries.top_users(app, 30, 10) == [("ann", 50)]


def test_accounts_page_newest_first_by_prefix_with_a_cursor(
    stores: tuple[LedgerRepository, Summaries], test_app: AppUnderTest
) -> None:
    ledger, summaries = stores
    app = test_app.app_id
    names = ["a_1", "a_2", "a%3", "b_1", "a_4"]
    for name in names:
        ledger.insert_entries([_entry(app, name, "add", 1, 1, 1)], [])
        time.sleep(0.002)  # one activity time per account
    page = summaries.accounts(app, "a", None, 2)
    assert [a.user_id for a in page] == ["a_4", "a%3"]
    rest = summaries.accounts(app, "a", (page[-1].last_activity_at, page[-1].user_id), 10)
    assert [a.user_id for a in rest] == ["a_2", "a_1"]
    # LIKE's wildcards in a prefix are plain characters.
    assert [a.user_id for a in summaries.accounts(app, "a%", None, 10)] == ["a%3"]
    assert [a.user_id for a in summaries.accounts(app, "a_", None, 10)] == ["a_4", "a_2", "a_1"]


def test_refused_deducts_reach_the_daily_chart(
    api_server: ApiServer, test_app: AppUnderTest, stores: tuple[LedgerRepository, Summaries]
) -> None:
    _, summaries = stores
    headers = {"Authorization": f"Bearer {test_app.api_key}"}
    with httpx.Client(base_url=api_server.url, headers=headers) as client:
        for _ in range(3):
            answer = client.post("/credits/deduct", json={"user_id": "poor", "amount": 5})
            assert answer.status_code == 402
        batch = client.post(
            "/credits/batch",
            json={"operations": [{"type": "deduct", "user_id": "poor", "amount": 1}]},
        )
        assert batch.status_code == 200
    deadline = time.monotonic() + 15
    while summaries.days(test_app.app_id, 1)[0].refusals < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert summaries.days(test_app.app_id, 1)[0].refusals == 4


def test_refusal_counts_add_up_across_saves(
    stores: tuple[LedgerRepository, Summaries], test_app: AppUnderTest
) -> None:
    _, summaries = stores
    hour = int(time.time()) // 3600
    summaries.add_refusals(Counter({(test_app.app_id, hour): 2}))
    summaries.add_refusals(Counter({(test_app.app_id, hour): 3}))
    assert summaries.days(test_app.app_id, 1)[0].refusals == 5
