"""All SQL for the ledger: entries, account snapshots, reconciliation reports."""

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from engine.events.repository import insert_events
from engine.events.types import Event
from engine.models import LedgerEntry
from engine.store.db import connection, one
from engine.store.keys import ledger_id_ms, shard_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    balance: int
    seq: int
    updated_at: datetime | None
    expiring: bool  # some entry made or settled a grant or hold


# The entries engine.ledger.expiring rebuilds grants and holds from.
_EXPIRING = "l.expires_at IS NOT NULL OR l.hold_id IS NOT NULL OR l.grants IS NOT NULL"
# What the archived months of an account held (engine/ledger/retention.py), as one row.
_ARCHIVED = (
    "SELECT sum(a.entries) AS entries, sum(a.amount) AS amount, max(a.last_seq) AS seq,"
    " max(a.last_created_at) AS at FROM ledger_archived a"
)
# A new ledger id carries its entry's created_at (engine.store.keys.new_ledger_id): a lookup by
# id reads only the months within this of it, which prunes to one partition (two at a month's
# edge). Generous on purpose: a miss costs a second lookup in every month.
_ID_CLOCK_SKEW = timedelta(days=1)
_LAST_MS = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp() * 1000)


class LedgerRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def users_of(self, app_id: str) -> int:
        """The app's users: those with a persisted entry, and those a plan let in."""
        with connection(self._pool) as conn:
            row = conn.execute("SELECT count(*) FROM accounts WHERE app_id = %s", (app_id,))
            return int(one(row.fetchone())[0])

    def admit_users(self, app_id: str, user_ids: list[str], allowed: int) -> tuple[list[str], int]:
        """Let in as many of these new users as `allowed` users leaves room for, in order, each
        recorded as an account at once (so every API process counts it); returns the users
        refused and the count before. One app's admissions are serialized."""
        with connection(self._pool) as conn, conn.transaction():
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 2))", (f"users:{app_id}",)
            )
            row = conn.execute("SELECT count(*) FROM accounts WHERE app_id = %s", (app_id,))
            users = int(one(row.fetchone())[0])
            room = max(0, allowed - users)
            if room and user_ids[:room]:
                conn.execute(
                    "INSERT INTO accounts (app_id, user_id, balance, last_seq, last_activity_at)"
                    " SELECT %s, unnest(%s::text[]), 0, 0, now() ON CONFLICT DO NOTHING",
                    (app_id, user_ids[:room]),
                )
        return user_ids[room:], users

    def account_snapshots(self, app_id: str, user_ids: list[str]) -> dict[str, "Snapshot"]:
        """Accounts as their ledger holds them, archived months included: balance, last seq,
        last change (None: never), and whether any entry made or settled a grant or hold."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT t.user_id, coalesce(l.amount, 0) + coalesce(a.amount, 0),"
                " greatest(l.seq, a.seq, 0), greatest(l.at, a.at), coalesce(l.expiring, false)"
                " FROM unnest(%s::text[]) AS t(user_id)"
                " CROSS JOIN LATERAL (SELECT sum(l.amount) AS amount, max(l.seq) AS seq,"
                f"  max(l.created_at) AS at, bool_or({_EXPIRING}) AS expiring"
                "  FROM ledger_entries l WHERE l.app_id = %s AND l.user_id = t.user_id) l"
                f" CROSS JOIN LATERAL ({_ARCHIVED}"
                "  WHERE a.app_id = %s AND a.user_id = t.user_id) a",
                (user_ids, app_id, app_id),
            ).fetchall()
        return {row[0]: Snapshot(int(row[1]), int(row[2]), row[3], row[4]) for row in rows}

    def all_account_snapshots(self) -> Iterator[tuple[str, str, "Snapshot"]]:
        """Every account the ledger knows, as account_snapshots reads one, streamed."""
        with (
            connection(self._pool) as conn,
            conn.transaction(),
            conn.cursor(name="all_accounts") as cursor,
        ):
            cursor.itersize = 10_000
            cursor.execute(
                "SELECT app_id, user_id, sum(amount), max(seq), max(created_at), bool_or(expiring)"
                " FROM (SELECT app_id, user_id, amount, seq, created_at,"
                f"  {_EXPIRING} AS expiring FROM ledger_entries l"
                "  UNION ALL SELECT app_id, user_id, amount, last_seq, last_created_at, false"
                "  FROM ledger_archived) l GROUP BY app_id, user_id"
            )
            for app_id, user_id, balance, seq, updated_at, expiring in cursor:
                yield app_id, user_id, Snapshot(int(balance), int(seq), updated_at, expiring)

    def expiring_entries(
        self, accounts: list[tuple[str, str, int]]
    ) -> dict[tuple[str, str], list[LedgerEntry]]:
        """For (app_id, user_id, seq) triples: the account's entries up to that seq that made,
        used or settled a grant or hold, in seq order (engine.ledger.expiring)."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS}"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS t(app_id, user_id, seq)"
                " JOIN ledger_entries l ON l.app_id = t.app_id AND l.user_id = t.user_id"
                f"  AND l.seq <= t.seq AND ({_EXPIRING}) ORDER BY l.seq",
                ([a[0] for a in accounts], [a[1] for a in accounts], [a[2] for a in accounts]),
            ).fetchall()
        found: dict[tuple[str, str], list[LedgerEntry]] = {(a[0], a[1]): [] for a in accounts}
        for row in rows:
            entry = _entry(row)
            found[(entry.app_id, entry.user_id)].append(entry)
        return found

    def hold_entries(self, app_id: str, hold_id: str) -> list[LedgerEntry]:
        """The persisted entries of one hold: its own, and the one that settled it."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries l"
                " WHERE l.hold_id = %s AND l.app_id = %s ORDER BY l.seq",
                (hold_id, app_id),
            ).fetchall()
        return [_entry(row) for row in rows]

    def find_entry(self, ledger_id: UUID) -> LedgerEntry | None:
        """The persisted entry: looked for in the month its id's time names, then in every month
        (an id without a time, a created_at changed since it was written, or no such entry)."""
        query = f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries l WHERE ledger_id = %s"
        window = _id_window(ledger_id)
        with connection(self._pool) as conn:
            if window is not None:
                bounded = query + " AND created_at BETWEEN %s AND %s"
                row = conn.execute(bounded, (ledger_id, *window)).fetchone()
                if row:
                    return _entry(row)
            row = conn.execute(query, (ledger_id,)).fetchone()
        return _entry(row) if row else None

    def refund_of(self, ledger_id: UUID) -> str | None:
        """The ledger id of the persisted refund of `ledger_id`, if there is one."""
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT ledger_id::text FROM ledger_refunds WHERE refund_of = %s", (ledger_id,)
            ).fetchone()
        return row[0] if row else None

    def refunded(self, ledger_ids: list[str]) -> set[str]:
        """Which of these entries have a persisted refund."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT refund_of::text FROM ledger_refunds WHERE refund_of = ANY(%s::uuid[])",
                (ledger_ids,),
            ).fetchall()
        return {row[0] for row in rows}

    def entries_between(self, app_id: str, user_id: str, low: int, high: int) -> list[LedgerEntry]:
        """The account's entries with seq from `low` to `high`, newest first."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries l WHERE app_id = %s AND user_id = %s"
                " AND seq BETWEEN %s AND %s ORDER BY seq DESC",
                (app_id, user_id, low, high),
            ).fetchall()
        return [_entry(row) for row in rows]

    def insert_entries(
        self,
        entries: list[LedgerEntry],
        dead: list[tuple[int, str, str, str]],
        events: Sequence[Event] = (),
    ) -> int:
        """insert_json for entries given as objects (restores, tests)."""
        rows = [(_shard(entry), entry.ledger_id, entry.to_json()) for entry in entries]
        return self.insert_json(rows, dead, events)

    def insert_json(
        self,
        entries: Sequence[tuple[int, str, str]],
        dead: list[tuple[int, str, str, str]],
        events: Sequence[Event] = (),
    ) -> int:
        """Insert entries not yet present, the events they caused, and dead letters, in one
        transaction. Each entry is (shard, ledger_id, JSON as the Lua scripts write it):
        PostgreSQL reads the JSON itself, which costs it about what unnest's arrays did and
        spares the worker building them.

        Returns how many entries were new. An entry PostgreSQL refuses makes the whole batch
        go again one entry at a time, the refused ones into `outbox_dead_letters`
        (shard, ref, payload, error) instead of blocking the stream, without their events.
        """
        with connection(self._pool) as conn:
            try:
                with conn.transaction():
                    inserted = _insert(conn, [payload for _, _, payload in entries])
                    insert_events(conn, list(events))
                    _insert_dead(conn, dead)
                    return inserted
            except (psycopg.DataError, psycopg.IntegrityError):
                log.exception("batch refused; inserting entry by entry")
            inserted = 0
            with conn.transaction():
                for shard, ledger_id, payload in entries:
                    try:
                        with conn.transaction():
                            inserted += _insert(conn, [payload])
                    except (psycopg.DataError, psycopg.IntegrityError) as exc:
                        dead.append((shard, ledger_id, payload, str(exc)))
                refused = {ref for _, ref, _, _ in dead}
                try:
                    with conn.transaction():
                        insert_events(conn, [e for e in events if e.ledger_id not in refused])
                except (psycopg.DataError, psycopg.IntegrityError):
                    # The entries must not wait behind their events: these are lost, loudly.
                    log.exception("events of a refused batch refused too; dropped")
                _insert_dead(conn, dead)
            return inserted

    def ledger_totals(
        self, accounts: list[tuple[str, str, int]]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """For (app_id, user_id, seq) triples: (entries with seq <= it, their sum) per account,
        archived months included."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT t.app_id, t.user_id, l.entries + coalesce(a.entries, 0),"
                " coalesce(l.amount, 0) + coalesce(a.amount, 0)"
                " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS t(app_id, user_id, seq)"
                " CROSS JOIN LATERAL (SELECT count(*) AS entries, sum(l.amount) AS amount"
                "  FROM ledger_entries l WHERE l.app_id = t.app_id AND l.user_id = t.user_id"
                "  AND l.seq <= t.seq) l"
                f" CROSS JOIN LATERAL ({_ARCHIVED}"
                "  WHERE a.app_id = t.app_id AND a.user_id = t.user_id AND a.last_seq <= t.seq) a",
                ([a[0] for a in accounts], [a[1] for a in accounts], [a[2] for a in accounts]),
            ).fetchall()
        return {(row[0], row[1]): (int(row[2]), int(row[3])) for row in rows}

    def last_report(self) -> dict[str, Any] | None:
        """The latest reconciliation's report, as save_report stored it."""
        with connection(self._pool) as conn:
            cursor = conn.execute(
                "SELECT report_id, started_at, finished_at, accounts_checked, accounts_skipped,"
                " drifted, repaired, drift FROM reconciliation_reports"
                " ORDER BY report_id DESC LIMIT 1"
            )
            row = cursor.fetchone()
            names = [column.name for column in cursor.description or ()]
        return dict(zip(names, row, strict=True)) if row else None

    def save_report(self, report: dict[str, Any]) -> int:
        with connection(self._pool) as conn:
            row = conn.execute(
                "INSERT INTO reconciliation_reports (started_at, finished_at, accounts_checked,"
                " accounts_skipped, drifted, repaired, drift)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING report_id",
                (
                    report["started_at"],
                    report["finished_at"],
                    report["accounts_checked"],
                    report["accounts_skipped"],
                    len(report["drift"]),
                    report["repaired"],
                    Jsonb(report["drift"]),
                ),
            ).fetchone()
        assert row is not None
        return int(row[0])


_ENTRY_COLUMNS = (
    "l.ledger_id::text, l.app_id, l.user_id, l.kind, l.amount, l.balance_after, l.description,"
    " l.reference_id, l.metadata, l.idempotency_key, l.refund_of::text, l.seq,"
    " (extract(epoch FROM l.created_at) * 1000)::bigint, l.hold_id, l.held,"
    " (extract(epoch FROM l.expires_at) * 1000)::bigint, l.grants"
)


def _id_window(ledger_id: UUID) -> tuple[datetime, datetime] | None:
    """The created_at range a ledger id's time names; None when it names none (a version 8 id
    derived from a random one can carry any 48 bits, past what datetime holds)."""
    stamped = ledger_id_ms(ledger_id)
    if stamped is None or stamped >= _LAST_MS:
        return None
    at = datetime.fromtimestamp(stamped / 1000, UTC)
    return at - _ID_CLOCK_SKEW, at + _ID_CLOCK_SKEW


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(*row)


def _insert(conn: psycopg.Connection, payloads: list[str]) -> int:
    if not payloads:
        return 0
    cursor = conn.execute(
        "INSERT INTO ledger_entries (ledger_id, app_id, user_id, kind, amount, balance_after,"
        " description, reference_id, metadata, idempotency_key, refund_of, seq, created_at,"
        " hold_id, held, expires_at, grants)"
        " SELECT ledger_id, app_id, user_id, kind, amount, balance_after, description,"
        "  reference_id, metadata, idempotency_key, refund_of, seq,"
        "  timestamptz 'epoch' + created_at * interval '1 millisecond', hold_id, held,"
        "  timestamptz 'epoch' + expires_at * interval '1 millisecond', grants"
        # json, not jsonb: read once, front to back; metadata and grants become jsonb with
        # their numbers exact, however big.
        " FROM json_to_recordset(%s::json) AS e(ledger_id uuid, app_id text, user_id text,"
        "  kind text, amount bigint, balance_after bigint, description text, reference_id text,"
        "  metadata jsonb, idempotency_key text, refund_of uuid, seq bigint, created_at bigint,"
        "  hold_id text, held bigint, expires_at bigint, grants jsonb)"
        # No conflict target: a replayed entry (same ledger_id) is skipped, and so is a second
        # refund of one entry, which the scripts already refuse; reconciliation would show it.
        " ON CONFLICT DO NOTHING",
        (f"[{','.join(payloads)}]",),
    )
    return cursor.rowcount


def _insert_dead(conn: psycopg.Connection, dead: list[tuple[int, str, str, str]]) -> None:
    if dead:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO outbox_dead_letters (shard, ref, payload, error)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                dead,
            )


def _shard(entry: LedgerEntry) -> int:
    return shard_of(entry.app_id, entry.user_id)
