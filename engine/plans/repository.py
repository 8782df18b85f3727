"""All SQL of plan limits: which apps have one, and the monthly counts saved from Redis."""

from datetime import date

from psycopg_pool import ConnectionPool

from engine.store.db import connection


class PlanRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def capped_apps(self) -> list[str]:
        """Every app whose plan caps its monthly operations."""
        with connection(self._pool) as conn:
            rows = conn.execute(
                "SELECT app_id FROM apps WHERE plan_monthly_operations IS NOT NULL ORDER BY 1"
            ).fetchall()
        return [row[0] for row in rows]

    def saved(self, app_id: str, month: date) -> int:
        """The month's operations as last saved; 0 if never."""
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT operations FROM plan_usage WHERE app_id = %s AND month = %s",
                (app_id, month),
            ).fetchone()
        return int(row[0]) if row else 0

    def save(self, app_id: str, month: date, operations: int) -> None:
        with connection(self._pool) as conn:
            conn.execute(
                "INSERT INTO plan_usage (app_id, month, operations) VALUES (%s, %s, %s)"
                " ON CONFLICT (app_id, month) DO UPDATE SET operations = excluded.operations",
                (app_id, month, operations),
            )
