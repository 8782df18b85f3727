"""The outbox writer in process, against the suite's Redis and PostgreSQL: what it leaves in
Redis after a COMMIT, dead letters, pending entries, rounds that overlap."""

import json
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from engine.ledger.outbox import OutboxWriter, ensure_group
from engine.ledger.repository import LedgerRepository
from engine.settings import Settings
from engine.store.db import open_pool
from engine.store.keys import account_keys, unpersisted_key
from engine.store.scripts import NO_ACKS
from tests.conftest import ApiServer, AppUnderTest, fire, redis_of


@pytest.fixture
def writers(settings: Settings) -> Iterator[LedgerRepository]:
    pool = open_pool(settings.database_url, 2, wait=True)
    yield LedgerRepository(pool)
    pool.close()


def _writer(settings: Settings, ledger: LedgerRepository, batch_size: int) -> OutboxWriter:
    return OutboxWriter(redis_of(settings, decode=True), ledger, "test-writer", batch_size, NO_ACKS)


def _rows(settings: Settings, app_id: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, kind, amount FROM ledger_entries WHERE app_id = %s ORDER BY seq",
            (app_id,),
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def test_flush_cleans_redis_and_dead_letters_what_does_not_fit(
    client: httpx.Client, settings: Settings, test_app: AppUnderTest, writers: LedgerRepository
) -> None:
    keys = account_keys(test_app.app_id, "dl")
    r = redis_of(settings, decode=True)
    ensure_group(r, keys.outbox)
    added = client.post("/credits/add", json={"user_id": "dl", "amount": 5}).json()
    client.post("/credits/refund", json={"ledger_id": added["ledger_id"]}).raise_for_status()
    # Neither JSON nor an entry, and an entry PostgreSQL refuses (amount is not a number).
    r.xadd(keys.outbox, {"e": "{not json"})
    refused = {
        "ledger_id": "01a2019d-b912-7e9f-989c-01a36e6b3c99", "app_id": test_app.app_id,
        "user_id": "dl", "kind": "deduct", "description": None, "reference_id": None,
        "metadata": None, "idempotency_key": None, "refund_of": None, "created_at": 1,
        "amount": "lots", "balance_after": 0, "seq": 99,
    }  # fmt: skip
    r.xadd(keys.outbox, {"e": json.dumps(refused)})
    r.xadd(keys.outbox, {"e": '{"ledger_id": "x", "surprise": 1}'})

    result = _writer(settings, writers, 1000).flush([keys.shard], 0, 10)

    assert _rows(settings, test_app.app_id) == [("dl", "add", 5), ("dl", "refund", -5)]
    assert result.dead_letters >= 3
    with psycopg.connect(settings.database_url) as conn:
        dead = conn.execute(
            "SELECT ref, payload, error FROM outbox_dead_letters WHERE shard = %s", (keys.shard,)
        ).fetchall()
    errors = {payload: error for _, payload, error in dead}
    assert errors["{not json"].startswith("unparseable")
    assert any(ref == refused["ledger_id"] for ref, _, _ in dead)
    assert errors['{"ledger_id": "x", "surprise": 1}'].startswith("unparseable")
    # Nothing of the shard is left pending; the entries left Redis, the refund marker stays a day.
    assert r.xlen(keys.outbox) == 0
    assert r.xpending(keys.outbox, "persist")["pending"] == 0
    assert not r.hexists(unpersisted_key(keys.shard), added["ledger_id"])
    assert r.lrange(keys.recent, 0, -1) == []
    assert 0 < r.ttl(keys.refund_marker(added["ledger_id"])) <= 86_400
    assert writers.refunded([added["ledger_id"]]) == {added["ledger_id"]}


def test_overlapping_rounds_persist_every_entry_once_and_reread_pending_ones(
    api_server: ApiServer,
    settings: Settings,
    test_app: AppUnderTest,
    client: httpx.Client,
    writers: LedgerRepository,
) -> None:
    keys = account_keys(test_app.app_id, "many")
    r = redis_of(settings, decode=True)
    ensure_group(r, keys.outbox)
    client.post("/credits/add", json={"user_id": "many", "amount": 10_000})
    fire(api_server.url, test_app.api_key,
         [("/credits/deduct", {"user_id": "many", "amount": 1})] * 2_400)  # fmt: skip
    # A writer that read some entries and died before its COMMIT: they are its pending ones.
    r.xreadgroup("persist", "test-writer", {keys.outbox: ">"}, count=300)

    # Rounds of 1000 and more, overlapping: more than unpack() takes at once in the clean-up.
    result = _writer(settings, writers, 1_100).flush([keys.shard], 0, 30)

    rows = _rows(settings, test_app.app_id)
    assert len(rows) == 2_401 and sum(amount for _, _, amount in rows) == 10_000 - 2_400
    assert result.persisted >= 2_401 and len(result.lag_ms) >= 2_401
    assert r.xlen(keys.outbox) == 0
    assert r.llen(keys.recent) == 0
    assert r.xpending(keys.outbox, "persist")["pending"] == 0
