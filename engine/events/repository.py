"""All SQL for webhook endpoints, events and their deliveries. Signing secrets are sealed on the
way in and opened on the way out (engine/vault)."""

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from engine.events.types import Event
from engine.store.db import connection
from engine.vault.keyring import Keyring


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    app_id: str
    url: str
    events: list[str]  # empty: every type
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: int
    event_id: str
    endpoint_id: str
    event_type: str
    user_id: str | None
    status: str  # pending, delivered, failed
    attempts: int
    response_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery to attempt: the event's body, where it goes, and how long it may be retried."""

    delivery_id: int
    event_id: str
    attempts: int
    url: str
    body: bytes
    secrets: list[str]
    give_up_at: datetime  # no attempt is scheduled after this


_ENDPOINT_COLUMNS = (
    "endpoint_id, app_id, url, events, secret, previous_secret, previous_secret_expires_at,"
    " created_at, updated_at"
)
_DELIVERY_COLUMNS = (
    "d.delivery_id, d.event_id, d.endpoint_id, e.type AS event_type, e.user_id, d.status,"
    " d.attempts, d.response_code, d.last_error,"
    " CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,"
    " d.delivered_at, d.created_at"
)
# An endpoint wants an event when it names its type or names none.
_WANTS = "(cardinality(w.events) = 0 OR {event}.type = ANY (w.events))"
# How long a queued delivery is left to the workers, and one being sent to its sender (beyond
# the job's time limit): a delivery whose job was lost, or whose sender died, is claimed again
# after these.
_QUEUED = "interval '10 minutes'"
_SENDING = "interval '30 seconds'"
# Deliveries one endpoint may have queued or in flight: a receiver that never answers holds at
# most this many of the senders' turns, and its retries then wait out their back-off.
_PER_ENDPOINT = 8


def insert_events(conn: psycopg.Connection, events: list[Event]) -> None:
    """Store the events some endpoint of their app wants, each once, with one pending delivery
    per such endpoint; part of the caller's transaction (the entries that caused them)."""
    if not events:
        return
    conn.execute(
        "WITH e AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
        "  %s::bigint[], %s::jsonb[], %s::bigint[])"
        "  AS e(event_id, app_id, user_id, type, sequence, data, created_ms)),"
        " made AS (INSERT INTO events (event_id, app_id, user_id, type, sequence, data, created_at)"
        "  SELECT event_id, app_id, user_id, type, sequence, data,"
        "   to_timestamp(created_ms / 1000.0) FROM e"
        f"  WHERE EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.app_id = e.app_id"
        f"   AND {_WANTS.format(event='e')})"
        "  ON CONFLICT (event_id) DO NOTHING RETURNING event_id, app_id, type, user_id, sequence)"
        " INSERT INTO event_deliveries (event_id, endpoint_id)"
        " SELECT made.event_id, w.endpoint_id FROM made JOIN webhook_endpoints w"
        f"  ON w.app_id = made.app_id AND {_WANTS.format(event='made')}"
        # Ids in the order receivers want them: each user's events by sequence.
        " ORDER BY made.user_id, made.sequence, made.event_id"
        " ON CONFLICT (event_id, endpoint_id) DO NOTHING",
        (
            [e.event_id for e in events],
            [e.app_id for e in events],
            [e.user_id for e in events],
            [e.type for e in events],
            [e.sequence for e in events],
            [Jsonb(e.data) for e in events],
            [e.created_at_ms for e in events],
        ),
    )


class EventRepository:
    def __init__(self, pool: ConnectionPool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    # Endpoints.

    def create_endpoint(
        self, endpoint_id: str, app_id: str, url: str, events: list[str], secret: str
    ) -> Endpoint:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Endpoint)) as cur:
            cur.execute(
                "INSERT INTO webhook_endpoints (endpoint_id, app_id, url, events, secret)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {_ENDPOINT_COLUMNS}",
                (endpoint_id, app_id, url, events, self._seal(secret, endpoint_id, "secret")),
            )
            return self._opened(_one(cur.fetchone()))

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Endpoint)) as cur:
            cur.execute(
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE endpoint_id = %s",
                (endpoint_id,),
            )
            found = cur.fetchone()
        return self._opened(found) if found else None

    def endpoints(self, app_id: str) -> list[Endpoint]:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Endpoint)) as cur:
            cur.execute(
                f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE app_id = %s"
                " ORDER BY created_at, endpoint_id",
                (app_id,),
            )
            return [self._opened(found) for found in cur.fetchall()]

    def update_endpoint(self, endpoint_id: str, changes: dict[str, Any]) -> Endpoint | None:
        """Change url and/or events."""
        assignments = [f"{column} = %s" for column in changes if column in ("url", "events")]
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Endpoint)) as cur:
            cur.execute(
                f"UPDATE webhook_endpoints SET {', '.join([*assignments, 'updated_at = now()'])}"
                f" WHERE endpoint_id = %s RETURNING {_ENDPOINT_COLUMNS}",
                (*changes.values(), endpoint_id),
            )
            found = cur.fetchone()
        return self._opened(found) if found else None

    def rotate_secret(self, endpoint_id: str, secret: str, overlap_seconds: int) -> Endpoint | None:
        """A new signing secret; the current one keeps signing for `overlap_seconds`."""
        with connection(self._pool) as conn, conn.transaction():
            row = conn.execute(
                "SELECT secret FROM webhook_endpoints WHERE endpoint_id = %s FOR UPDATE",
                (endpoint_id,),
            ).fetchone()
            if row is None:
                return None
            # Each value is sealed for its column: the current secret is sealed again as the
            # previous one.
            current = self._keyring.open(row[0], endpoint_id, "secret")
            with conn.cursor(row_factory=class_row(Endpoint)) as cur:
                cur.execute(
                    "UPDATE webhook_endpoints SET secret = %s, previous_secret = %s,"
                    " previous_secret_expires_at = now() + make_interval(secs => %s),"
                    " updated_at = now()"
                    f" WHERE endpoint_id = %s RETURNING {_ENDPOINT_COLUMNS}",
                    (
                        self._seal(secret, endpoint_id, "secret"),
                        self._seal(current, endpoint_id, "previous_secret"),
                        overlap_seconds,
                        endpoint_id,
                    ),
                )
                return self._opened(_one(cur.fetchone()))

    def delete_endpoint(self, endpoint_id: str) -> bool:
        with connection(self._pool) as conn:
            cursor = conn.execute(
                "DELETE FROM webhook_endpoints WHERE endpoint_id = %s", (endpoint_id,)
            )
            return cursor.rowcount > 0

    # Deliveries.

    def claim_due(self, limit: int) -> list[tuple[int, str]]:
        """Pending deliveries whose time has come and that no job holds, oldest first, at most
        _PER_ENDPOINT held per endpoint: (delivery_id, claim) each, the claim its job carries."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "WITH due AS (SELECT delivery_id, endpoint_id FROM event_deliveries"
                "  WHERE status = 'pending' AND next_attempt_at <= now()"
                "   AND (claimed_until IS NULL OR claimed_until < now())"
                "  ORDER BY next_attempt_at LIMIT %s),"
                " held AS (SELECT endpoint_id, count(*) AS n FROM event_deliveries"
                "  WHERE status = 'pending' AND claimed_until >= now()"
                "   AND endpoint_id IN (SELECT endpoint_id FROM due) GROUP BY endpoint_id),"
                " ranked AS (SELECT due.delivery_id, coalesce(held.n, 0)"
                "   + row_number() OVER (PARTITION BY due.endpoint_id ORDER BY due.delivery_id)"
                "   AS place FROM due LEFT JOIN held USING (endpoint_id))"
                f" UPDATE event_deliveries d SET claimed_until = now() + {_QUEUED},"
                "  claim = gen_random_uuid() FROM ranked"
                " WHERE d.delivery_id = ranked.delivery_id AND ranked.place <= %s"
                # Checked again on the locked row: another worker's sweep may have claimed it.
                "  AND d.status = 'pending'"
                "  AND (d.claimed_until IS NULL OR d.claimed_until < now())"
                " RETURNING d.delivery_id, d.claim::text",
                (limit, _PER_ENDPOINT),
            ).fetchall()
        return sorted((row[0], row[1]) for row in rows)

    def outgoing(self, delivery_id: int, claim: str) -> Outgoing | None:
        """The delivery this job's claim holds, now marked as being sent, and what to send;
        None if it is no longer pending, not yet due, or claimed since by another job."""
        with connection(self._pool) as conn:
            row = conn.execute(
                "WITH d AS (UPDATE event_deliveries SET claimed_until = now() + "
                + _SENDING
                + "  WHERE delivery_id = %s AND claim = %s AND status = 'pending'"
                "   AND next_attempt_at <= now() AND claimed_until >= now()"
                "  RETURNING delivery_id, event_id, endpoint_id, attempts, give_up_at)"
                " SELECT d.delivery_id, d.event_id, d.attempts, w.url, e.type, e.data,"
                " e.created_at, w.endpoint_id, w.secret, w.previous_secret,"
                " w.previous_secret_expires_at > now(), d.give_up_at"
                " FROM d JOIN events e USING (event_id)"
                " JOIN webhook_endpoints w USING (endpoint_id)",
                (delivery_id, claim),
            ).fetchone()
        if row is None:
            return None
        (delivery, event, attempts, url, kind, data, created, endpoint, secret, previous,
         overlapping, give_up_at) = row  # fmt: skip
        secrets = [self._keyring.open(secret, endpoint, "secret")]
        if previous is not None and overlapping:
            secrets.append(self._keyring.open(previous, endpoint, "previous_secret"))
        stamp = created.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = orjson.dumps({"type": kind, "timestamp": stamp, "data": data})
        return Outgoing(delivery, event, attempts, url, body, secrets, give_up_at)

    def delivered(self, delivery_id: int, response_code: int) -> None:
        with connection(self._pool) as conn:
            conn.execute(
                "UPDATE event_deliveries SET status = 'delivered', attempts = attempts + 1,"
                " response_code = %s, last_error = NULL, delivered_at = now(),"
                " claimed_until = NULL, claim = NULL"
                " WHERE delivery_id = %s AND status = 'pending'",
                (response_code, delivery_id),
            )

    def attempt_failed(
        self, delivery_id: int, response_code: int | None, error: str, retry_at: datetime | None
    ) -> None:
        """One more failed attempt: retried at `retry_at`, or failed for good when None."""
        with connection(self._pool) as conn:
            conn.execute(
                "UPDATE event_deliveries SET attempts = attempts + 1, response_code = %s,"
                " last_error = %s, claimed_until = NULL, claim = NULL,"
                " status = CASE WHEN %s::timestamptz IS NULL THEN 'failed' ELSE status END,"
                " next_attempt_at = coalesce(%s::timestamptz, next_attempt_at)"
                " WHERE delivery_id = %s AND status = 'pending'",
                (response_code, error[:1000], retry_at, retry_at, delivery_id),
            )

    def redeliver(self, event_id: str) -> list[int]:
        """Send an event again to every endpoint it went to, whatever became of it, retried
        for a day from now."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "UPDATE event_deliveries SET status = 'pending', next_attempt_at = now(),"
                " claimed_until = NULL, claim = NULL, delivered_at = NULL,"
                " give_up_at = now() + interval '24 hours' WHERE event_id = %s"
                " RETURNING delivery_id",
                (event_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def deliveries(
        self, *, endpoint_id: str | None = None, event_id: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """Newest first."""
        where, value = ("d.endpoint_id", endpoint_id) if endpoint_id else ("d.event_id", event_id)
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Delivery)) as cur:
            cur.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM event_deliveries d JOIN events e USING (event_id)"
                f" WHERE {where} = %s ORDER BY d.delivery_id DESC LIMIT %s",
                (value, limit),
            )
            return cur.fetchall()

    def event_app(self, event_id: str) -> str | None:
        with connection(self._pool) as conn:
            row = conn.execute("SELECT app_id FROM events WHERE event_id = %s", (event_id,))
            found = row.fetchone()
        return found[0] if found else None

    def insert(self, events: list[Event]) -> None:
        """Events whose cause is not a ledger entry (an auto top-up's outcome)."""
        with connection(self._pool) as conn, conn.transaction():
            insert_events(conn, events)

    def _seal(self, secret: str, endpoint_id: str, column: str) -> str:
        return self._keyring.seal(secret, endpoint_id, column)

    def _opened(self, endpoint: Endpoint) -> Endpoint:
        previous = endpoint.previous_secret
        return replace(
            endpoint,
            secret=self._keyring.open(endpoint.secret, endpoint.endpoint_id, "secret"),
            previous_secret=None
            if previous is None
            else self._keyring.open(previous, endpoint.endpoint_id, "previous_secret"),
        )


def _one(row: Endpoint | None) -> Endpoint:
    if row is None:
        raise RuntimeError("INSERT ... RETURNING returned nothing")
    return row
