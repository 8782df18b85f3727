"""Archiving old months of the ledger: detach a month's partition, keep what it summed to.

Balances live in Redis, but an account Redis lacks is rebuilt from the ledger (its balance is
the sum of its amounts, its seq the highest), and reconciliation counts every entry up to an
account's seq. So a detached month leaves behind, per account, what it held (entries, sum, last
seq and time, in `ledger_archived`): both add it to the months still attached, and stay exact.
Both happen in one transaction, which is why the detach is not CONCURRENTLY (that cannot run in
a transaction, nor beside a DEFAULT partition).

A month whose grants or holds could still be alive is refused: rebuilding an account's grants
and holds reads the entries that made them (engine.ledger.expiring). See docs/scaling.md.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from engine.errors import ConflictError, InvalidRequestError
from engine.ledger.partitions import TABLE, add_months, month_bounds, partition_name
from engine.store.db import connection, one

# A month is archived no sooner than this many months after it ends: entries of it may still
# be on their way from the outbox.
KEEP_MONTHS = 1
# Expired grants and holds are expired by the worker within a second; this is a wide margin.
_EXPIRY_MARGIN = timedelta(days=1)
_LOCK_TIMEOUT = "5s"


@dataclass(frozen=True, slots=True)
class ArchivedMonth:
    partition: str
    entries: int
    accounts: int


def archive_month(pool: ConnectionPool, month: date, now: datetime | None = None) -> ArchivedMonth:
    """Detach the month's partition, leaving its table (to dump, then drop) under its name, and
    record per account what it held.

    Refuses a month too recent, a month with older entries still attached (months go oldest
    first: an entry may use a grant made in an earlier month, and a grant's rebuild must never
    see its uses without its making), and a month holding a grant or hold that may not have
    expired yet.
    """
    now = now or datetime.now(UTC)
    month = month.replace(day=1)
    name = partition_name(month)
    latest = add_months(now.date().replace(day=1), -KEEP_MONTHS - 1)
    if month > latest:
        raise InvalidRequestError(f"{month:%Y-%m} is too recent: {latest:%Y-%m} is the latest")
    table = sql.Identifier(name)
    with _busy(name), connection(pool) as conn, conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        if not _attached(conn, name):
            raise ConflictError(f"{name} is not a partition of {TABLE}")
        older = sql.SQL("SELECT 1 FROM {} WHERE created_at < %s").format(sql.Identifier(TABLE))
        if _exists(conn, older, (month_bounds(month)[0],)):
            raise ConflictError(f"{TABLE} has entries older than {month:%Y-%m}: archive them first")
        # Nothing enters the month from here on, so the totals are those of the rows detached:
        # a late entry of it waits (or, deadlocked with the detach, fails and is flushed again)
        # and then lands in the DEFAULT partition, counted there.
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table))
        live = sql.SQL("SELECT 1 FROM {} WHERE expires_at > %s").format(table)
        if _exists(conn, live, (now - _EXPIRY_MARGIN,)):
            raise ConflictError(f"{name} has grants or holds that may not have expired yet")
        accounts = conn.execute(
            sql.SQL(
                "INSERT INTO ledger_archived (app_id, user_id, month, entries, amount, last_seq,"
                " last_created_at) SELECT app_id, user_id, %s, count(*), sum(amount), max(seq),"
                " max(created_at) FROM {} GROUP BY app_id, user_id"
            ).format(table),
            (month,),
        ).rowcount
        entries = one(
            conn.execute(
                "SELECT coalesce(sum(entries), 0) FROM ledger_archived WHERE month = %s", (month,)
            ).fetchone()
        )[0]
        conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(sql.Identifier(TABLE), table)
        )
    return ArchivedMonth(name, int(entries), accounts)


def restore_month(pool: ConnectionPool, month: date) -> ArchivedMonth:
    """Attach an archived month's table again (restored under its name first, if dropped) and
    forget its totals, in one transaction."""
    month = month.replace(day=1)
    name = partition_name(month)
    start, end = month_bounds(month)
    table = sql.Identifier(name)
    with _busy(name), connection(pool) as conn, conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        if one(conn.execute("SELECT to_regclass(%s)", (name,)).fetchone())[0] is None:
            raise ConflictError(f"no table {name}: restore it from its dump first")
        if _attached(conn, name):
            raise ConflictError(f"{name} is attached already")
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(TABLE), table, sql.Literal(start), sql.Literal(end)
            )
        )
        accounts = conn.execute("DELETE FROM ledger_archived WHERE month = %s", (month,)).rowcount
        entries = one(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone())[0]
    return ArchivedMonth(name, int(entries), accounts)


@contextmanager
def _busy(name: str) -> Iterator[None]:
    """A lock not granted within _LOCK_TIMEOUT (a long read of the ledger holds it), or a
    deadlock with a late insert, is a refusal to try again, not a crash."""
    try:
        yield
    except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
        raise ConflictError(
            f"{name}: its locks are busy (a long read of the ledger, such as a"
            " reconciliation, or a late entry of the month); nothing changed, try again"
        ) from exc


def _exists(conn: psycopg.Connection, query: sql.Composed, params: tuple[object, ...]) -> bool:
    row = conn.execute(sql.SQL("SELECT EXISTS ({})").format(query), params).fetchone()
    return bool(row and row[0])


def _attached(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%s)"
        " AND inhparent = %s::regclass)",
        (name, TABLE),
    ).fetchone()
    return bool(row and row[0])
