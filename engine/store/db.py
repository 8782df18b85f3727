"""PostgreSQL connections and schema migrations."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from engine.errors import UnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")

# A caller (a request, a CLI command) waits this long for a connection before it is told that
# PostgreSQL is unavailable: a command fails within 3 s.
_WAIT_SECONDS = 1.5
_CONNECT_SECONDS = 2
# Any one migration run at a time, across processes.
_MIGRATION_LOCK = 7_324_001


def open_pool(database_url: str, size: int = 4, *, wait: bool = False) -> ConnectionPool:
    """A pool that opens without waiting, so a process starts even while PostgreSQL is down."""
    pool = ConnectionPool(
        database_url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "connect_timeout": _CONNECT_SECONDS},
        open=False,
        timeout=_WAIT_SECONDS,
        # A connection broken by a PostgreSQL restart is replaced instead of handed out.
        check=ConnectionPool.check_connection,
        reconnect_timeout=0,  # keep trying for ever: PostgreSQL coming back must heal by itself
    )
    pool.open(wait=wait)
    return pool


@contextmanager
def connection(pool: ConnectionPool, timeout: float | None = None) -> Iterator[psycopg.Connection]:
    try:
        with pool.connection(timeout=timeout) as conn:
            yield conn
    except (PoolTimeout, psycopg.OperationalError) as exc:
        raise UnavailableError("PostgreSQL is unavailable; retry shortly", "postgresql") from exc


def migrate(pool: ConnectionPool, until: str | None = None) -> list[str]:
    """Apply the engine/migrations files not applied yet, in name order; return their names.

    `until` (a version, such as "0009_events_plans_limits") stops after that one: a test can
    build the schema an older Tally left and fill it before the next migration runs."""
    applied_now: list[str] = []
    with connection(pool) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            migrations = sorted(
                (p for p in files("engine.migrations").iterdir() if p.name.endswith(".sql")),
                key=lambda p: p.name,
            )
            for path in migrations:
                version = path.name.removesuffix(".sql")
                if until is not None and version > until:
                    break
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("applied migration %s", version)
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


def one(row: T | None) -> T:
    """The row a statement must return (INSERT ... RETURNING, an UPDATE of a known row)."""
    if row is None:
        raise RuntimeError("statement returned no row")
    return row
