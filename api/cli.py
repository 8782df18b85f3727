"""The `tally` command."""

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.apps import Apps, webhook_urls
from engine.db import migrate, open_pool
from engine.errors import TallyError
from engine.models import CREDITS_CONFIG, MAX_AMOUNT, ApiKey, App
from engine.outbox import outbox_lag
from engine.reconcile import reconcile
from engine.repository import Repository
from engine.settings import Settings
from engine.webhook_repository import WebhookEvent, WebhookRepository
from engine.webhooks import Webhooks

_SECRETS = ("stripe_webhook_secret", "polar_webhook_secret", "lemonsqueezy_webhook_secret")
_BILLING = ("stripe_secret_key", "cors_origins", "auto_top_up_daily_limit_cents")
_FLAGS = (
    "credits_enabled",
    "overdraft_enabled",
    "manual_top_up_available",
    "auto_top_up_available",
)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        args.run(args, settings)
    except TallyError as exc:
        print(f"tally: {exc.message}", file=sys.stderr)
        sys.exit(1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description="Tally credits engine")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, run: Callable[[argparse.Namespace, Settings], None], help: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    command(commands, "migrate", _migrate, "create or upgrade the PostgreSQL schema")

    serve = command(commands, "serve", _serve, "run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1)

    worker = command(commands, "worker", _worker, "run the RQ worker that persists the ledger")
    worker.add_argument("--burst", action="store_true", help="drain what is pending, then exit")

    status = command(commands, "status", _status, "show the write-through lag per shard")
    status.add_argument("--json", action="store_true", help="print JSON")
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

    webhooks = commands.add_parser(
        "webhooks", help="list and retry received payment webhooks"
    ).add_subparsers(required=True, metavar="ACTION")
    hooks_list = command(webhooks, "list", _webhooks_list, "list received webhook events")
    hooks_list.add_argument("--app", metavar="APP_ID", help="only this app's events")
    hooks_list.add_argument("--failed", action="store_true", help="only events that failed")
    hooks_list.add_argument("--status", help="only events with this status")
    hooks_list.add_argument("--limit", type=int, default=100)
    hooks_retry = command(webhooks, "retry", _webhooks_retry, "apply a failed event again")
    hooks_retry.add_argument("event_pk", type=int, metavar="EVENT_ID")

    apps = commands.add_parser("apps", help="create, show and configure apps").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = command(apps, "create", _apps_create, "create an app and its first API key")
    create.add_argument("name")
    command(apps, "list", _apps_list, "list apps")
    show = command(apps, "show", _apps_show, "show an app's settings and webhook URLs")
    show.add_argument("app_id")
    update = command(apps, "update", _apps_update, "change an app's settings")
    update.add_argument("app_id")
    for secret in _SECRETS:
        update.add_argument("--" + secret.replace("_", "-"), dest=secret, metavar="SECRET")
    update.add_argument("--credit-rate", type=_credit_rate, metavar="R")
    update.add_argument("--overdraft-limit", type=_overdraft_limit, metavar="N")
    # The credits configuration (also PATCH /credits/config).
    update.add_argument("--credits-per-dollar", type=_credit_rate, metavar="R")
    update.add_argument("--display-name", metavar="TEXT")
    update.add_argument("--display-symbol", metavar="TEXT")
    update.add_argument("--display-symbol-position", choices=("left", "right"))
    update.add_argument("--display-decimals", type=int, metavar="N")
    update.add_argument("--min-purchase-cents", type=int, metavar="N")
    update.add_argument("--max-purchase-cents", type=int, metavar="N")
    for flag in _FLAGS:
        update.add_argument("--" + flag.replace("_", "-"), type=_boolean, metavar="true|false")
    update.add_argument("--currency", metavar="CODE", help="purchases' currency (default usd)")
    # Purchases, stored cards and browser access.
    update.add_argument("--stripe-secret-key", metavar="KEY", help="the app's Stripe sk_...")
    update.add_argument(
        "--cors-origins",
        type=_origins,
        metavar="ORIGINS",
        help="comma-separated origins browsers may call /client/... from ('' for none)",
    )
    update.add_argument("--auto-top-up-daily-limit-cents", type=int, metavar="N")
    rotate = command(
        apps,
        "rotate-client-secret",
        _apps_rotate_client_secret,
        "sign client tokens with a new secret: every token issued so far stops working",
    )
    rotate.add_argument("app_id")

    keys = commands.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        required=True, metavar="ACTION"
    )
    key_create = command(keys, "create", _keys_create, "create an API key (shown once)")
    key_create.add_argument("app_id")
    key_list = command(keys, "list", _keys_list, "list an app's API keys")
    key_list.add_argument("app_id")
    revoke = command(keys, "revoke", _keys_revoke, "revoke an API key")
    revoke.add_argument("key_id")

    for action in (apps, keys, webhooks):
        for sub in action.choices.values():
            sub.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError("must be true or false")
    return text.lower() == "true"


def _origins(text: str) -> list[str]:
    return [origin.strip() for origin in text.split(",") if origin.strip()]


def _credit_rate(text: str) -> Decimal:
    try:
        rate = Decimal(text)
    except InvalidOperation:
        rate = Decimal(0)
    if not rate.is_finite() or rate <= 0:
        raise argparse.ArgumentTypeError("must be a number above 0")
    return rate


def _overdraft_limit(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_AMOUNT:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_AMOUNT}")
    return int(text)


def _apps(settings: Settings) -> Apps:
    return Apps(Repository(open_pool(settings.database_url, 1, wait=True)))


def _migrate(args: argparse.Namespace, settings: Settings) -> None:
    applied = migrate(open_pool(settings.database_url, 1, wait=True))
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
    )


def _worker(args: argparse.Namespace, settings: Settings) -> None:
    from workers.runner import run

    sys.exit(run(settings, burst=args.burst))


def _status(args: argparse.Namespace, settings: Settings) -> None:
    from redis import Redis

    lags = outbox_lag(Redis.from_url(settings.redis_url, decode_responses=True))
    view = {
        "outbox_depth": sum(lag.depth for lag in lags),
        "oldest_age_seconds": max(lag.oldest_age_seconds for lag in lags),
        "shards": [asdict(lag) for lag in lags],
    }
    busy = [
        f"  shard {lag.shard}: {lag.depth} entries, oldest {lag.oldest_age_seconds:.1f}s"
        for lag in lags
        if lag.depth
    ]
    text = f"outbox: {view['outbox_depth']} entries, oldest {view['oldest_age_seconds']:.1f}s"
    _print(args, view, "\n".join([text, *busy]))
    if args.max_lag is not None and view["oldest_age_seconds"] > args.max_lag:
        sys.exit(1)


def _reconcile(args: argparse.Namespace, settings: Settings) -> None:
    from redis.asyncio import Redis

    async def run() -> dict[str, Any]:
        redis = Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            repository = Repository(open_pool(settings.database_url, 2, wait=True))
            return (await reconcile(redis, repository, repair=args.repair)).as_dict()
        finally:
            await redis.aclose()

    report = asyncio.run(run())
    text = (
        f"checked {report['accounts_checked']} accounts, skipped {report['accounts_skipped']}"
        f" (outbox not drained), {report['drifted']} drifted, {report['repaired']} repaired"
    )
    _print(args, report, text)
    if report["drifted"] and not args.repair:
        sys.exit(3)


def _webhooks(settings: Settings) -> Webhooks:
    pool = open_pool(settings.database_url, 1, wait=True)
    return Webhooks(Repository(pool), WebhookRepository(pool))


def _webhooks_list(args: argparse.Namespace, settings: Settings) -> None:
    status = "failed" if args.failed else args.status
    events = _webhooks(settings).list_events(args.app, status, args.limit)
    views = [_event_view(event) for event in events]
    lines = (
        f"{e['id']}  {e['received_at']}  {e['app_id']}  {e['provider']}  {e['event_type']}"
        f"  payment={e['payment_id']}  {e['status']}{'  ' + e['reason'] if e['reason'] else ''}"
        for e in views
    )
    _print(args, views, "\n".join(lines))


def _webhooks_retry(args: argparse.Namespace, settings: Settings) -> None:
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from workers.runner import QUEUE, enqueue_webhook

    event = _webhooks(settings).reopen(args.event_pk)
    queue = Queue(QUEUE, connection=Redis.from_url(settings.redis_url), serializer=JSONSerializer)
    enqueue_webhook(queue, event.event_pk)
    _print(args, _event_view(event), f"event {event.event_pk} queued again")


def _event_view(event: WebhookEvent) -> dict[str, Any]:
    view = asdict(event)
    view["id"] = view.pop("event_pk")
    view["received_at"] = event.received_at.isoformat()
    view["updated_at"] = event.updated_at.isoformat()
    return view


def _apps_create(args: argparse.Namespace, settings: Settings) -> None:
    app, new_key = _apps(settings).create(args.name)
    view = _app_view(app, settings) | {"api_key": new_key.api_key, "key_id": new_key.key.key_id}
    _print(args, view, f"app {app.app_id} created\nAPI key (shown once): {new_key.api_key}")


def _apps_list(args: argparse.Namespace, settings: Settings) -> None:
    apps = [_app_view(app, settings) for app in _apps(settings).list_apps()]
    _print(args, apps, "\n".join(f"{a['app_id']}  {a['name']}" for a in apps))


def _apps_show(args: argparse.Namespace, settings: Settings) -> None:
    view = _app_view(_apps(settings).get(args.app_id), settings)
    _print(args, view, _lines(view))


def _apps_update(args: argparse.Namespace, settings: Settings) -> None:
    changes = {
        name: getattr(args, name)
        for name in (*_SECRETS, *_BILLING, "credit_rate", "overdraft_limit", *CREDITS_CONFIG)
        if getattr(args, name) is not None
    }
    view = _app_view(_apps(settings).update(args.app_id, changes), settings)
    _print(args, view, _lines(view))


def _apps_rotate_client_secret(args: argparse.Namespace, settings: Settings) -> None:
    view = _app_view(_apps(settings).rotate_client_secret(args.app_id), settings)
    _print(args, view, f"app {args.app_id}: client tokens issued so far are revoked")


def _keys_create(args: argparse.Namespace, settings: Settings) -> None:
    new_key = _apps(settings).create_key(args.app_id)
    view = _key_view(new_key.key) | {"api_key": new_key.api_key}
    _print(args, view, f"key {new_key.key.key_id} created\nAPI key (shown once): {new_key.api_key}")


def _keys_list(args: argparse.Namespace, settings: Settings) -> None:
    keys = [_key_view(key) for key in _apps(settings).list_keys(args.app_id)]
    lines = (f"{k['key_id']}  {k['key_prefix']}...  {k['status']}" for k in keys)
    _print(args, keys, "\n".join(lines))


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> None:
    key = _key_view(_apps(settings).revoke_key(args.key_id))
    _print(args, key, f"key {key['key_id']} revoked")


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
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


def _lines(view: dict[str, Any]) -> str:
    return "\n".join(f"{name}: {value}" for name, value in view.items())


def _print(args: argparse.Namespace, view: Any, text: str) -> None:
    print(json.dumps(view, indent=2) if args.json else text)


if __name__ == "__main__":
    main()
