"""The `tally` command."""

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from api.text import fields, table
from api.views import delivery_view, endpoint_view
from engine import logs
from engine.accounts.apps import RATE_LIMIT_RULE, rate_limit_problem, setting_problem
from engine.accounts.repository import SECRET_COLUMNS
from engine.container import Engine
from engine.errors import InvalidRequestError, TallyError, UnavailableError
from engine.events.types import EVENT_TYPES
from engine.ledger.outbox import outbox_lag
from engine.ledger.retention import archive_month, restore_month
from engine.models import CREDITS_CONFIG, ApiKey, App
from engine.operators.passwords import generate_password
from engine.operators.repository import Operator
from engine.operators.service import ROLES
from engine.payments.providers import webhook_urls
from engine.payments.repository import WebhookEvent
from engine.settings import Settings
from engine.store.db import migrate
from engine.store.redis import OUTAGES, UNREACHABLE, node_states
from engine.vault.keyring import generate_key
from engine.vault.stored import PLAIN, census, check_keys, reseal
from workers.queue import Jobs

_SECRETS = ("stripe_webhook_secret", "polar_webhook_secret", "lemonsqueezy_webhook_secret")
_BILLING = ("stripe_secret_key", "cors_origins", "auto_top_up_daily_limit_cents")
_SETTINGS = (
    "credit_rate", "overdraft_limit", "low_balance_thresholds", "plan_max_users",
    "plan_monthly_operations",
)  # fmt: skip
_FLAGS = {
    "credits_enabled": "credits on or off for the app (purchases and auto top-up need it)",
    "overdraft_enabled": "let balances go below 0, down to --overdraft-limit",
    "manual_top_up_available": "let end users buy credits with a stored card",
    "auto_top_up_available": "let end users turn on auto top-up",
}


class Context:
    """What a command works with: the settings, and the engine, built on first use (`serve`
    and `worker` build their own in the processes that serve)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine.build(self.settings)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            variable = "TALLY_" + "_".join(map(str, error["loc"])).upper()
            print(f"tally: {variable}: {error['msg']}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level)
    # A command reports an unreachable PostgreSQL once, itself; the pool's retries are noise.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    context = Context(settings)
    try:
        args.run(args, context)
    except UnavailableError as exc:
        _unreachable(exc.service, exc.message, settings)
    except OUTAGES:
        _unreachable("redis", UNREACHABLE, settings)
    except TallyError as exc:
        print(f"tally: {exc.message}", file=sys.stderr)
        sys.exit(1)
    finally:
        context.close()


# What a command could not reach, and the variable that says where it is.
_SERVICES = {
    "redis": ("Redis", "TALLY_REDIS_URL", "redis_url"),
    "postgresql": ("PostgreSQL", "TALLY_DATABASE_URL", "database_url"),
}


def _unreachable(service: str | None, message: str, settings: Settings) -> NoReturn:
    """One line, exit 2: no traceback for a server that is not there."""
    if service in _SERVICES:
        name, variable, field = _SERVICES[service]
        url = _without_password(getattr(settings, field))
        message = f"cannot reach {name} at {url} (set {variable}): {message}"
    print(f"tally: {message}", file=sys.stderr)
    sys.exit(2)


def _without_password(url: str) -> str:
    if "," in url:  # a cluster's seed nodes
        return ",".join(map(_without_password, url.split(",")))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description="Tally credits engine")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, run: Callable[[argparse.Namespace, Context], None], help: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    command(commands, "migrate", _migrate, "create or upgrade the PostgreSQL schema")
    command(commands, "openapi", _openapi, "print the API's OpenAPI 3.1 document")

    serve = command(commands, "serve", _serve, "run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    serve.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="API processes (default: one per CPU)",
    )  # fmt: skip

    worker = command(commands, "worker", _worker, "run the RQ worker that persists the ledger")
    worker.add_argument("--burst", action="store_true", help="drain what is pending, then exit")

    status = command(commands, "status", _status, "show the write-through lag per shard")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--all", action="store_true", help="list every shard, empty ones too")
    status.add_argument(
        "--max-lag",
        type=float,
        metavar="SECONDS",
        help="exit 1 when the oldest unpersisted entry is older than this (a health check)",
    )

    reconcile = command(
        commands, "reconcile", _reconcile, "compare Redis balances with the PostgreSQL ledger"
    )
    reconcile.add_argument(
        "--repair", action="store_true", help="set drifted balances to the ledger's"
    )
    reconcile.add_argument("--json", action="store_true", help="print JSON")

    ledger = commands.add_parser(
        "ledger", help="the ledger's monthly partitions"
    ).add_subparsers(required=True, metavar="ACTION")
    for name, run, text in (
        ("archive", _ledger_archive, "detach an old month, keeping what it summed to per account"),
        ("restore", _ledger_restore, "attach an archived month's table again"),
    ):
        month = command(ledger, name, run, text)
        month.add_argument("month", type=_month, metavar="YYYY-MM", help="the month, UTC")
        month.add_argument("--json", action="store_true", help="print JSON")

    vault = commands.add_parser(
        "secrets", help="the key that encrypts stored secrets, and its rotation"
    ).add_subparsers(required=True, metavar="ACTION")
    generate = command(vault, "generate-key", _secrets_generate_key, "print a new TALLY_SECRET_KEY")
    generate.add_argument(
        "--file", metavar="PATH", help="write it to PATH (mode 600) unless PATH exists already"
    )
    command(vault, "status", _secrets_status, "count stored secrets by the key that encrypted them")
    command(
        vault,
        "rotate",
        _secrets_rotate,
        "re-encrypt every stored secret under TALLY_SECRET_KEY; safe to stop and run again",
    )

    webhooks = commands.add_parser(
        "webhooks", help="list and retry received payment webhooks"
    ).add_subparsers(required=True, metavar="ACTION")
    hooks_list = command(webhooks, "list", _webhooks_list, "list received webhook events")
    hooks_list.add_argument("--app", metavar="APP_ID", help="only this app's events")
    hooks_list.add_argument("--failed", action="store_true", help="only events that failed")
    hooks_list.add_argument("--status", help="only events with this status")
    hooks_list.add_argument("--limit", type=int, default=100, help="newest N events (100)")
    hooks_retry = command(webhooks, "retry", _webhooks_retry, "apply a failed event again")
    hooks_retry.add_argument(
        "event_pk", type=int, metavar="EVENT_ID", help="the id `webhooks list` shows"
    )

    endpoints = commands.add_parser(
        "endpoints", help="where an app's events are sent (outgoing webhooks)"
    ).add_subparsers(required=True, metavar="ACTION")
    add_endpoint = command(
        endpoints, "add", _endpoints_add, "send an app's events to a URL (its secret shown once)"
    )
    add_endpoint.add_argument("app_id", help="the app's id (app_...)")
    add_endpoint.add_argument("url", help="https://... (http only to this machine)")
    add_endpoint.add_argument(
        "--events", type=_origins, metavar="E1,E2",
        help=f"event types to send (default: all): {', '.join(EVENT_TYPES)}",
    )  # fmt: skip
    list_endpoints = command(endpoints, "list", _endpoints_list, "list an app's endpoints")
    list_endpoints.add_argument("app_id", help="the app's id (app_...)")
    remove_endpoint = command(endpoints, "remove", _endpoints_remove, "stop sending to one")
    remove_endpoint.add_argument("endpoint_id", help="the endpoint's id (we_...)")
    rotate_endpoint = command(
        endpoints, "rotate-secret", _endpoints_rotate,
        "a new signing secret (shown once); the old one also signs for 24 hours",
    )  # fmt: skip
    rotate_endpoint.add_argument("endpoint_id", help="the endpoint's id (we_...)")
    log_endpoint = command(
        endpoints, "deliveries", _endpoints_deliveries, "an endpoint's deliveries, newest first"
    )
    log_endpoint.add_argument("endpoint_id", help="the endpoint's id (we_...)")
    log_endpoint.add_argument("--limit", type=int, default=50, help="newest N (50)")
    events = commands.add_parser("events", help="events sent to apps").add_subparsers(
        required=True, metavar="ACTION"
    )
    redeliver = command(
        events, "redeliver", _events_redeliver, "send an event again to each endpoint it was for"
    )
    redeliver.add_argument("event_id", help="the event's id (evt_..., its webhook-id header)")

    apps = commands.add_parser("apps", help="create, show and configure apps").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = command(apps, "create", _apps_create, "create an app and its first API key")
    create.add_argument("name", help="a name for people (1 to 200 characters)")
    command(apps, "list", _apps_list, "list apps")
    show = command(apps, "show", _apps_show, "show an app's settings and webhook URLs")
    show.add_argument("app_id", help="the app's id (app_...)")
    update = command(apps, "update", _apps_update, "change an app's settings")
    update.add_argument("app_id", help="the app's id (app_...)")
    for secret in _SECRETS:
        provider = secret.removesuffix("_webhook_secret")
        update.add_argument(
            "--" + secret.replace("_", "-"), dest=secret, metavar="SECRET",
            help=f"the signing secret of the app's {provider} webhooks"
            " (- reads it from stdin; '' removes it)",
        )  # fmt: skip
    update.add_argument(
        "--credit-rate", type=_setting("credit_rate", Decimal), metavar="R",
        help="credits per currency unit for payments without tally_credits",
    )  # fmt: skip
    update.add_argument(
        "--overdraft-limit", type=_setting("overdraft_limit", int), metavar="N",
        help="how far below 0 a balance may go (setting it switches overdraft on)",
    )  # fmt: skip
    # The credits configuration (also PATCH /credits/config).
    update.add_argument(
        "--credits-per-dollar", type=_setting("credits_per_dollar", Decimal), metavar="R",
        help="credits one dollar buys: purchases are off until it is set",
    )  # fmt: skip
    update.add_argument("--display-name", metavar="TEXT", help="what credits are called")
    update.add_argument("--display-symbol", metavar="TEXT", help="e.g. CR (1 to 8 characters)")
    update.add_argument(
        "--display-symbol-position", choices=("left", "right"), help="where the symbol goes"
    )
    update.add_argument("--display-decimals", type=int, metavar="N", help="decimals shown (0 to 8)")
    update.add_argument(
        "--min-purchase-cents", type=int, metavar="N", help="smallest purchase, in cents"
    )
    update.add_argument(
        "--max-purchase-cents", type=int, metavar="N", help="largest purchase, in cents"
    )
    for flag, what in _FLAGS.items():
        update.add_argument(
            "--" + flag.replace("_", "-"), type=_boolean, metavar="true|false", help=what
        )
    update.add_argument("--currency", metavar="CODE", help="purchases' currency (default usd)")
    # Purchases, stored cards and browser access.
    update.add_argument(
        "--stripe-secret-key",
        metavar="KEY",
        help="the app's Stripe sk_... (- reads it from stdin; '' removes it)",
    )
    update.add_argument(
        "--cors-origins",
        type=_origins,
        metavar="ORIGINS",
        help="comma-separated origins browsers may call /client/... from ('' for none)",
    )
    update.add_argument(
        "--auto-top-up-daily-limit-cents", type=int, metavar="N",
        help="most auto top-up may charge one user per UTC day, in cents",
    )  # fmt: skip
    update.add_argument(
        "--low-balance-thresholds", type=_setting("low_balance_thresholds", _numbers),
        metavar="N,N,...", help="balance.low fires as a balance falls to each ('' for none)",
    )  # fmt: skip
    for plan, what in (("plan_max_users", "users"), ("plan_monthly_operations", "operations")):
        update.add_argument(
            "--" + plan.replace("_", "-"), type=_setting(plan, _unlimited), metavar="N",
            help=f"most {what} the app's API keys may make ('' for unlimited)"
            + (" in a calendar month (UTC)" if what == "operations" else ""),
        )  # fmt: skip
    rotate = command(
        apps,
        "rotate-client-secret",
        _apps_rotate_client_secret,
        "sign client tokens with a new secret: every token issued so far stops working",
    )
    rotate.add_argument("app_id", help="the app's id (app_...)")

    operators = commands.add_parser(
        "operators", help="the people who sign in to the dashboard"
    ).add_subparsers(required=True, metavar="ACTION")
    op_create = command(operators, "create", _operators_create, "create a dashboard operator")
    op_create.add_argument("email", help="what the operator signs in with")
    op_create.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from stdin (otherwise one is generated and printed once)",
    )  # fmt: skip
    op_create.add_argument(
        "--role", choices=ROLES, default="admin", help="admin changes things; viewer only looks"
    )
    command(operators, "list", _operators_list, "list operators")
    op_disable = command(
        operators, "disable", _operators_disable, "disable an operator and end their sessions"
    )
    op_disable.add_argument("email", help="the operator's email")
    op_reset = command(
        operators, "reset-password", _operators_reset, "set a new password; ends their sessions"
    )
    op_reset.add_argument("email", help="the operator's email")
    op_reset.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from stdin (otherwise one is generated and printed once)",
    )  # fmt: skip

    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        required=True, metavar="ACTION"
    )
    key_create = command(keys, "create", _keys_create, "create an API key (shown once)")
    key_create.add_argument("app_id", help="the app the key is for")
    key_create.add_argument(
        "--rate-limit", type=_rate_limit, metavar="N",
        help="requests per second the key may make, bursts of 2N (default: no limit)",
    )  # fmt: skip
    key_list = command(keys, "list", _keys_list, "list an app's API keys")
    key_list.add_argument("app_id", help="the app's id (app_...)")
    revoke = command(keys, "revoke", _keys_revoke, "revoke an API key")
    revoke.add_argument("key_id", help="the key's id (key_...), as `keys list` shows it")
    key_update = command(keys, "update", _keys_update, "change an API key's rate limit")
    key_update.add_argument("key_id", help="the key's id (key_...), as `keys list` shows it")
    key_update.add_argument(
        "--rate-limit", type=_rate_limit, metavar="N", required=True,
        help="requests per second the key may make, bursts of 2N ('' for no limit)",
    )  # fmt: skip

    for action in (apps, keys, webhooks, vault, operators, endpoints, events):
        for sub in action.choices.values():
            sub.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError("must be true or false")
    return text.lower() == "true"


def _origins(text: str) -> list[str]:
    return [origin.strip() for origin in text.split(",") if origin.strip()]


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


# A plan limit's flag given as '': set the limit to none (argparse's None means "not given").
_UNLIMITED = "unlimited"


def _unlimited(text: str) -> int | None:
    return int(text) if text.strip() else None


def _rate_limit(text: str) -> int | str:
    """An argparse type: a key's rate limit, or _UNLIMITED for ''."""
    if not text.strip():
        return _UNLIMITED
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(RATE_LIMIT_RULE) from None
    problem = rate_limit_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _setting(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: the flag's text parsed, then checked by the engine's rule for it."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except (ValueError, ArithmeticError):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
        problem = setting_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return _UNLIMITED if value is None else value

    return convert


def _migrate(args: argparse.Namespace, cx: Context) -> None:
    applied = migrate(cx.engine.pool)
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    sealed = reseal(cx.engine.pool, cx.engine.keyring, plain_only=True)
    if sealed:
        print(f"encrypted {sealed} secrets stored in plain text")


def _openapi(args: argparse.Namespace, cx: Context) -> None:
    from api.app import create_app
    from api.openapi import document

    print(json.dumps(document(create_app(cx.settings).routes), indent=2))


def _serve(args: argparse.Namespace, cx: Context) -> None:
    import uvicorn

    from api.metrics import share_across_workers

    check_keys(cx.settings)
    if "rate_limit_processes" not in cx.settings.model_fields_set:
        # Each process keeps its own rate limit buckets: together they allow each limit once.
        # The processes uvicorn starts read their settings from this environment.
        os.environ["TALLY_RATE_LIMIT_PROCESSES"] = str(args.workers)
    share_across_workers(args.workers)  # before uvicorn starts its processes
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=cx.settings.log_level,
        log_config=logs.uvicorn_config(cx.settings.log_level),
        access_log=False,
        server_header=False,
        http="api.server:TallyProtocol",
    )


def _worker(args: argparse.Namespace, cx: Context) -> None:
    check_keys(cx.settings)
    # The worker serves its own metrics from its memory: counted into the API's directory too,
    # they would show on the API's /metrics as well.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # The worker is a process of its own (python -m workers): the API never imports it.
    command = [sys.executable, "-m", "workers", *(["--burst"] if args.burst else [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def _status(args: argparse.Namespace, cx: Context) -> None:
    nodes = [asdict(node) for node in node_states(cx.engine.sync_redis)]
    lags = outbox_lag(cx.engine.sync_redis)
    depth, oldest = sum(lag.depth for lag in lags), max(lag.oldest_age_seconds for lag in lags)
    shards = [asdict(lag) for lag in lags if lag.depth or args.all]
    columns = ("node", "role", "state", "used_memory", "maxmemory", "connected_replicas")
    text = table(nodes, columns, "")
    text += f"\noutbox: {depth} entries, oldest {oldest:.1f} s"
    if shards:
        text += "\n" + table(shards, ("shard", "depth", "oldest_age_seconds"), "")
    view = {
        "redis_nodes": nodes, "outbox_depth": depth, "oldest_age_seconds": oldest, "shards": shards,
    }  # fmt: skip
    _print(args, view, text)
    if args.max_lag is not None and oldest > args.max_lag:
        sys.exit(1)


def _reconcile(args: argparse.Namespace, cx: Context) -> None:
    report = cx.engine.reconcile(repair=args.repair).as_dict()
    text = (
        f"checked {report['accounts_checked']} accounts, skipped {report['accounts_skipped']}"
        f" (outbox not drained), {report['drifted']} drifted, {report['repaired']} repaired"
    )
    _print(args, report, text)
    if report["drifted"] and not args.repair:
        sys.exit(3)


def _month(text: str) -> date:
    try:
        return date.fromisoformat(f"{text}-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month (YYYY-MM)") from None


def _ledger_archive(args: argparse.Namespace, cx: Context) -> None:
    done = archive_month(cx.engine.pool, args.month)
    text = (
        f"detached {done.partition}: {done.entries} entries of {done.accounts} accounts;"
        f" dump it (pg_dump -Fc -t {done.partition}), then drop it"
    )
    _print(args, asdict(done), text)


def _ledger_restore(args: argparse.Namespace, cx: Context) -> None:
    done = restore_month(cx.engine.pool, args.month)
    text = f"attached {done.partition}: {done.entries} entries of {done.accounts} accounts"
    _print(args, asdict(done), text)


def _secrets_generate_key(args: argparse.Namespace, cx: Context) -> None:
    if args.file is None:
        key = generate_key()
        _print(args, {"secret_key": key}, key)
        return
    path = Path(args.file)
    try:
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(generate_key() + "\n")
    except FileExistsError:
        _print(args, {"file": str(path), "created": False}, f"kept the secret key in {path}")
        return
    text = f"wrote a new secret key to {path}: back it up, apart from the database's backups"
    _print(args, {"file": str(path), "created": True}, text)


def _secrets_status(args: argparse.Namespace, cx: Context) -> None:
    keyring = cx.engine.keyring
    counts = census(cx.engine.pool)
    views = [
        {"key_id": kid, "key": _key_role(kid, keyring.current_id, keyring.key_ids), "secrets": n}
        for kid, n in sorted(counts.items())
    ]
    _print(args, views, table(views, ("key_id", "key", "secrets"), "no secrets are stored"))


def _key_role(kid: str, current: str | None, known: frozenset[str]) -> str:
    if kid == PLAIN:
        return "not encrypted: run tally migrate"
    if kid == current:
        return "TALLY_SECRET_KEY"
    return "TALLY_SECRET_KEY_PREVIOUS" if kid in known else "unknown: no key set opens these"


def _secrets_rotate(args: argparse.Namespace, cx: Context) -> None:
    keyring = cx.engine.keyring
    moved = reseal(cx.engine.pool, keyring)
    counts = census(cx.engine.pool)
    under = counts[keyring.current_id or ""]
    # A process still running with the old key as its TALLY_SECRET_KEY writes behind us.
    left = sum(counts.values()) - under
    view = {"moved": moved, "key_id": keyring.current_id, "secrets": under, "left": left}
    text = f"re-encrypted {moved} secrets under key {keyring.current_id}; {under} are under it"
    if left:
        text += f", {left} are not: is a process still running with the old key? run it again"
    _print(args, view, text)
    if left:
        sys.exit(1)


def _webhooks_list(args: argparse.Namespace, cx: Context) -> None:
    status = "failed" if args.failed else args.status
    events = cx.engine.webhooks.list_events(args.app, status, args.limit)
    views = [_event_view(event) for event in events]
    columns = ("id", "received_at", "app_id", "provider", "event_type", "payment_id", "status",
               "reason")  # fmt: skip
    _print(args, views, table(views, columns, "no webhook events"))


def _webhooks_retry(args: argparse.Namespace, cx: Context) -> None:
    event = cx.engine.webhooks.reopen(args.event_pk)
    Jobs(cx.engine.raw_redis).apply_webhook_event(event.event_pk)
    _print(args, _event_view(event), f"event {event.event_pk} queued again")


def _event_view(event: WebhookEvent) -> dict[str, Any]:
    view = asdict(event)
    view["id"] = view.pop("event_pk")
    view["received_at"] = event.received_at.isoformat()
    view["updated_at"] = event.updated_at.isoformat()
    return view


def _endpoints_add(args: argparse.Namespace, cx: Context) -> None:
    app = cx.engine.apps.get(args.app_id)
    endpoint = cx.engine.endpoints.create(app.app_id, args.url, args.events)
    view = {**endpoint_view(endpoint), "secret": endpoint.secret}
    text = f"endpoint {endpoint.endpoint_id} added\nsigning secret (shown once): {endpoint.secret}"
    _print(args, view, text)


def _endpoints_list(args: argparse.Namespace, cx: Context) -> None:
    cx.engine.apps.get(args.app_id)
    views = [endpoint_view(e) for e in cx.engine.endpoints.of_app(args.app_id)]
    rows = [view | {"events": ",".join(view["events"])} for view in views]
    _print(args, views, table(rows, ("id", "url", "events", "created_at"), "no endpoints"))


def _endpoints_remove(args: argparse.Namespace, cx: Context) -> None:
    endpoint = cx.engine.endpoints.delete(args.endpoint_id)
    _print(args, endpoint_view(endpoint), f"endpoint {endpoint.endpoint_id} removed")


def _endpoints_rotate(args: argparse.Namespace, cx: Context) -> None:
    endpoint = cx.engine.endpoints.rotate_secret(args.endpoint_id)
    view = {**endpoint_view(endpoint), "secret": endpoint.secret}
    until = view["previous_secret_expires_at"]
    text = (
        f"new signing secret (shown once): {endpoint.secret}\nthe previous one signs until {until}"
    )
    _print(args, view, text)


def _endpoints_deliveries(args: argparse.Namespace, cx: Context) -> None:
    endpoint = cx.engine.endpoints.get(args.endpoint_id)
    found = cx.engine.deliveries.log(endpoint.endpoint_id, args.limit)
    views: list[dict[str, Any]] = [dict(delivery_view(d)) for d in found]
    columns = ("id", "event_id", "event_type", "status", "attempts", "response_code",
               "next_attempt_at", "last_error")  # fmt: skip
    _print(args, views, table(views, columns, "no deliveries"))


def _events_redeliver(args: argparse.Namespace, cx: Context) -> None:
    queued = cx.engine.deliveries.redeliver(args.event_id)
    view = {"event_id": args.event_id, "deliveries": len(queued)}
    _print(args, view, f"event {args.event_id} queued again for {len(queued)} endpoints")


def _apps_create(args: argparse.Namespace, cx: Context) -> None:
    app, new_key = cx.engine.apps.create(args.name)
    view = _app_view(app, cx.settings) | {"api_key": new_key.api_key, "key_id": new_key.key.key_id}
    _print(args, view, f"app {app.app_id} created\nAPI key (shown once): {new_key.api_key}")


def _apps_list(args: argparse.Namespace, cx: Context) -> None:
    apps = [_app_view(app, cx.settings) for app in cx.engine.apps.list_apps()]
    _print(args, apps, table(apps, ("app_id", "name", "created_at"), "no apps"))


def _apps_show(args: argparse.Namespace, cx: Context) -> None:
    view = _app_view(cx.engine.apps.get(args.app_id), cx.settings)
    _print(args, view, fields(view))


def _apps_update(args: argparse.Namespace, cx: Context) -> None:
    changes = {
        name: getattr(args, name)
        for name in (*_SECRETS, *_BILLING, *_SETTINGS, *CREDITS_CONFIG)
        if getattr(args, name) is not None
    }
    changes = {name: None if value == _UNLIMITED else value for name, value in changes.items()}
    from_stdin = [name for name in SECRET_COLUMNS if changes.get(name) == "-"]
    if len(from_stdin) > 1:
        raise InvalidRequestError("only one secret can be read from stdin at a time")
    for name in from_stdin:
        # A secret on the command line is visible to `ps` and kept in shell history.
        changes[name] = sys.stdin.readline().strip()
        if not changes[name]:
            raise InvalidRequestError(f"no {name} on stdin (pass '' to remove the secret)")
    view = _app_view(cx.engine.apps.update(args.app_id, changes), cx.settings)
    _print(args, view, fields(view))


def _apps_rotate_client_secret(args: argparse.Namespace, cx: Context) -> None:
    view = _app_view(cx.engine.apps.rotate_client_secret(args.app_id), cx.settings)
    _print(args, view, f"app {args.app_id}: client tokens issued so far are revoked")


def _keys_create(args: argparse.Namespace, cx: Context) -> None:
    rate_limit = None if args.rate_limit == _UNLIMITED else args.rate_limit
    new_key = cx.engine.apps.create_key(args.app_id, rate_limit)
    view = _key_view(new_key.key) | {"api_key": new_key.api_key}
    text = f"key {new_key.key.key_id} created, {_limit_text(rate_limit)}"
    _print(args, view, f"{text}\nAPI key (shown once): {new_key.api_key}")


def _keys_list(args: argparse.Namespace, cx: Context) -> None:
    keys = [_key_view(key) for key in cx.engine.apps.list_keys(args.app_id)]
    columns = (
        "key_id", "key_prefix", "status", "rate_limit", "created_at", "last_used_at", "revoked_at",
    )  # fmt: skip
    _print(args, keys, table(keys, columns, "no API keys"))


def _keys_revoke(args: argparse.Namespace, cx: Context) -> None:
    key = _key_view(cx.engine.apps.revoke_key(args.key_id))
    _print(args, key, f"key {key['key_id']} revoked")


def _keys_update(args: argparse.Namespace, cx: Context) -> None:
    rate_limit = None if args.rate_limit == _UNLIMITED else args.rate_limit
    key = _key_view(cx.engine.apps.set_rate_limit(args.key_id, rate_limit))
    _print(args, key, f"key {key['key_id']}: {_limit_text(rate_limit)} within a second")


def _limit_text(rate_limit: int | None) -> str:
    if rate_limit is None:
        return "no rate limit"
    return f"rate limit {rate_limit} requests/s, bursts of {2 * rate_limit}"


def _operators_create(args: argparse.Namespace, cx: Context) -> None:
    password, generated = _password(args)
    operator = cx.engine.operators.create(args.email, password, args.role)
    cx.engine.audit.record("cli", "operator.created", email=operator.email, role=operator.role)
    view = _operator_view(operator) | ({"password": password} if generated else {})
    text = f"operator {operator.email} ({operator.role}) created"
    _print(args, view, text + (f"\npassword (shown once): {password}" if generated else ""))


def _operators_list(args: argparse.Namespace, cx: Context) -> None:
    views = [_operator_view(operator) for operator in cx.engine.operators.list()]
    _print(args, views, table(views, ("email", "role", "status", "created_at"), "no operators"))


def _operators_disable(args: argparse.Namespace, cx: Context) -> None:
    operator = cx.engine.operators.disable(args.email)
    cx.engine.audit.record("cli", "operator.disabled", email=operator.email)
    _print(args, _operator_view(operator), f"operator {operator.email} disabled; signed out")


def _operators_reset(args: argparse.Namespace, cx: Context) -> None:
    password, generated = _password(args)
    operator = cx.engine.operators.reset_password(args.email, password)
    cx.engine.audit.record("cli", "operator.password_reset", email=operator.email)
    view = _operator_view(operator) | ({"password": password} if generated else {})
    text = f"operator {operator.email}: new password set; signed out everywhere"
    _print(args, view, text + (f"\npassword (shown once): {password}" if generated else ""))


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password from stdin (a password on the command line is visible to `ps`), or a
    generated one; and whether it was generated."""
    if not args.password_stdin:
        return generate_password(), True
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise InvalidRequestError("no password on stdin")
    return password, False


def _operator_view(operator: Operator) -> dict[str, Any]:
    return {
        "email": operator.email,
        "role": operator.role,
        "status": "disabled" if operator.disabled_at else "active",
        "created_at": operator.created_at.isoformat(),
    }


def _app_view(app: App, settings: Settings) -> dict[str, Any]:
    view = asdict(app)
    for secret in _SECRETS:
        # Secrets are write-only: show whether one is set, never its value.
        view[secret.replace("_secret", "_secret_set")] = view.pop(secret) is not None
    view["stripe_secret_key_set"] = view.pop("stripe_secret_key") is not None
    del view["client_token_secret"]
    view["credit_rate"] = None if app.credit_rate is None else str(app.credit_rate)
    rate = app.credits_per_dollar
    view["credits_per_dollar"] = None if rate is None else str(rate)
    view["created_at"] = app.created_at.isoformat()
    view["webhook_urls"] = webhook_urls(app.app_id, settings.public_url)
    return view


def _key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "app_id": key.app_id,
        "key_prefix": key.key_prefix,
        "status": "revoked" if key.revoked_at else "active",
        "rate_limit": key.rate_limit,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


def _print(args: argparse.Namespace, view: Any, text: str) -> None:
    print(json.dumps(view, indent=2) if args.json else text)


if __name__ == "__main__":
    main()
