"""All SQL for apps and their API keys. Secrets are sealed on the way in, opened on the way out."""

from dataclasses import fields, replace
from typing import Any

from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from engine.models import CREDITS_CONFIG, ApiKey, App, AppContext
from engine.store.db import connection, one
from engine.vault.keyring import Keyring
from engine.vault.stored import SEALED

_APP_COLUMNS = ", ".join(f.name for f in fields(App))
_KEY_COLUMNS = ", ".join(f.name for f in fields(ApiKey))

# The app columns `tally apps update` and PATCH /credits/config may change.
APP_SETTINGS = (
    "overdraft_limit",
    "credit_rate",
    "stripe_webhook_secret",
    "polar_webhook_secret",
    "lemonsqueezy_webhook_secret",
    "client_token_secret",
    "cors_origins",
    "stripe_secret_key",
    "auto_top_up_daily_limit_cents",
    "low_balance_thresholds",
    "plan_max_users",
    "plan_monthly_operations",
    *CREDITS_CONFIG,
)
SECRET_COLUMNS = SEALED["apps"][1]


class AppRepository:
    def __init__(self, pool: ConnectionPool, keyring: Keyring) -> None:
        self._pool = pool
        self._keyring = keyring

    @property
    def seals(self) -> bool:
        """Whether secrets can be stored: TALLY_SECRET_KEY is set."""
        return self._keyring.current_id is not None

    def create_app(self, app_id: str, name: str, client_token_secret: str | None) -> App:
        sealed = client_token_secret and self._keyring.seal(
            client_token_secret, app_id, "client_token_secret"
        )
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(App)) as cur:
            cur.execute(
                "INSERT INTO apps (app_id, name, client_token_secret) VALUES (%s, %s, %s)"
                f" RETURNING {_APP_COLUMNS}",
                (app_id, name, sealed),
            )
            return self._opened(one(cur.fetchone()))

    def get_app(self, app_id: str) -> App | None:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(App)) as cur:
            cur.execute(f"SELECT {_APP_COLUMNS} FROM apps WHERE app_id = %s", (app_id,))
            app = cur.fetchone()
        return self._opened(app) if app else None

    def list_apps(self) -> list[App]:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(App)) as cur:
            cur.execute(f"SELECT {_APP_COLUMNS} FROM apps ORDER BY created_at")
            return [self._opened(app) for app in cur.fetchall()]

    def update_app(self, app_id: str, changes: dict[str, Any]) -> App | None:
        assignments = [f"{column} = %s" for column in changes if column in APP_SETTINGS]
        if len(assignments) != len(changes):
            raise ValueError(f"not app settings: {sorted(set(changes) - set(APP_SETTINGS))}")
        values = [
            self._keyring.seal(value, app_id, column)
            if column in SECRET_COLUMNS and value is not None
            else value
            for column, value in changes.items()
        ]
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(App)) as cur:
            cur.execute(
                f"UPDATE apps SET {', '.join([*assignments, 'updated_at = now()'])}"
                f" WHERE app_id = %s RETURNING {_APP_COLUMNS}",
                (*values, app_id),
            )
            app = cur.fetchone()
        return self._opened(app) if app else None

    def first_client_token_secret(self, app_id: str, secret: str) -> App | None:
        """Store `secret` unless the app has a signing secret already (a concurrent first
        token's): every token then verifies against the one that stayed."""
        sealed = self._keyring.seal(secret, app_id, "client_token_secret")
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(App)) as cur:
            cur.execute(
                "UPDATE apps SET client_token_secret = coalesce(client_token_secret, %s)"
                f" WHERE app_id = %s RETURNING {_APP_COLUMNS}",
                (sealed, app_id),
            )
            app = cur.fetchone()
        return self._opened(app) if app else None

    def _opened(self, app: App) -> App:
        opened: dict[str, Any] = {
            column: self._keyring.open(stored, app.app_id, column)
            for column in SECRET_COLUMNS
            if (stored := getattr(app, column)) is not None
        }
        return replace(app, **opened) if opened else app

    def origin_allowed(self, origin: str) -> bool:
        """Whether any app lets browsers at `origin` call /client/... (CORS preflights)."""
        with connection(self._pool) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM apps WHERE %s = ANY (cors_origins))", (origin,)
            ).fetchone()
        return bool(row and row[0])

    def create_key(
        self, key_id: str, app_id: str, key_hash: bytes, key_prefix: str, rate_limit: int | None
    ) -> ApiKey:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(ApiKey)) as cur:
            cur.execute(
                "INSERT INTO api_keys (key_id, app_id, key_hash, key_prefix, rate_limit)"
                f" VALUES (%s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
                (key_id, app_id, key_hash, key_prefix, rate_limit),
            )
            return one(cur.fetchone())

    def set_rate_limit(self, key_id: str, rate_limit: int | None) -> ApiKey | None:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(ApiKey)) as cur:
            cur.execute(
                f"UPDATE api_keys SET rate_limit = %s WHERE key_id = %s RETURNING {_KEY_COLUMNS}",
                (rate_limit, key_id),
            )
            return cur.fetchone()

    def list_keys(self, app_id: str) -> list[ApiKey]:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(ApiKey)) as cur:
            cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE app_id = %s ORDER BY created_at",
                (app_id,),
            )
            return cur.fetchall()

    def revoke_key(self, key_id: str) -> ApiKey | None:
        with connection(self._pool) as conn, conn.cursor(row_factory=class_row(ApiKey)) as cur:
            cur.execute(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())"
                f" WHERE key_id = %s RETURNING {_KEY_COLUMNS}",
                (key_id,),
            )
            return cur.fetchone()

    def app_for_key(self, key_hash: bytes, timeout: float | None = None) -> AppContext | None:
        with connection(self._pool, timeout) as conn:
            # The key cache looks a key up again while it is in use, so last_used_at is
            # right to within that cache's lifetime at no cost per request.
            row = conn.execute(
                "WITH k AS (UPDATE api_keys SET last_used_at = now()"
                "  WHERE key_hash = %s AND revoked_at IS NULL RETURNING app_id, key_id, rate_limit)"
                " SELECT a.app_id, CASE WHEN a.overdraft_enabled THEN a.overdraft_limit ELSE 0 END,"
                " a.auto_top_up_available AND a.credits_enabled, a.low_balance_thresholds,"
                " a.plan_monthly_operations, a.plan_max_users, k.key_id, k.rate_limit"
                " FROM k JOIN apps a USING (app_id)",
                (key_hash,),
            ).fetchone()
        if row is None:
            return None
        return AppContext(row[0], row[1], row[2], tuple(row[3]), *row[4:])
