"""The month-partitioned ledger against a real PostgreSQL: the migration that converts a
populated table, partitions made ahead, the DEFAULT partition drained, replays still skipped,
lookups by time-ordered ids, and archived months that leave balances exact.

Each test gets a database of its own on the suite's server: partitions are schema, and these
tests make and detach them."""

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from engine.errors import ConflictError, InvalidRequestError
from engine.ledger.partitions import add_months, ensure_partitions, month_bounds, partition_name
from engine.ledger.repository import LedgerRepository
from engine.ledger.retention import archive_month, restore_month
from engine.models import LedgerEntry
from engine.settings import Settings
from engine.store.db import migrate, open_pool
from engine.store.keys import SHARDS, ledger_id_ms, new_ledger_id, shard_of_ledger_id
from tests.conftest import tally
from tests.servers import PostgresServer

BEFORE_PARTITIONS = "0009_events_plans_limits"
APP = "app_part"
THIS_MONTH = datetime.now(UTC).date().replace(day=1)

Database = Callable[..., tuple[str, ConnectionPool]]


@pytest.fixture
def database(postgres_server: PostgresServer) -> Iterator[Database]:
    """Makes fresh databases on the suite's server, migrated up to `until` (default: all)."""
    admin = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    made: list[tuple[str, ConnectionPool]] = []

    def make(until: str | None = None) -> tuple[str, ConnectionPool]:
        name = f"partitions_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/{name}"
        pool = open_pool(url, 4, wait=True)
        made.append((name, pool))
        migrate(pool, until=until)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO apps (app_id, name) VALUES (%s, 'partitions')", (APP,))
        return url, pool

    yield make
    for name, pool in made:
        pool.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _entry(seq: int, at_ms: int, **fields: Any) -> LedgerEntry:
    entry = LedgerEntry(
        ledger_id=new_ledger_id(7, at_ms), app_id=APP, user_id="ann", kind="add", amount=10,
        balance_after=10 * seq, description=None, reference_id=None, metadata=None,
        idempotency_key=None, refund_of=None, seq=seq, created_at_ms=at_ms,
    )  # fmt: skip
    return replace(entry, **fields)


def _fetch(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params or None).fetchall()


# Every column of every row, in one digest: a row lost, duplicated or altered changes it.
_CHECKSUM = (
    "SELECT count(*), sum(amount), sum(seq), md5(string_agg(l::text, '|' ORDER BY ledger_id))"
    " FROM ledger_entries l"
)
_COLUMNS = (
    "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
    " WHERE table_name = 'ledger_entries' ORDER BY ordinal_position"
)
# The CHECKs (amount, seq) and the foreign key to apps, as they were.
_CHECKS = (
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE conrelid = 'ledger_entries'::regclass AND contype IN ('c', 'f') ORDER BY conname"
)
_MONTHS = (
    "SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date FROM ledger_entries"
)
_PARTITIONS = (
    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
    " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'ledger_entries'::regclass"
)
_SUMMARIES = [
    "SELECT * FROM accounts ORDER BY app_id, user_id",
    "SELECT * FROM ledger_hourly ORDER BY app_id, hour, kind",
    "SELECT * FROM usage_daily ORDER BY app_id, day, user_id",
]


def _fill_old_schema(url: str) -> None:
    """6,000 rows over six months of the old table, as 0009 left it: every kind of column
    set, rows on both sides of each month's edge, refunds, holds and grants."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO ledger_entries (ledger_id, app_id, user_id, kind, amount, balance_after,"
            " description, reference_id, metadata, idempotency_key, refund_of, seq, created_at,"
            " hold_id, held, expires_at, grants)"
            " SELECT md5('entry' || i)::uuid, %s, 'user' || (i %% 40),"
            "  CASE WHEN i %% 10 = 0 THEN 'refund' WHEN i %% 10 = 5 THEN 'hold' ELSE 'add' END,"
            "  CASE WHEN i %% 10 = 5 THEN 0 ELSE i END, i * 3, 'entry ' || i, 'ref' || (i %% 7),"
            "  jsonb_build_object('i', i), CASE WHEN i %% 3 = 0 THEN 'idem' || i END,"
            "  CASE WHEN i %% 10 = 0 THEN md5('entry' || (i - 1))::uuid END, i / 40 + 1,"
            "  %s::timestamptz + (i - 3000) * interval '43 minutes 13.7 seconds',"
            "  CASE WHEN i %% 10 = 5 THEN 'hold_' || i END, CASE WHEN i %% 10 = 5 THEN i END,"
            "  CASE WHEN i %% 10 = 5 THEN now() END,"
            "  CASE WHEN i %% 10 = 5 THEN jsonb_build_array(jsonb_build_object('amount', -i)) END"
            " FROM generate_series(1, 6000) AS i",
            (APP, datetime.combine(add_months(THIS_MONTH, -3), datetime.min.time(), UTC)),
        )
        # Exactly on a month's first instant, and one millisecond before it.
        edge = month_bounds(add_months(THIS_MONTH, -2))[0]
        conn.execute(
            "INSERT INTO ledger_entries (ledger_id, app_id, user_id, kind, amount, balance_after,"
            " seq, created_at) VALUES (gen_random_uuid(), %s, 'edge', 'add', 1, 1, 1, %s),"
            " (gen_random_uuid(), %s, 'edge', 'add', 1, 2, 2, %s - interval '1 millisecond')",
            (APP, edge, APP, edge),
        )


def test_the_migration_moves_every_row_once(database: Database) -> None:
    url, pool = database(until=BEFORE_PARTITIONS)
    _fill_old_schema(url)
    before = _fetch(url, _CHECKSUM)
    columns = _fetch(url, _COLUMNS)
    checks = _fetch(url, _CHECKS)
    summaries = [_fetch(url, query) for query in _SUMMARIES]
    months = {row[0] for row in _fetch(url, _MONTHS)}

    assert migrate(pool) == ["0010_partitioned_ledger", "0011_accounts_in_place"]

    assert _fetch(url, _CHECKSUM) == before and before[0][0] == 6002
    assert _fetch(url, _COLUMNS) == columns  # the columns are a contract
    assert _fetch(url, _CHECKS) == checks and len(checks) == 3
    # Moved, not inserted: the summaries did not count the rows a second time.
    assert [_fetch(url, query) for query in _SUMMARIES] == summaries
    partitions = dict(_fetch(url, _PARTITIONS))
    wanted = months | {THIS_MONTH, add_months(THIS_MONTH, 1)}
    assert set(partitions) == {partition_name(m) for m in wanted} | {"ledger_entries_default"}
    assert partitions["ledger_entries_default"] == "DEFAULT"
    # Each row sits in its own month, the DEFAULT is empty.
    misplaced = _fetch(
        url, "SELECT count(*) FROM ledger_entries WHERE tableoid::regclass::text <>"
        " 'ledger_entries_' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY_MM')"
    )  # fmt: skip
    assert misplaced == [(0,)]
    # Every month has the table's indexes.
    indexes = _fetch(
        url, "SELECT tablename, count(*) FROM pg_indexes WHERE tablename LIKE 'ledger_entries_%'"
        " GROUP BY tablename"
    )  # fmt: skip
    assert {count for _, count in indexes} == {5} and len(indexes) == len(partitions)
    assert _fetch(url, "SELECT count(*) FROM ledger_refunds") == [(600,)]

    # The triggers follow the table: a new entry is summarized, a second refund is skipped.
    ledger = LedgerRepository(pool)
    refunded = _fetch(url, "SELECT md5('entry9')::uuid::text")[0][0]  # refunded by entry10
    now_ms = _ms(datetime.now(UTC))
    assert ledger.insert_entries([_entry(1, now_ms, user_id="new")], []) == 1
    assert _fetch(url, "SELECT balance FROM accounts WHERE user_id = 'new'") == [(10,)]
    second = _entry(2, now_ms, kind="refund", amount=-1, refund_of=refunded)
    assert ledger.insert_entries([second], []) == 0
    refund = _fetch(url, "SELECT md5('entry10')::uuid::text")[0][0]
    assert ledger.refund_of(uuid.UUID(refunded)) == refund


def test_partitions_are_made_ahead_once_however_many_workers_race(database: Database) -> None:
    url, pool = database()
    today = date(2031, 5, 17)
    results: list[list[str]] = []
    start = threading.Barrier(4)

    def race() -> None:
        start.wait()
        results.append(ensure_partitions(pool, months_ahead=3, today=today))

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = sorted(name for result in results for name in result)
    assert made == [f"ledger_entries_2031_{m:02d}" for m in (5, 6, 7, 8)]
    assert ensure_partitions(pool, months_ahead=3, today=today) == []
    # Months are UTC months: their first and last milliseconds land in them.
    start, end = month_bounds(date(2031, 8, 1))
    entries = [_entry(1, _ms(start)), _entry(2, _ms(end) - 1)]
    assert LedgerRepository(pool).insert_entries(entries, []) == 2
    where = "SELECT DISTINCT tableoid::regclass::text FROM ledger_entries"
    assert _fetch(url, where) == [("ledger_entries_2031_08",)]


def test_rows_in_the_default_partition_move_into_their_month(database: Database) -> None:
    url, pool = database()
    ledger = LedgerRepository(pool)
    month = date(2032, 3, 1)
    start, end = month_bounds(month)
    entries = [_entry(1, _ms(start)), _entry(2, _ms(end) - 1), _entry(3, _ms(end))]
    assert ledger.insert_entries(entries, []) == 3
    where = "SELECT tableoid::regclass::text, count(*) FROM ledger_entries GROUP BY 1 ORDER BY 1"
    assert _fetch(url, where) == [("ledger_entries_default", 3)]
    summaries = [_fetch(url, query) for query in _SUMMARIES]

    made = ensure_partitions(pool, months_ahead=0, today=month)
    assert made == ["ledger_entries_2032_03", "ledger_entries_2032_04"]
    assert _fetch(url, where) == [("ledger_entries_2032_03", 2), ("ledger_entries_2032_04", 1)]
    assert [_fetch(url, query) for query in _SUMMARIES] == summaries
    # The moved rows are still entries like any other: a replay is skipped.
    assert ledger.insert_entries(entries, []) == 0
    assert ensure_partitions(pool, months_ahead=0, today=month) == []


def test_replayed_entries_are_skipped_across_a_month_edge(database: Database) -> None:
    url, pool = database()
    ledger = LedgerRepository(pool)
    edge = _ms(month_bounds(add_months(THIS_MONTH, 1))[0])
    entries = [_entry(seq, edge - 2 + seq) for seq in range(1, 5)]  # 2 ms each side
    refund = _entry(5, edge + 3, kind="refund", amount=-10, refund_of=entries[0].ledger_id)
    assert ledger.insert_entries([*entries, refund], []) == 5
    assert ledger.insert_entries([*entries, refund], []) == 0
    assert ledger.insert_entries(entries[1:3], []) == 0
    # A second refund of the same entry is skipped, as the unique refund_of once did.
    again = _entry(6, edge + 4, kind="refund", amount=-10, refund_of=entries[0].ledger_id)
    assert ledger.insert_entries([again], []) == 0
    assert ledger.refunded([entries[0].ledger_id, entries[1].ledger_id]) == {entries[0].ledger_id}
    months = _fetch(url, "SELECT DISTINCT tableoid::regclass::text FROM ledger_entries")
    assert len(months) == 2
    assert _fetch(url, "SELECT count(*), sum(amount) FROM ledger_entries") == [(5, 30)]


def _partitions_read(url: str, query: str, params: tuple[Any, ...]) -> set[str]:
    """The partitions a query reads, from its plan as executed."""
    with psycopg.connect(url) as conn:
        plan = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", params).fetchone()
    assert plan is not None
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node and node.get("Actual Loops", 1):
            found.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0][0]["Plan"])
    return found


def test_find_entry_reads_one_month_for_new_ids_and_every_month_for_old(
    database: Database,
) -> None:
    url, pool = database()
    ledger = LedgerRepository(pool)
    now = month_bounds(THIS_MONTH)[0].replace(day=15)
    new = _entry(1, _ms(now))
    legacy = _entry(2, _ms(now), ledger_id=str(uuid.uuid4()))
    # The scripts' derived ids put version 8 over a legacy id: its "time" is random bits.
    derived = _entry(3, _ms(now), ledger_id=legacy.ledger_id[:14] + "8001" + legacy.ledger_id[18:])
    moved = _entry(4, _ms(now))
    assert ledger.insert_entries([new, legacy, derived, moved], []) == 4
    with psycopg.connect(url) as conn:  # months old, as an operator's fix could make it
        conn.execute(
            "UPDATE ledger_entries SET created_at = created_at - interval '120 days'"
            " WHERE ledger_id = %s", (moved.ledger_id,)
        )  # fmt: skip
    for entry in (new, legacy, derived):
        found = ledger.find_entry(uuid.UUID(entry.ledger_id))
        assert found is not None and found.ledger_id == entry.ledger_id
    found = ledger.find_entry(uuid.UUID(moved.ledger_id))
    assert found is not None and found.seq == 4
    assert ledger.find_entry(uuid.UUID(new_ledger_id(3))) is None

    # As find_entry asks: the id's time, give or take a day, is one month.
    by_time = "SELECT * FROM ledger_entries WHERE ledger_id = %s AND created_at BETWEEN %s AND %s"
    window = (new.ledger_id, now - timedelta(days=1), now + timedelta(days=1))
    assert _partitions_read(url, by_time, window) == {partition_name(THIS_MONTH)}


def test_ledger_ids_are_time_ordered_and_carry_their_shard() -> None:
    now_ms = _ms(datetime.now(UTC))
    for shard in range(SHARDS):
        ledger_id = uuid.UUID(new_ledger_id(shard, now_ms))
        assert (ledger_id.version, ledger_id.variant) == (7, uuid.RFC_4122)
        assert shard_of_ledger_id(ledger_id) == shard
        assert ledger_id_ms(ledger_id) == now_ms
    ids = [new_ledger_id(5, now_ms + step) for step in range(0, 5000, 7)]
    assert ids == sorted(ids) and [uuid.UUID(i) for i in ids] == sorted(uuid.UUID(i) for i in ids)
    assert len({new_ledger_id(3, now_ms) for _ in range(1000)}) == 1000
    assert ledger_id_ms(uuid.uuid4()) is None
    # Without a time, the clock's.
    assert abs((ledger_id_ms(uuid.UUID(new_ledger_id(0))) or 0) - now_ms) < 60_000


def test_an_archived_month_leaves_balances_and_reconciliation_exact(database: Database) -> None:
    url, pool = database()
    ledger = LedgerRepository(pool)
    old = [add_months(THIS_MONTH, -n) for n in (6, 5, 4)]
    ensure_partitions(pool, months_ahead=0, today=old[0])
    ensure_partitions(pool, months_ahead=0, today=old[1])
    ensure_partitions(pool, months_ahead=0, today=old[2])
    entries = []
    for seq, month in enumerate([old[0], old[0], old[1], old[2], THIS_MONTH], start=1):
        at = _ms(month_bounds(month)[0]) + seq * 3_600_000
        entries.append(_entry(seq, at, amount=seq * 10, balance_after=sum(range(1, seq + 1)) * 10))
    entries.append(_entry(1, entries[0].created_at_ms, user_id="gone", amount=7))
    ledger.insert_entries(entries, [])

    def state() -> tuple[Any, ...]:
        snapshots = ledger.account_snapshots(APP, ["ann", "gone", "nobody"])
        totals = ledger.ledger_totals([(APP, "ann", 5), (APP, "gone", 1)])
        every = sorted(ledger.all_account_snapshots())
        return snapshots, totals, every

    before = state()
    assert before[0]["ann"].balance == 150 and before[1][(APP, "ann")] == (5, 150)

    with pytest.raises(ConflictError, match="older"):
        archive_month(pool, old[1])
    with pytest.raises(InvalidRequestError, match="too recent"):
        archive_month(pool, add_months(THIS_MONTH, -1))
    archived = archive_month(pool, old[0])
    assert (archived.partition, archived.entries, archived.accounts) == (
        partition_name(old[0]), 3, 2,
    )  # fmt: skip
    assert state() == before  # hydration, reconciliation and the completeness pass agree
    assert _fetch(url, "SELECT count(*) FROM ledger_entries") == [(3,)]
    assert _fetch(url, f"SELECT count(*) FROM {partition_name(old[0])}") == [(3,)]
    # The archived month's table is not made again, nor does the worker complain of it.
    assert ensure_partitions(pool, months_ahead=0, today=old[0]) == []

    restored = restore_month(pool, old[0])
    assert (restored.entries, restored.accounts) == (3, 2)
    assert state() == before
    assert _fetch(url, "SELECT count(*) FROM ledger_archived") == [(0,)]


def test_a_month_with_a_grant_still_alive_is_not_archived(database: Database) -> None:
    _, pool = database()
    month = add_months(THIS_MONTH, -6)
    ensure_partitions(pool, months_ahead=0, today=month)
    at = _ms(month_bounds(month)[0]) + 1000
    alive = _ms(datetime.now(UTC)) + 86_400_000 * 30
    LedgerRepository(pool).insert_entries([_entry(1, at, expires_at_ms=alive)], [])
    with pytest.raises(ConflictError, match="grants or holds"):
        archive_month(pool, month)


@pytest.mark.parametrize("first_commits", [True, False])
def test_of_two_refunds_of_one_entry_racing_one_is_kept(
    database: Database, first_commits: bool
) -> None:
    url, pool = database()
    ledger = LedgerRepository(pool)
    now_ms = _ms(datetime.now(UTC))
    original = _entry(1, now_ms)
    ledger.insert_entries([original], [])
    first, second = (
        _entry(seq, now_ms + seq, kind="refund", amount=-10, refund_of=original.ledger_id)
        for seq in (2, 3)
    )
    counts: list[int] = []
    with psycopg.connect(url) as conn:
        # The first refund is inserted, not yet committed, when the second arrives.
        conn.execute(_INSERT_ONE, (first.ledger_id, APP, first.refund_of, first.created_at_ms))
        racer = threading.Thread(target=lambda: counts.append(ledger.insert_entries([second], [])))
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting on the first one's claim
        if first_commits:
            conn.commit()
        else:
            conn.rollback()  # its batch failed: the second may go ahead
    racer.join()
    kept = first if first_commits else second
    assert counts == [0 if first_commits else 1]
    assert ledger.refund_of(uuid.UUID(original.ledger_id)) == kept.ledger_id
    assert _fetch(url, "SELECT ledger_id::text FROM ledger_entries WHERE seq > 1") == [
        (kept.ledger_id,)
    ]


_INSERT_ONE = (
    "INSERT INTO ledger_entries (ledger_id, app_id, user_id, kind, amount, balance_after,"
    " refund_of, seq, created_at)"
    " VALUES (%s, %s, 'ann', 'refund', -10, 0, %s, 2, to_timestamp(%s / 1000.0))"
)


def test_tally_ledger_archive_refuses_a_bad_or_recent_month(settings: Settings) -> None:
    bad = tally(settings, "ledger", "archive", "2026-13", check=False)
    assert bad.returncode == 2 and "is not a month (YYYY-MM)" in bad.stderr
    this_month = datetime.now(UTC).strftime("%Y-%m")
    recent = tally(settings, "ledger", "archive", this_month, check=False)
    assert recent.returncode == 1 and "is too recent" in recent.stderr
    missing = tally(settings, "ledger", "restore", "2001-01", check=False)
    assert missing.returncode == 1 and "restore it from its dump first" in missing.stderr
