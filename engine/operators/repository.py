"""All SQL for operators, their sessions and their failed sign-ins."""

from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from engine.store.db import connection


@dataclass(frozen=True, slots=True)
class Operator:
    email: str
    role: str  # admin or viewer
    disabled_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    email: str
    role: str
    csrf_token: str
    expires_at: datetime


_OPERATOR = "email, role, disabled_at, created_at"


class OperatorRepository:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def create(self, email: str, password_hash: str, role: str) -> Operator | None:
        """The new operator, or None when the email has one already."""
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Operator)) as cur:
            cur.execute(
                "INSERT INTO operators (email, password_hash, role) VALUES (%s, %s, %s)"
                f" ON CONFLICT DO NOTHING RETURNING {_OPERATOR}",
                (email, password_hash, role),
            )
            return cur.fetchone()

    def list(self) -> list[Operator]:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Operator)) as cur:
            cur.execute(f"SELECT {_OPERATOR} FROM operators ORDER BY created_at, email")
            return cur.fetchall()

    def password_hash(self, email: str) -> str | None:
        """The hash of an enabled operator's password."""
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT password_hash FROM operators WHERE email = %s AND disabled_at IS NULL",
                (email,),
            ).fetchone()
        return row[0] if row else None

    def update(
        self, email: str, *, password_hash: str | None = None, disable: bool = False
    ) -> Operator | None:
        """Set a new password or disable; either way every session of the operator ends."""
        with (
            connection(self._pool) as conn,
            conn.transaction(),
            conn.cursor(row_factory=class_row(Operator)) as cur,
        ):
            cur.execute(
                "UPDATE operators SET password_hash = coalesce(%s, password_hash),"
                " disabled_at = CASE WHEN %s THEN coalesce(disabled_at, now()) ELSE disabled_at"
                f" END, updated_at = now() WHERE email = %s RETURNING {_OPERATOR}",
                (password_hash, disable, email),
            )
            operator = cur.fetchone()
            cur.execute("DELETE FROM operator_sessions WHERE email = %s", (email,))
            return operator

    def recent_failures(self, email: str, window_seconds: int) -> tuple[int, datetime | None]:
        """Failed sign-ins of `email` within the window, and the oldest of them."""
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT count(*), min(failed_at) FROM sign_in_failures WHERE email = %s"
                " AND failed_at > now() - make_interval(secs => %s)",
                (email, window_seconds),
            ).fetchone()
        return (int(row[0]), row[1]) if row else (0, None)

    def record_failure(self, email: str, window_seconds: int) -> None:
        with connection(self._pool) as conn, conn.transaction():
            conn.execute(
                "DELETE FROM sign_in_failures WHERE email = %s"
                " AND failed_at <= now() - make_interval(secs => %s)",
                (email, window_seconds),
            )
            conn.execute("INSERT INTO sign_in_failures (email) VALUES (%s)", (email,))

    def clear_failures(self, email: str) -> None:
        with connection(self._pool) as conn:
            conn.execute("DELETE FROM sign_in_failures WHERE email = %s", (email,))

    def create_session(
        self, token_hash: bytes, email: str, csrf_token: str, lifetime_seconds: int
    ) -> None:
        with connection(self._pool) as conn:
            conn.execute(
                "INSERT INTO operator_sessions (token_hash, email, csrf_token, expires_at)"
                " VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
                (token_hash, email, csrf_token, lifetime_seconds),
            )

    def session(self, token_hash: bytes) -> Session | None:
        """A live session of an enabled operator."""
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(Session)) as cur:
            cur.execute(
                "SELECT s.email, o.role, s.csrf_token, s.expires_at"
                " FROM operator_sessions s JOIN operators o USING (email)"
                " WHERE s.token_hash = %s AND s.expires_at > now() AND o.disabled_at IS NULL",
                (token_hash,),
            )
            return cur.fetchone()

    def delete_session(self, token_hash: bytes) -> None:
        with connection(self._pool) as conn:
            conn.execute(
                "DELETE FROM operator_sessions WHERE token_hash = %s OR expires_at <= now()",
                (token_hash,),
            )
