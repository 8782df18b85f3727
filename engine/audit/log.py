"""What operators changed in the dashboard: who, when, which app, what (never a secret)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from engine.store.db import connection


@dataclass(frozen=True, slots=True)
class AuditEntry:
    audit_id: int
    at: datetime
    operator: str
    app_id: str | None
    action: str
    details: dict[str, Any]


class AuditLog:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def record(self, operator: str, action: str, app_id: str | None = None, **details: Any) -> None:
        with connection(self._pool) as conn:
            conn.execute(
                "INSERT INTO audit_log (operator, app_id, action, details) VALUES (%s, %s, %s, %s)",
                (operator, app_id, action, Jsonb(details)),
            )

    def page(self, limit: int, before: int | None = None) -> list[AuditEntry]:
        """Newest first; `before`: the audit_id the previous page ended at."""
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(AuditEntry)) as cur:
            cur.execute(
                "SELECT audit_id, at, operator, app_id, action, details FROM audit_log"
                " WHERE %(before)s::bigint IS NULL OR audit_id < %(before)s"
                " ORDER BY audit_id DESC LIMIT %(limit)s",
                {"before": before, "limit": limit},
            )
            return cur.fetchall()
