"""The apps list, an app's Overview and its API Keys."""

from starlette.responses import RedirectResponse, Response

from api.dashboard import charts
from api.dashboard.access import PREFIX, Visit, change, page
from engine.accounts.apps import RATE_LIMIT_RULE, NewKey
from engine.errors import InvalidRequestError, NotFoundError, TallyError

DAYS = 30
HOURS = 48
TOP_USERS = 10


@page
async def home(visit: Visit) -> Response:
    return await _home(visit)


@change
async def create_app(visit: Visit) -> Response:
    try:
        app, new_key = await visit.run(visit.engine.apps.create, visit.form.get("name", ""))
    except TallyError as exc:
        return await _home(visit, error=exc.message, status=400)
    await visit.audit("app.created", app.app_id, name=app.name, key_id=new_key.key.key_id)
    return await _home(visit, created=(app.app_id, new_key), status=201)


async def _home(
    visit: Visit,
    *,
    created: tuple[str, NewKey] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    apps = await visit.run(visit.engine.apps.list_apps)
    totals = await visit.run(visit.engine.summaries.app_totals)
    return visit.render(
        "home.html",
        status,
        apps=apps,
        totals=totals,
        created=created,
        error=error,
        name=visit.form.get("name", "") if error else "",
    )


@page
async def overview(visit: Visit) -> Response:
    app = await visit.app()
    summaries = visit.engine.summaries
    days = await visit.run(summaries.days, app.app_id, DAYS)
    hours = await visit.run(summaries.deducts_per_hour, app.app_id, HOURS)
    top = await visit.run(summaries.top_users, app.app_id, DAYS, TOP_USERS)
    day_labels = [day.day.strftime("%b %d") for day in days]
    added, deducted = [d.added for d in days], [d.deducted for d in days]
    refusals = [d.refusals for d in days]
    per_hour = [count for _, count in hours]
    chart = {
        "credits": any(added) or any(deducted),
        "hours": any(per_hour),
        "refusals": any(refusals),
    }
    return visit.render(
        "overview.html",
        app=app,
        tab="overview",
        chart=chart,
        credits_chart=charts.bars(
            day_labels,
            [("added", added), ("deducted", deducted)],
            title="Credits added and deducted per day",
        ),
        hours_chart=charts.bars(
            [hour.strftime("%H:00") for hour, _ in hours],
            [("deducts", per_hour)],
            title="Deducts per hour",
        ),
        refusals_chart=charts.bars(
            day_labels, [("refused", refusals)], title="Deducts refused for insufficient credits"
        ),
        top_chart=charts.ranking(top, title="Top users by credits deducted"),
        top=top,
        totals={"added": sum(added), "deducted": sum(deducted), "refusals": sum(refusals)},
    )


@page
async def keys(visit: Visit) -> Response:
    return await _keys(visit)


@change
async def create_key(visit: Visit) -> Response:
    app = await visit.app()
    try:
        rate_limit = _rate_limit(visit.form.get("rate_limit", ""))
        new_key = await visit.run(visit.engine.apps.create_key, app.app_id, rate_limit)
    except InvalidRequestError as exc:
        return await _keys(visit, error=exc.message, status=400)
    limit = {} if rate_limit is None else {"rate_limit": rate_limit}
    await visit.audit("key.created", app.app_id, key_id=new_key.key.key_id, **limit)
    return await _keys(visit, new_key=new_key, status=201)


def _rate_limit(text: str) -> int | None:
    """The form's rate limit: empty for none."""
    if not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidRequestError(RATE_LIMIT_RULE) from None


@change
async def revoke_key(visit: Visit) -> Response:
    app = await visit.app()
    key_id = visit.request.path_params["key_id"]
    if key_id not in {
        key.key_id for key in await visit.run(visit.engine.apps.list_keys, app.app_id)
    }:
        raise NotFoundError(f"no key {key_id} in app {app.app_id}")
    await visit.run(visit.engine.apps.revoke_key, key_id)
    await visit.audit("key.revoked", app.app_id, key_id=key_id)
    return RedirectResponse(f"{PREFIX}/apps/{app.app_id}/keys", status_code=303)


async def _keys(
    visit: Visit, *, new_key: NewKey | None = None, error: str | None = None, status: int = 200
) -> Response:
    app = await visit.app()
    listed = await visit.run(visit.engine.apps.list_keys, app.app_id)
    return visit.render(
        "keys.html",
        status,
        app=app,
        tab="keys",
        keys=listed[::-1],
        new_key=new_key,
        error=error,
        rate_limit=visit.form.get("rate_limit", "") if error else "",
    )
