"""The operating contract of the `tally` command, and what it changes in the running API."""

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from engine.settings import Settings
from tests.conftest import ApiServer, tally, tally_env
from tests.servers import free_port


def create_app(settings: Settings, name: str = "cli-app") -> dict[str, object]:
    created: dict[str, object] = json.loads(
        tally(settings, "apps", "create", name, "--json").stdout
    )
    return created


def test_migrate_is_idempotent(settings: Settings) -> None:
    first = tally(settings, "migrate")
    second = tally(settings, "migrate")
    assert first.returncode == second.returncode == 0
    assert "up to date" in second.stdout


def test_apps_create_prints_app_key_and_webhook_urls(settings: Settings) -> None:
    created = create_app(settings)
    assert isinstance(created["app_id"], str)
    api_key = created["api_key"]
    assert isinstance(api_key, str) and re.fullmatch(r"tally_[A-Za-z0-9_-]{32,}", api_key)
    urls = created["webhook_urls"]
    assert isinstance(urls, dict) and set(urls) == {"stripe", "polar", "lemonsqueezy"}
    assert all(created["app_id"] in url for url in urls.values())


def test_keys_are_stored_only_as_sha256(settings: Settings) -> None:
    created = create_app(settings)
    api_key = str(created["api_key"])
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT key_hash, key_prefix FROM api_keys WHERE app_id = %s", (created["app_id"],)
        ).fetchall()
        dump = str(conn.execute("SELECT * FROM api_keys").fetchall())
    assert [bytes(rows[0][0])] == [hashlib.sha256(api_key.encode()).digest()]
    assert api_key not in dump
    assert len(rows[0][1]) < len(api_key) // 4


def test_keys_create_list_revoke_and_revoked_key_is_401_within_a_second(
    settings: Settings, api_server: ApiServer
) -> None:
    created = create_app(settings)
    app_id = str(created["app_id"])
    new = json.loads(tally(settings, "keys", "create", app_id, "--json").stdout)
    assert new["api_key"] != created["api_key"] and new["status"] == "active"
    listed = json.loads(tally(settings, "keys", "list", app_id, "--json").stdout)
    assert {k["key_id"] for k in listed} == {created["key_id"], new["key_id"]}
    assert all("api_key" not in k for k in listed)

    headers = {"Authorization": f"Bearer {new['api_key']}"}
    url = api_server.url + "/credits/balance?user_id=u"
    assert httpx.get(url, headers=headers).status_code == 200  # cached now
    revoked = json.loads(tally(settings, "keys", "revoke", new["key_id"], "--json").stdout)
    assert revoked["status"] == "revoked"
    revoked_at = time.monotonic()
    while httpx.get(url, headers=headers).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0, "revoked key still accepted after 1 s"
        time.sleep(0.02)
    assert httpx.get(url, headers=headers).json()["error"] == "invalid API key"
    # The app's other key is untouched.
    other = {"Authorization": f"Bearer {created['api_key']}"}
    assert httpx.get(url, headers=other).status_code == 200


def test_apps_update_and_show(settings: Settings, api_server: ApiServer) -> None:
    created = create_app(settings)
    app_id = str(created["app_id"])
    updated = json.loads(
        tally(
            settings, "apps", "update", app_id,
            "--stripe-webhook-secret", "whsec_abc", "--polar-webhook-secret", "polar_s",
            "--lemonsqueezy-webhook-secret", "ls_s", "--credit-rate", "100",
            "--overdraft-limit", "50", "--json",
        ).stdout
    )  # fmt: skip
    assert updated["overdraft_limit"] == 50 and updated["credit_rate"] == "100"
    assert updated["stripe_webhook_secret_set"] is True
    shown = tally(settings, "apps", "show", app_id, "--json").stdout
    assert "whsec_abc" not in shown  # secrets are write-only
    assert json.loads(shown)["webhook_urls"] == created["webhook_urls"]

    # The overdraft reaches the hot path without a restart.
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    time.sleep(1.0)
    response = httpx.post(
        api_server.url + "/credits/deduct", json={"user_id": "u", "amount": 50}, headers=headers
    )
    assert response.status_code == 200 and response.json()["balance_after"] == -50
    response = httpx.post(
        api_server.url + "/credits/deduct", json={"user_id": "u", "amount": 1}, headers=headers
    )
    assert response.status_code == 402 and response.json()["balance"] == -50


def test_cli_errors_are_clear(settings: Settings) -> None:
    missing = tally(settings, "apps", "show", "app_nope", check=False)
    assert missing.returncode == 1 and "no app app_nope" in missing.stderr
    bad = tally(settings, "apps", "update", "app_nope", "--overdraft-limit", "-1", check=False)
    assert bad.returncode == 2 and "overdraft-limit" in bad.stderr
    nothing = tally(settings, "apps", "update", str(create_app(settings)["app_id"]), check=False)
    assert nothing.returncode == 1 and "nothing to update" in nothing.stderr
    unknown = tally(settings, "keys", "revoke", "key_nope", check=False)
    assert unknown.returncode == 1 and "no key key_nope" in unknown.stderr
    variable = subprocess.run(
        [sys.executable, "-m", "api.cli", "status"],
        env=tally_env(settings) | {"TALLY_IDEMPOTENCY_TTL_SECONDS": "5"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert variable.returncode == 2
    assert variable.stderr.startswith("tally: TALLY_IDEMPOTENCY_TTL_SECONDS: ")
    assert variable.stderr.count("\n") == 1, variable.stderr


@pytest.mark.parametrize(
    ("command", "service", "variable"),
    [
        (["apps", "list"], "PostgreSQL", "TALLY_DATABASE_URL"),
        (["apps", "show", "app_x"], "PostgreSQL", "TALLY_DATABASE_URL"),
        (["keys", "list", "app_x"], "PostgreSQL", "TALLY_DATABASE_URL"),
        (["webhooks", "list"], "PostgreSQL", "TALLY_DATABASE_URL"),
        (["migrate"], "PostgreSQL", "TALLY_DATABASE_URL"),
        (["status"], "Redis", "TALLY_REDIS_URL"),
        (["reconcile"], "Redis", "TALLY_REDIS_URL"),
    ],
)
def test_a_command_without_its_server_fails_fast_in_one_line(
    settings: Settings, command: list[str], service: str, variable: str
) -> None:
    nowhere = {  # nothing listens on these ports
        "TALLY_DATABASE_URL": f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/tally",
        "TALLY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "api.cli", *command],
        env=tally_env(settings) | nowhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started < 3
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"cannot reach {service}" in run.stderr and variable in run.stderr
    assert "s3cret" not in run.stderr


def _every_action(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(f"{name} {where}", a) for where, a in _every_action(sub)]
        elif not isinstance(action, argparse._HelpAction):
            found.append((parser.prog, action))
    return found


def test_every_flag_and_argument_has_help_text() -> None:
    from api.cli import _parser

    missing = [(where, a.dest) for where, a in _every_action(_parser()) if not a.help]
    assert missing == []


def test_human_output_is_words_and_aligned_tables(settings: Settings) -> None:
    app_id = str(create_app(settings)["app_id"])
    shown = tally(settings, "apps", "show", app_id).stdout
    assert "None" not in shown and "True" not in shown and "False" not in shown
    assert re.search(r"^credits_enabled\s+yes$", shown, re.M)
    assert re.search(r"^credit_rate\s+none$", shown, re.M)
    assert re.search(r"^  stripe\s+\S*/webhooks/stripe/" + app_id + "$", shown, re.M)
    keys = tally(settings, "keys", "list", app_id).stdout.splitlines()
    assert keys[0].split() == [
        "KEY",
        "ID",
        "KEY",
        "PREFIX",
        "STATUS",
        "RATE",
        "LIMIT",
        "CREATED",
        "AT",
        "LAST",
        "USED",
        "AT",
        "REVOKED",
        "AT",
    ]
    assert keys[1].split()[2] == "active" and keys[1].endswith("none")
    nothing = tally(settings, "webhooks", "list", "--app", app_id).stdout
    assert nothing.strip() == "no webhook events"


def test_status_json_lists_busy_shards_unless_all(settings: Settings) -> None:
    tally(settings, "worker", "--burst")
    assert json.loads(tally(settings, "status", "--json").stdout)["shards"] == []
    every = json.loads(tally(settings, "status", "--json", "--all").stdout)["shards"]
    assert [shard["shard"] for shard in every] == list(range(64))


def test_cli_input_follows_the_same_text_rules(settings: Settings) -> None:
    padded = tally(settings, "apps", "create", " demo ", check=False)
    assert padded.returncode == 1 and "must not start or end with whitespace" in padded.stderr
    broken = tally(settings, "apps", "create", "two\nlines", check=False)
    assert broken.returncode == 1 and "printable" in broken.stderr
