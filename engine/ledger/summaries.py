"""What the dashboard reads of the ledger: per-app totals, daily and hourly series, top users,
and the accounts list, all from the summaries the ledger's trigger keeps (migration 0007), so
none reads the ledger however large it grows. The accounts list reads one row per user of the
app (migration 0011 explains why no index orders it)."""

import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from engine.store.db import connection


@dataclass(frozen=True, slots=True)
class AppTotals:
    users: int
    added_today: int
    deducted_today: int
    deducts_today: int


@dataclass(frozen=True, slots=True)
class Day:
    day: date
    added: int
    deducted: int
    refusals: int


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    balance: int  # as of the latest persisted entry
    last_activity_at: datetime


class Refusals:
    """Deducts refused for insufficient credits, counted per app and hour in this process
    until `take()` hands them to be added to PostgreSQL."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, int]] = Counter()

    def count(self, app_id: str) -> None:
        self._counts[app_id, int(time.time()) // 3600] += 1

    def take(self) -> Counter[tuple[str, int]]:
        counts, self._counts = self._counts, Counter()
        return counts

    def restore(self, counts: Counter[tuple[str, int]]) -> None:
        """Counts `take()` gave that could not be saved: they go with the next ones."""
        self._counts.update(counts)


class Summaries:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def app_totals(self) -> dict[str, AppTotals]:
        """Every app's users and today's (UTC) credits added and deducted."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT a.app_id,"
                " (SELECT count(*) FROM accounts c WHERE c.app_id = a.app_id),"
                " coalesce(sum(h.credits) FILTER (WHERE h.kind = 'add'), 0),"
                " coalesce(-sum(h.credits) FILTER (WHERE h.kind = 'deduct'), 0),"
                " coalesce(sum(h.entries) FILTER (WHERE h.kind = 'deduct'), 0)"
                " FROM apps a LEFT JOIN ledger_hourly h ON h.app_id = a.app_id"
                "  AND h.hour >= date_trunc('day', now(), 'UTC')"
                " GROUP BY a.app_id"
            ).fetchall()
        return {row[0]: AppTotals(*(int(value) for value in row[1:])) for row in rows}

    def days(self, app_id: str, count: int) -> list[Day]:
        """The last `count` UTC days, oldest first, today included."""
        today = datetime.now(UTC).date()
        first = today - timedelta(days=count - 1)
        with connection(self._pool) as conn:
            entries = conn.execute(
                "SELECT (hour AT TIME ZONE 'UTC')::date,"
                " coalesce(sum(credits) FILTER (WHERE kind = 'add'), 0),"
                " coalesce(-sum(credits) FILTER (WHERE kind = 'deduct'), 0)"
                " FROM ledger_hourly WHERE app_id = %s AND hour >= %s GROUP BY 1",
                (app_id, _midnight(first)),
            ).fetchall()
            refused = conn.execute(
                "SELECT (hour AT TIME ZONE 'UTC')::date, sum(refusals) FROM refusals_hourly"
                " WHERE app_id = %s AND hour >= %s GROUP BY 1",
                (app_id, _midnight(first)),
            ).fetchall()
        by_day = {row[0]: (int(row[1]), int(row[2])) for row in entries}
        refusals = {row[0]: int(row[1]) for row in refused}
        days = (first + timedelta(days=n) for n in range(count))
        return [Day(d, *by_day.get(d, (0, 0)), refusals.get(d, 0)) for d in days]

    def deducts_per_hour(self, app_id: str, hours: int) -> list[tuple[datetime, int]]:
        """Deducts in each of the last `hours` UTC hours, oldest first, this one included."""
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        first = now - timedelta(hours=hours - 1)
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT hour, entries FROM ledger_hourly"
                " WHERE app_id = %s AND kind = 'deduct' AND hour >= %s",
                (app_id, first),
            ).fetchall()
        counts = {row[0]: int(row[1]) for row in rows}
        slots = (first + timedelta(hours=n) for n in range(hours))
        return [(hour, counts.get(hour, 0)) for hour in slots]

    def top_users(self, app_id: str, days: int, limit: int) -> list[tuple[str, int]]:
        """The users who deducted the most credits in the last `days` UTC days."""
        first = datetime.now(UTC).date() - timedelta(days=days - 1)
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT user_id, sum(deducted) FROM usage_daily WHERE app_id = %s AND day >= %s"
                " GROUP BY user_id ORDER BY 2 DESC, user_id LIMIT %s",
                (app_id, first, limit),
            ).fetchall()
        return [(row[0], int(row[1])) for row in rows]

    def accounts(
        self, app_id: str, prefix: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[Account]:
        """Accounts whose user id starts with `prefix`, most recently active first; `after`:
        the (last_activity_at, user_id) the previous page ended at."""
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Account)) as cur:
            cur.execute(
                "SELECT user_id, balance, last_activity_at FROM accounts"
                " WHERE app_id = %(app)s AND user_id LIKE %(like)s"
                " AND (%(at)s::timestamptz IS NULL"
                "  OR (last_activity_at, user_id) < (%(at)s, %(user)s))"
                " ORDER BY last_activity_at DESC, user_id DESC LIMIT %(limit)s",
                {
                    "app": app_id,
                    "like": like,
                    "at": after[0] if after else None,
                    "user": after[1] if after else None,
                    "limit": limit,
                },
            )
            return cur.fetchall()

    def add_refusals(self, counts: Counter[tuple[str, int]]) -> None:
        rows = [
            (app_id, datetime.fromtimestamp(hour * 3600, UTC), n)
            for (app_id, hour), n in sorted(counts.items())
        ]
        with connection(self._pool) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO refusals_hourly AS r (app_id, hour, refusals) VALUES (%s, %s, %s)"
                " ON CONFLICT (app_id, hour)"
                " DO UPDATE SET refusals = r.refusals + excluded.refusals",
                rows,
            )


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
