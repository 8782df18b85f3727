"""Secrets at rest: sealed with TALLY_SECRET_KEY in a real PostgreSQL, rotated, kept out of
dumps, logs, error bodies and the CLI's output."""

import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from engine.accounts.repository import SECRET_COLUMNS, AppRepository
from engine.errors import SecretKeyError
from engine.settings import Settings
from engine.store.db import migrate, open_pool
from engine.vault.keyring import Keyring, generate_key, key_id, keyring, parse_key
from engine.vault.stored import census, reseal
from tests.browser import CHARGE_DECLINED, VISA, Browser
from tests.conftest import ApiServer, AppUnderTest, WorkerProcess, tally_env
from tests.servers import LocalStripe, PostgresServer, pg_bin
from tests.test_webhooks import Hooks, lemon, polar_order, stripe_intent

KEY_A, KEY_B = generate_key(), generate_key()


def _unique(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


# --- the keyring, alone --------------------------------------------------------------------------


def test_a_sealed_value_opens_only_under_its_key_for_its_app_and_field() -> None:
    ring = Keyring(parse_key(KEY_A, "TALLY_SECRET_KEY"))
    sealed = ring.seal("sk_live_abc", "app_1", "stripe_secret_key")
    assert sealed.startswith(f"sealed:v1:{ring.current_id}:") and "sk_live" not in sealed
    assert sealed != ring.seal("sk_live_abc", "app_1", "stripe_secret_key"), "a nonce per value"
    assert ring.open(sealed, "app_1", "stripe_secret_key") == "sk_live_abc"
    for owner, field in (("app_2", "stripe_secret_key"), ("app_1", "polar_webhook_secret")):
        with pytest.raises(SecretKeyError, match="does not open"):
            ring.open(sealed, owner, field)
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SecretKeyError, match="does not open"):
        ring.open(tampered, "app_1", "stripe_secret_key")
    other = Keyring(parse_key(KEY_B, "TALLY_SECRET_KEY"))
    with pytest.raises(SecretKeyError, match="neither TALLY_SECRET_KEY nor"):
        other.open(sealed, "app_1", "stripe_secret_key")
    rotating = Keyring(parse_key(KEY_B, "K"), previous=parse_key(KEY_A, "K"))
    assert rotating.open(sealed, "app_1", "stripe_secret_key") == "sk_live_abc"
    assert rotating.seal("x", "app_1", "f").split(":")[2] == key_id(parse_key(KEY_B, "K"))
    with pytest.raises(SecretKeyError, match="stored in plain text: run `tally migrate`"):
        ring.open("whsec_written_by_hand", "app_1", "stripe_webhook_secret")
    for damaged in (sealed + "=", sealed + "\n", sealed[:30]):
        with pytest.raises(SecretKeyError, match="damaged"):
            ring.open(damaged, "app_1", "stripe_secret_key")


@pytest.mark.parametrize("bad", ["", "short", "A" * 44, KEY_A[:-4], KEY_A + "AAAA"])
def test_a_key_that_is_not_32_bytes_of_base64_is_refused(bad: str) -> None:
    with pytest.raises(SecretKeyError, match="TALLY_SECRET_KEY must be 32 random bytes"):
        parse_key(bad, "TALLY_SECRET_KEY")


def test_either_base64_alphabet_is_accepted() -> None:
    raw = bytes(range(250, 256)) * 5 + b"\xfb\xff"
    import base64

    assert parse_key(base64.urlsafe_b64encode(raw).decode(), "K") == raw
    assert parse_key(base64.b64encode(raw).decode() + "\n", "K") == raw


# --- against PostgreSQL --------------------------------------------------------------------------


@pytest.fixture
def fresh_db(postgres_server: PostgresServer, settings: Settings) -> Iterator[Settings]:
    """A database of its own on the session's PostgreSQL, schema applied, dropped afterwards."""
    name = "secrets_" + secrets.token_hex(4)
    admin = postgres_server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + name
    yield settings.model_copy(update={"database_url": url, "secret_key": SecretStr(KEY_A)})
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _schema(db: Settings, upto: str | None = None) -> None:
    """Apply the migrations, or only those up to `upto` as an older Tally would have."""
    pool = open_pool(db.database_url, 1, wait=True)
    if upto is None:
        migrate(pool)
    else:
        from importlib.resources import files

        with pool.connection() as conn:
            conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY)")
            for path in sorted(files("engine.migrations").iterdir(), key=lambda p: p.name):
                if path.name.endswith(".sql") and path.name <= upto:
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations VALUES (%s)", (path.name[:-4],))
    pool.close()


def _env(db: Settings, key: str | None, previous: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in tally_env(db).items() if not k.startswith("TALLY_SECRET_KEY")}
    return (
        env
        | ({"TALLY_SECRET_KEY": key} if key else {})
        | ({"TALLY_SECRET_KEY_PREVIOUS": previous} if previous else {})
    )


def _tally(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=env, input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _stored(db: Settings, app_id: str) -> dict[str, str | None]:
    with psycopg.connect(db.database_url) as conn:
        row = conn.execute(
            f"SELECT {', '.join(SECRET_COLUMNS)} FROM apps WHERE app_id = %s", (app_id,)
        ).fetchone()
    assert row is not None
    return dict(zip(SECRET_COLUMNS, row, strict=True))


def _opened(db: Settings, key: str, app_id: str) -> dict[str, str | None]:
    pool = open_pool(db.database_url, 1, wait=True)
    ring = keyring(db.model_copy(update={"secret_key": SecretStr(key)}))
    app = AppRepository(pool, ring).get_app(app_id)
    pool.close()
    assert app is not None
    return {column: getattr(app, column) for column in SECRET_COLUMNS}


PLAIN = {
    "stripe_webhook_secret": "whsec_plain_before_sealing",
    "polar_webhook_secret": "polar_whs_plain_before_sealing",
    "lemonsqueezy_webhook_secret": "lemon-plain-before-sealing",
    "client_token_secret": "c" * 64,
    "stripe_secret_key": "sk_test_plain_before_sealing",
}


def test_migrate_encrypts_the_plain_values_of_an_older_tally_once(fresh_db: Settings) -> None:
    _schema(fresh_db, upto="0005_billing.sql")
    with psycopg.connect(fresh_db.database_url) as conn:
        conn.execute(
            "INSERT INTO apps (app_id, name) VALUES ('app_old', 'old')"
        )  # PG made a secret
        conn.execute(
            f"UPDATE apps SET {', '.join(f'{c} = %s' for c in PLAIN)} WHERE app_id = 'app_old'",
            tuple(PLAIN.values()),
        )
        conn.execute("INSERT INTO apps (app_id, name) VALUES ('app_bare', 'bare')")

    waiting = _tally(_env(fresh_db, KEY_A), "worker")
    assert waiting.returncode == 1 and "6 secrets are stored in plain text" in waiting.stderr
    refused = _tally(_env(fresh_db, None), "migrate")
    assert refused.returncode == 1, refused
    assert (
        refused.stderr.count("\n") == 1 and "6 secrets are stored in plain text" in refused.stderr
    )
    assert "TALLY_SECRET_KEY" in refused.stderr

    done = _tally(_env(fresh_db, KEY_A), "migrate")
    assert done.returncode == 0, done.stderr
    assert "encrypted 6 secrets stored in plain text" in done.stdout, done.stdout
    kid = key_id(parse_key(KEY_A, "K"))
    for app_id in ("app_old", "app_bare"):
        for value in _stored(fresh_db, app_id).values():
            assert value is None or value.startswith(f"sealed:v1:{kid}:")
    assert _opened(fresh_db, KEY_A, "app_old") == PLAIN

    again = _tally(_env(fresh_db, KEY_A), "migrate")
    assert again.stdout.strip() == "schema is up to date", again.stdout
    assert _opened(fresh_db, KEY_A, "app_old") == PLAIN


def _app_with_every_secret(
    env: dict[str, str], values: dict[str, str], create_env: dict[str, str] | None = None
) -> str:
    created = _tally(create_env or env, "apps", "create", "vault", "--json")
    assert created.returncode == 0, created.stderr
    app_id: str = json.loads(created.stdout)["app_id"]
    flags = [f"--{c.replace('_', '-')}" for c in SECRET_COLUMNS if c != "client_token_secret"]
    for flag, column in zip(flags, (c for c in SECRET_COLUMNS if c != "client_token_secret"),
                            strict=True):  # fmt: skip
        # Read from stdin: a secret on the command line shows in `ps` and shell history.
        updated = _tally(env, "apps", "update", app_id, flag, "-", stdin=values[column] + "\n")
        assert updated.returncode == 0, updated.stderr
    return app_id


def test_serve_worker_and_cli_refuse_without_the_key_once_a_secret_is_stored(
    fresh_db: Settings,
) -> None:
    _schema(fresh_db)
    keyless = _env(fresh_db, None)
    bare = _tally(keyless, "apps", "create", "no-secrets-yet", "--json")
    assert bare.returncode == 0, "no secret is stored: no key is needed yet"
    app_id = json.loads(bare.stdout)["app_id"]
    set_secret = _tally(keyless, "apps", "update", app_id, "--stripe-webhook-secret", "whsec_x")
    assert set_secret.returncode == 1 and "TALLY_SECRET_KEY is not set" in set_secret.stderr
    assert _stored(fresh_db, app_id)["stripe_webhook_secret"] is None

    _app_with_every_secret(_env(fresh_db, KEY_A), {c: _unique("s_") for c in SECRET_COLUMNS})
    for args in (["serve", "--port", "1"], ["worker"], ["apps", "list"]):
        refused = _tally(keyless, *args)
        assert refused.returncode == 1, (args, refused)
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "TALLY_SECRET_KEY is not set" in refused.stderr, refused.stderr
    wrong = _tally(_env(fresh_db, KEY_B), "worker")
    assert wrong.returncode == 1 and "neither TALLY_SECRET_KEY nor" in wrong.stderr
    malformed = _tally(_env(fresh_db, "not-a-key"), "apps", "list")
    assert malformed.returncode == 1
    assert malformed.stderr == f"tally: TALLY_SECRET_KEY must be {'32 random bytes'}" + (
        " in base64 (`tally secrets generate-key` makes one)\n"
    )


def test_the_key_can_live_in_a_file(fresh_db: Settings, tmp_path: Path) -> None:
    _schema(fresh_db)
    path = tmp_path / "secret-key"
    made = _tally(_env(fresh_db, None), "secrets", "generate-key", "--file", str(path))
    assert made.returncode == 0 and str(path) in made.stdout
    assert path.stat().st_mode & 0o077 == 0
    key = path.read_text()
    kept = _tally(_env(fresh_db, None), "secrets", "generate-key", "--file", str(path))
    assert "kept" in kept.stdout and path.read_text() == key
    env = _env(fresh_db, None) | {"TALLY_SECRET_KEY_FILE": str(path)}
    app_id = _app_with_every_secret(env, {c: _unique("s_") for c in SECRET_COLUMNS})
    assert _tally(env, "apps", "show", app_id).returncode == 0
    assert _opened(fresh_db, key.strip(), app_id)["stripe_secret_key"] is not None
    binary = tmp_path / "binary-key"
    binary.write_bytes(bytes(range(200, 232)))
    for broken, message in (
        ({"TALLY_SECRET_KEY_FILE": str(tmp_path / "gone")}, "cannot read"),
        ({"TALLY_SECRET_KEY_FILE": str(binary)}, "not base64 text"),
        ({"TALLY_SECRET_KEY": KEY_B}, "set TALLY_SECRET_KEY or TALLY_SECRET_KEY_FILE, not both"),
    ):
        refused = _tally(env | broken, "apps", "list")
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert message in refused.stderr and "TALLY_SECRET_KEY" in refused.stderr


def test_a_secret_from_stdin_must_not_be_empty_and_an_empty_flag_removes_it(
    fresh_db: Settings,
) -> None:
    _schema(fresh_db)
    env = _env(fresh_db, KEY_A)
    app_id = _app_with_every_secret(env, {c: _unique("s_") for c in SECRET_COLUMNS})
    empty = _tally(env, "apps", "update", app_id, "--stripe-secret-key", "-", stdin="")
    assert empty.returncode == 1 and "no stripe_secret_key on stdin" in empty.stderr
    assert _stored(fresh_db, app_id)["stripe_secret_key"] is not None
    removed = _tally(env, "apps", "update", app_id, "--stripe-secret-key", "", "--json")
    assert json.loads(removed.stdout)["stripe_secret_key_set"] is False
    assert _stored(fresh_db, app_id)["stripe_secret_key"] is None


class _KilledAfter(Keyring):
    """A rotation that dies after sealing `seals` values, mid-row, like a killed process."""

    def __init__(self, current: bytes, previous: bytes, seals: int) -> None:
        super().__init__(current, previous)
        self.seals = seals

    def seal(self, value: str, owner: str, field: str) -> str:
        self.seals -= 1
        if self.seals < 0:
            raise KeyboardInterrupt
        return super().seal(value, owner, field)


def test_rotation_moves_every_value_and_an_interrupted_run_loses_nothing(
    fresh_db: Settings,
) -> None:
    _schema(fresh_db)
    pool = open_pool(fresh_db.database_url, 1, wait=True)
    repository = AppRepository(pool, Keyring(parse_key(KEY_A, "K")))
    expected: dict[str, dict[str, str]] = {}
    for n in range(40):
        app = repository.create_app(f"app_{n:04}", "rotating", None)
        values = {c: _unique(f"{c}_") for c in SECRET_COLUMNS}
        repository.update_app(app.app_id, values)
        expected[app.app_id] = values
    total = 40 * len(SECRET_COLUMNS)
    kid_a, kid_b = key_id(parse_key(KEY_A, "K")), key_id(parse_key(KEY_B, "K"))
    rotating = _env(fresh_db, KEY_B, previous=KEY_A)

    status = json.loads(_tally(rotating, "secrets", "status", "--json").stdout)
    assert status == [{"key_id": kid_a, "key": "TALLY_SECRET_KEY_PREVIOUS", "secrets": total}]
    # Killed on the 3rd value of the 11th app: 10 apps moved, the 11th rolled back whole.
    with pytest.raises(KeyboardInterrupt):
        reseal(pool, _KilledAfter(parse_key(KEY_B, "K"), parse_key(KEY_A, "K"), seals=52))
    assert census(pool) == {kid_b: 50, kid_a: total - 50}
    pool.close()

    finished = _tally(rotating, "secrets", "rotate", "--json")
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout) == {
        "moved": total - 50, "key_id": kid_b, "secrets": total, "left": 0
    }  # fmt: skip
    again = json.loads(_tally(rotating, "secrets", "rotate", "--json").stdout)
    assert again["moved"] == 0
    for app_id, values in expected.items():
        assert all(
            v and v.startswith(f"sealed:v1:{kid_b}:") for v in _stored(fresh_db, app_id).values()
        )
        assert _opened(fresh_db, KEY_B, app_id) == values
    new_only = _tally(_env(fresh_db, KEY_B), "secrets", "status")
    assert "TALLY_SECRET_KEY " in new_only.stdout and str(total) in new_only.stdout
    old_only = _tally(_env(fresh_db, KEY_A), "apps", "list")
    assert old_only.returncode == 1 and kid_b in old_only.stderr
    without_previous = _tally(_env(fresh_db, generate_key()), "secrets", "rotate")
    assert without_previous.returncode == 1 and kid_b in without_previous.stderr


# --- nothing leaks -------------------------------------------------------------------------------


def test_a_pg_dump_holds_no_secret(fresh_db: Settings, tmp_path: Path) -> None:
    _schema(fresh_db)
    env = _env(fresh_db, KEY_A)
    values = {c: _unique(f"{c[:6]}_") for c in SECRET_COLUMNS if c != "client_token_secret"}
    values["stripe_secret_key"] = _unique("sk_test_")
    # Created without a key: its client token signing secret is made with its first token.
    app_id = _app_with_every_secret(env, values, create_env=_env(fresh_db, None))
    assert _stored(fresh_db, app_id)["client_token_secret"] is None
    key = json.loads(_tally(env, "keys", "create", app_id, "--json").stdout)["api_key"]
    server = ApiServer(env, tmp_path / "api.log")
    try:
        minted = httpx.post(f"{server.url}/client-tokens", json={"user_id": "u"},
                            headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert minted.status_code == 200, minted.text
        used = httpx.get(f"{server.url}/client/balance",
                         headers={"Authorization": f"Bearer {minted.json()['token']}"})  # fmt: skip
        assert used.status_code == 200, used.text
    finally:
        server.stop()
    values["client_token_secret"] = str(_opened(fresh_db, KEY_A, app_id)["client_token_secret"])
    dump = subprocess.run(
        [pg_bin("pg_dump"), "--no-owner", fresh_db.database_url],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert app_id.encode() in dump and b"sealed:v1:" in dump, "the dump is of this database"
    for name, value in [
        *values.items(),
        ("API key", key),
        ("client token", minted.json()["token"]),
    ]:
        assert value.encode() not in dump, f"the dump holds the {name}"


class _Leaks:
    """Everything Tally said: log files, the CLI's output, error bodies."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.said: list[str] = []

    def tally(
        self, env: dict[str, str], *args: str, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        done = _tally(env, *args, stdin=stdin)
        self.said += [done.stdout, done.stderr]
        return done

    def response(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            self.said.append(response.text)
        return response

    def found(self, needles: dict[str, str]) -> list[str]:
        said = [*self.said]
        for path in self.logs.iterdir():
            for line in path.read_text().splitlines():
                said.append(line)
                with contextlib.suppress(ValueError, AttributeError):
                    # A JSON log line escapes quotes: a payload shows whole only once decoded.
                    said.extend(str(value) for value in json.loads(line).values())
        text = "\n".join(said)
        return [name for name, needle in needles.items() if needle in text]


def test_no_secret_key_token_signature_or_payload_reaches_logs_errors_or_the_cli(
    fresh_db: Settings, localstripe: LocalStripe, tmp_path: Path
) -> None:
    _schema(fresh_db)
    env = _env(fresh_db, KEY_A) | {"TALLY_LOG_LEVEL": "debug", "TALLY_ACCESS_LOG": "true"}
    leaks = _Leaks(tmp_path)
    needles: dict[str, str] = {}

    created = _tally(env, "apps", "create", "leaky", "--json")  # shows its key once, by design
    leaks.said.append(created.stderr)
    app = json.loads(created.stdout)
    needles["API key"] = app["api_key"]
    needles["TALLY_SECRET_KEY"] = KEY_A
    secrets_set = {
        "stripe_webhook_secret": _unique("whsec_"),
        "polar_webhook_secret": _unique("polar_whs_"),
        "lemonsqueezy_webhook_secret": _unique("lemon_"),
        "stripe_secret_key": _unique("xk_refused_"),  # localstripe refuses it: a failing call
    }
    needles |= secrets_set
    for column, value in secrets_set.items():
        flag = "--" + column.replace("_", "-")
        assert (
            leaks.tally(env, "apps", "update", app["app_id"], flag, "-", stdin=value).returncode
            == 0
        )
    leaks.tally(env, "apps", "update", app["app_id"], "--credits-per-dollar", "100",
                "--manual-top-up-available", "true", "--min-purchase-cents", "100")  # fmt: skip
    api = ApiServer(env, tmp_path / "api.log")
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        client = httpx.Client(base_url=api.url, timeout=30,
                              headers={"Authorization": f"Bearer {app['api_key']}"})  # fmt: skip
        leaks.response(client.post("/credits/add", json={"user_id": "u1", "amount": 10}))
        leaks.response(client.post("/credits/deduct", json={"user_id": "u1", "amount": 99}))
        token = client.post("/client-tokens", json={"user_id": "u1"}).json()["token"]
        needles["client token"] = token
        forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        for bearer in (forged, app["api_key"][:-2] + "xx", token):
            leaks.response(httpx.get(f"{api.url}/client/balance",
                                     headers={"Authorization": f"Bearer {bearer}"}))  # fmt: skip
        browser = Browser(api.url, localstripe.url, client, "u1")
        refused = leaks.response(browser.post("/client/payment-methods/setup-intent"))
        assert refused.status_code == 502, refused.text  # the refused Stripe key
        good_key = _unique("sk_test_")
        needles["Stripe key"] = good_key
        leaks.tally(
            env, "apps", "update", app["app_id"], "--stripe-secret-key", "-", stdin=good_key
        )
        time.sleep(1)  # the API's app cache
        intent = browser.post("/client/payment-methods/setup-intent")
        needles["Stripe client secret"] = intent.json()["client_secret"]  # the browser's only
        visa, declining = browser.save_card(VISA), browser.save_card(CHARGE_DECLINED)
        assert leaks.response(browser.buy(500, visa["id"], "p1")).status_code == 200
        assert leaks.response(browser.buy(500, declining["id"], "p2")).status_code == 402
        needles["client token secret"] = str(
            _opened(fresh_db, KEY_A, app["app_id"])["client_token_secret"]
        )

        hooks = Hooks(fresh_db, api, AppUnderTest(app["app_id"], app["api_key"], ""))
        marker = {"tally_user_id": "u2", "tally_credits": "5", "note": _unique("payload_")}
        sent = [
            hooks.stripe(stripe_intent(_unique("evt_"), _unique("pi_"), marker),
                         secret=secrets_set["stripe_webhook_secret"]),
            hooks.stripe(stripe_intent(_unique("evt_"), _unique("pi_"), marker), secret="wrong"),
            hooks.polar(polar_order("order.paid", _unique("ord_"), metadata=marker),
                        message_id=_unique("msg_"), secret=secrets_set["polar_webhook_secret"]),
            hooks.polar(polar_order("order.paid", _unique("ord_"), metadata=marker),
                        message_id=_unique("msg_"), secret="wrong"),
            hooks.lemonsqueezy(lemon("order_created", _unique("o"), marker),
                               secret=secrets_set["lemonsqueezy_webhook_secret"]),
            hooks.lemonsqueezy(lemon("order_created", _unique("o"), marker), secret="wrong"),
        ]  # fmt: skip
        with psycopg.connect(fresh_db.database_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE webhook_events RENAME TO webhook_events_away")
            try:
                sent.append(hooks.stripe(stripe_intent(_unique("evt_"), _unique("pi_"), marker),
                                         secret=secrets_set["stripe_webhook_secret"]))  # fmt: skip
            finally:
                conn.execute("ALTER TABLE webhook_events_away RENAME TO webhook_events")
        assert [r.status_code for r in sent] == [200, 400, 200, 400, 200, 400, 500]
        for n, response in enumerate(sent):
            leaks.response(response)
            needles[f"payload {n}"] = response.request.content.decode()
            for header in ("stripe-signature", "webhook-signature", "x-signature"):
                for signature in re.findall(
                    r"[^,=\s]{40,}", response.request.headers.get(header, "")
                ):
                    needles[f"{header} {n}"] = signature
        hooks.settled(3)
        client.close()
        browser.close()
    finally:
        api.stop()
        worker.stop()
    for args in (["apps", "show", app["app_id"]], ["apps", "list", "--json"],
                 ["webhooks", "list", "--json"], ["secrets", "status"], ["secrets", "rotate"],
                 ["keys", "list", app["app_id"]], ["status"]):  # fmt: skip
        assert leaks.tally(env, *args).returncode == 0, args
    assert len(list(tmp_path.iterdir())) == 2 and (tmp_path / "api.log").stat().st_size > 1000
    assert leaks.found(needles) == []
