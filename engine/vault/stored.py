"""Where sealed secrets are stored, how many each key sealed, and moving them to the current key."""

from collections import Counter

import psycopg
from psycopg_pool import ConnectionPool

from engine.errors import SecretKeyError, UnavailableError
from engine.settings import Settings
from engine.store.db import connection, open_pool
from engine.vault.keyring import KEY_HELP, Keyring, keyring, sealed_with

# The columns of secrets Tally must read back, by table, with the column naming each row's
# owner: the owner is bound into every value sealed in that row.
SEALED: dict[str, tuple[str, tuple[str, ...]]] = {
    "apps": (
        "app_id",
        (
            "stripe_webhook_secret",
            "polar_webhook_secret",
            "lemonsqueezy_webhook_secret",
            "client_token_secret",
            "stripe_secret_key",
        ),
    ),
    "webhook_endpoints": ("endpoint_id", ("secret", "previous_secret")),
}
PLAIN = "plain"  # census key of values stored before sealing existed


def census(pool: ConnectionPool) -> Counter[str]:
    """Stored secrets by the id of the key that sealed them (PLAIN: not sealed yet)."""
    counts: Counter[str] = Counter()
    with connection(pool) as conn:
        for table, (_, columns) in SEALED.items():
            if not _exists(conn, table):
                continue  # the schema of an older Tally, not migrated yet
            for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table}"):
                counts.update(sealed_with(value) or PLAIN for value in row if value is not None)
    return counts


def require_keys(pool: ConnectionPool, keyring: Keyring) -> Counter[str]:
    """The census, once it is sure the keyring opens every sealed secret."""
    counts = census(pool)
    for kid in counts:
        if kid != PLAIN and kid not in keyring.key_ids:
            raise SecretKeyError(keyring.missing(kid))
    return counts


def reseal(pool: ConnectionPool, keyring: Keyring, *, plain_only: bool = False) -> int:
    """Seal every stored secret under the current key (only the plain ones with `plain_only`);
    return how many moved. One row per transaction: an interrupted run loses nothing and the
    next run carries on from where it stopped."""
    if keyring.current_id is None:
        plain = census(pool)[PLAIN]
        if plain_only and not plain:
            return 0
        raise SecretKeyError(_plain_waiting(plain) if plain else f"TALLY_SECRET_KEY: {KEY_HELP}")
    if not plain_only:
        require_keys(pool, keyring)  # fail before the first row changes
    moved = 0
    with connection(pool) as conn:
        for table, (owner, columns) in SEALED.items():
            owners = [row[0] for row in conn.execute(f"SELECT {owner} FROM {table} ORDER BY 1")]
            for name in owners:
                with conn.transaction():
                    row = conn.execute(
                        f"SELECT {', '.join(columns)} FROM {table} WHERE {owner} = %s FOR UPDATE",
                        (name,),
                    ).fetchone()
                    changes: dict[str, str] = {}
                    for column, value in zip(columns, row or (), strict=False):
                        kid = None if value is None else sealed_with(value)
                        if value is None or kid == keyring.current_id or (plain_only and kid):
                            continue
                        opened = value if kid is None else keyring.open(value, name, column)
                        changes[column] = keyring.seal(opened, name, column)
                    if changes:
                        assignments = ", ".join(f"{column} = %s" for column in changes)
                        conn.execute(
                            f"UPDATE {table} SET {assignments} WHERE {owner} = %s",
                            (*changes.values(), name),
                        )
                    moved += len(changes)
    return moved


def _plain_waiting(count: int) -> str:
    return (
        f"{count} secrets are stored in plain text: run `tally migrate` with TALLY_SECRET_KEY"
        f" set ({KEY_HELP}) to encrypt them"
    )


def check_keys(settings: Settings) -> None:
    """Before `serve` and `worker` start: every stored secret is sealed under a key they hold,
    or a SecretKeyError says what is missing. PostgreSQL down: each use checks, once it is back."""
    keys = keyring(settings)
    pool = open_pool(settings.database_url, 1)
    try:
        counts = require_keys(pool, keys)
    except UnavailableError:
        return
    finally:
        pool.close()
    if counts[PLAIN]:
        raise SecretKeyError(_plain_waiting(counts[PLAIN]))


def _exists(conn: psycopg.Connection, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])
