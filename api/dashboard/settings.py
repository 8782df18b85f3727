"""An app's Settings: webhook URLs, write-only secrets, the credits configuration, the plan
and low balance thresholds, saved through the same engine call and rules as PATCH
/credits/config and `tally apps update`; and the plan's usage this month."""

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from redis.exceptions import RedisError
from starlette.responses import RedirectResponse, Response

from api.dashboard.access import PREFIX, Visit, change, page
from engine.accounts.apps import SETTING_RULES, setting_problem
from engine.errors import SettingsError, TallyError
from engine.models import App
from engine.payments.providers import EVENTS, webhook_urls
from engine.plans.usage import Usage

# name, label, kind: the form, in the order the page shows it.
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("credits_enabled", "Credits enabled", "bool"),
    ("credits_per_dollar", "Credits per dollar", "decimal"),
    ("display_name", "Display name", "text"),
    ("display_symbol", "Display symbol", "optional"),
    ("display_symbol_position", "Symbol position", "position"),
    ("display_decimals", "Display decimals", "int"),
    ("currency", "Currency", "text"),
    ("min_purchase_cents", "Minimum purchase (cents)", "int"),
    ("max_purchase_cents", "Maximum purchase (cents)", "int"),
    ("overdraft_enabled", "Overdraft enabled", "bool"),
    ("overdraft_limit", "Overdraft limit (credits)", "int"),
    ("manual_top_up_available", "Manual top-up available", "bool"),
    ("auto_top_up_available", "Auto top-up available", "bool"),
    ("auto_top_up_daily_limit_cents", "Daily auto top-up cap (cents)", "int"),
    ("credit_rate", "Credit rate (webhook payments)", "decimal"),
    ("cors_origins", "CORS origins", "origins"),
)
PLAN_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("low_balance_thresholds", "Low balance thresholds", "numbers"),
    ("plan_max_users", "Max users (plan)", "limit"),
    ("plan_monthly_operations", "Monthly operations (plan)", "limit"),
)
# The form's sections: a name, a heading and the fields.
SECTIONS = (("credits", "Credits", FIELDS), ("plan", "Plan and low balance", PLAN_FIELDS))
_ALL_FIELDS = FIELDS + PLAN_FIELDS
SECRETS = {
    "stripe_webhook_secret": "Stripe webhook secret",
    "polar_webhook_secret": "Polar webhook secret",
    "lemonsqueezy_webhook_secret": "Lemon Squeezy webhook secret",
    "stripe_secret_key": "Stripe secret key",
}
PROVIDER_NAMES = {"stripe": "Stripe", "polar": "Polar", "lemonsqueezy": "Lemon Squeezy"}


@page
async def settings_page(visit: Visit) -> Response:
    app = await visit.app()
    saved = visit.request.query_params.get("saved") == "1"
    return await _page(visit, app, _values(app), {}, saved=saved)


@change
async def save_settings(visit: Visit) -> Response:
    app = await visit.app()
    values, problems = _parse(visit.form)
    changes = {name: value for name, value in values.items() if value != getattr(app, name)}
    if "overdraft_limit" in changes:
        # The form states the switch itself: a new limit alone must not turn overdraft on.
        changes["overdraft_enabled"] = values["overdraft_enabled"]
    for name in SECRETS:
        if visit.form.get(f"remove_{name}") == "true":
            changes[name] = ""
        elif visit.form.get(name, "").strip():
            changes[name] = visit.form[name].strip()
    if problems:
        return await _page(visit, app, visit.form, problems, status=400)
    if not changes:
        return RedirectResponse(f"{PREFIX}/apps/{app.app_id}/settings?saved=1", status_code=303)
    try:
        await visit.run(visit.engine.apps.update, app.app_id, changes)
    except SettingsError as exc:
        return await _page(visit, app, visit.form, exc.problems, status=400)
    visit.engine.app_cache.forget(app.app_id)
    await visit.audit("settings.changed", app.app_id, **{
        name: ("removed" if value == "" else "set") if name in SECRETS else _shown(value)
        for name, value in changes.items()
    })  # fmt: skip
    return RedirectResponse(f"{PREFIX}/apps/{app.app_id}/settings?saved=1", status_code=303)


def _parse(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each field's value as the engine takes it, and what is wrong with those that do not
    even parse, in the words PATCH /credits/config uses."""
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, _, kind in _ALL_FIELDS:
        text = form.get(name, "").strip()
        try:
            values[name] = _value(kind, text)
        except (ValueError, InvalidOperation):
            problems[name] = SETTING_RULES[name][1]
            continue
        problem = setting_problem(name, values[name])
        if problem:
            problems[name] = problem
    return values, problems


def _value(kind: str, text: str) -> Any:
    if kind == "bool":
        return text == "true"
    if kind == "int":
        return int(text)
    if kind == "decimal":
        return Decimal(text) if text else None
    if kind == "optional":
        return text or None
    if kind == "origins":
        return [origin for origin in text.replace(",", " ").split() if origin]
    if kind == "numbers":
        # Highest first, each once, as the engine stores them: the same list is no change.
        return sorted({int(part) for part in text.split(",") if part.strip()}, reverse=True)
    if kind == "limit":
        return int(text) if text else None
    return text


def _values(app: App) -> dict[str, str]:
    """The form's fields filled in from the app."""
    values: dict[str, str] = {}
    for name, _, kind in _ALL_FIELDS:
        value = getattr(app, name)
        if kind == "bool":
            values[name] = "true" if value else "false"
        elif kind == "origins":
            values[name] = "\n".join(value)
        elif kind == "numbers":
            values[name] = ", ".join(str(number) for number in value)
        else:
            values[name] = "" if value is None else str(value)
    return values


def _shown(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


async def _usage(visit: Visit, app: App) -> Usage | None:
    """This month's operations and users against the plan; None when Redis, which counts the
    operations, does not answer (the settings themselves are in PostgreSQL)."""
    try:
        return await visit.run(
            visit.engine.plans.usage,
            app.app_id,
            app.plan_monthly_operations,
            app.plan_max_users,
            time.time_ns() // 1_000_000,
        )
    except (RedisError, TallyError):
        return None


async def _page(
    visit: Visit,
    app: App,
    values: dict[str, str],
    problems: dict[str, str],
    *,
    saved: bool = False,
    status: int = 200,
) -> Response:
    base = visit.engine.settings.public_url or str(visit.request.base_url)
    urls = webhook_urls(app.app_id, base)
    providers = [(PROVIDER_NAMES[p], urls[p], EVENTS[p]) for p in urls]
    secrets = [(name, label, getattr(app, name) is not None) for name, label in SECRETS.items()]
    return visit.render(
        "settings.html",
        status,
        app=app,
        tab="settings",
        sections=SECTIONS,
        usage=await _usage(visit, app),
        values=values,
        problems=problems,
        saved=saved,
        providers=providers,
        secrets=secrets,
    )
