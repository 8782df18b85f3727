"""The ledger's monthly partitions (docs/scaling.md), made ahead of need by the worker.

`ledger_entries` is partitioned by month (UTC) of created_at, with a DEFAULT partition taking
any row no month does: an insert never fails for want of a partition, but rows in the DEFAULT
lose the month's pruning and retention, so the worker keeps the coming months made and moves
what the DEFAULT holds into its month.

A month is made as a plain table then attached: CREATE TABLE ... PARTITION OF would take an
ACCESS EXCLUSIVE lock on the whole ledger and so wait behind any long read of it (a
reconciliation pass), stalling every read and write queued behind it; ATTACH PARTITION takes a
lock that reads and inserts pass through. It does lock the DEFAULT partition exclusively, so it
waits at most `_LOCK_TIMEOUT` and leaves the month to the next run (an hour later, months
ahead of need).
"""

import logging
from datetime import UTC, date, datetime

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from engine.store.db import connection, one

log = logging.getLogger(__name__)

TABLE = "ledger_entries"
DEFAULT_PARTITION = "ledger_entries_default"
MONTHS_AHEAD = 3
# Held while a month is made: two workers never make the same month at once.
_LOCK = 7_324_010
_LOCK_TIMEOUT = "500ms"


def partition_name(month: date) -> str:
    return f"{TABLE}_{month.year:04d}_{month.month:02d}"


def add_months(month: date, months: int) -> date:
    """The first day of the month `months` after `month`'s."""
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """The month's created_at range, [start, end), in UTC."""
    start = datetime(month.year, month.month, 1, tzinfo=UTC)
    end = add_months(month, 1)
    return start, datetime(end.year, end.month, 1, tzinfo=UTC)


def ensure_partitions(
    pool: ConnectionPool, months_ahead: int = MONTHS_AHEAD, today: date | None = None
) -> list[str]:
    """Make this month's partition and the next `months_ahead`, and one for each month the
    DEFAULT partition holds rows of, moving those rows into it. Returns the partitions made.

    Idempotent, and safe with several workers at once; a month whose locks are busy is left to
    the next call.
    """
    this_month = (today or datetime.now(UTC).date()).replace(day=1)
    wanted = {add_months(this_month, step) for step in range(months_ahead + 1)}
    made = []
    with connection(pool) as conn:
        in_default = _months_in_default(conn)
        for month in sorted(wanted | in_default):
            try:
                if _make(conn, month):
                    made.append(partition_name(month))
                elif month in in_default:
                    # A table of the month's name that is not its partition: an archived month.
                    log.warning(
                        "rows of %s stay in %s: a table of that name exists, not attached",
                        partition_name(month), DEFAULT_PARTITION,
                    )  # fmt: skip
            except psycopg.errors.LockNotAvailable:
                log.warning("%s: its locks are busy; tried again later", partition_name(month))
    for name in made:
        log.info("made ledger partition %s", name)
    return made


def _months_in_default(conn: psycopg.Connection) -> set[date]:
    rows = conn.execute(
        "SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date"
        f" FROM {DEFAULT_PARTITION}"
    ).fetchall()
    return {row[0] for row in rows}


def _make(conn: psycopg.Connection, month: date) -> bool:
    """Make the month's partition, moving its rows out of the DEFAULT, unless a table of its
    name exists already; True if it made it."""
    name = partition_name(month)
    start, end = month_bounds(month)
    table, parent = sql.Identifier(name), sql.Identifier(TABLE)
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        if one(conn.execute("SELECT to_regclass(%s)", (name,)).fetchone())[0] is not None:
            return False
        # First, so that no row of the month lands in the DEFAULT between the move and the
        # attach (which would refuse it); the attach takes this lock anyway.
        conn.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
                " INCLUDING STORAGE)"
            ).format(table, parent)
        )
        # Into the plain table, not through ledger_entries: these rows are in the ledger
        # already, and its insert triggers (the summaries) must not count them again.
        moved = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {} WHERE created_at >= %s AND created_at < %s"
                " RETURNING *) INSERT INTO {} SELECT * FROM moved"
            ).format(sql.Identifier(DEFAULT_PARTITION), table),
            (start, end),
        ).rowcount
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                parent, table, sql.Literal(start), sql.Literal(end)
            )
        )
    if moved:
        log.info("moved %s rows of %s out of %s", moved, name, DEFAULT_PARTITION)
    return True
