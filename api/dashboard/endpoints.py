"""An app's Events tab: the endpoints its events are sent to, each one's delivery log, and
redelivery, through the same engine calls as /webhook-endpoints and `tally endpoints`.
(The Webhooks tab is the other direction: payment webhooks received.)"""

from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from api.dashboard.access import PREFIX, Visit, change, page
from engine.errors import InvalidRequestError
from engine.events.repository import Endpoint
from engine.events.types import EVENT_TYPES

LOG_LIMIT = 100
# One checkbox per type, each its own field: a form's repeated field keeps only its last value.
_CHECKBOX = "event:"


@page
async def endpoints(visit: Visit) -> Response:
    return await _endpoints(visit)


@change
async def create_endpoint(visit: Visit) -> Response:
    app = await visit.app()
    url = visit.form.get("url", "").strip()
    wanted = [kind for kind in EVENT_TYPES if visit.form.get(_CHECKBOX + kind) == "true"]
    try:
        # None checked is every type, as the API's events omitted.
        endpoint = await visit.run(visit.engine.endpoints.create, app.app_id, url, wanted or None)
    except InvalidRequestError as exc:
        return await _endpoints(visit, error=exc.message, status=400)
    await visit.audit(
        "endpoint.created",
        app.app_id,
        endpoint_id=endpoint.endpoint_id,
        url=endpoint.url,
        events=", ".join(endpoint.events) or "all",
    )
    return await _endpoints(visit, new_secret=endpoint, status=201)


@change
async def rotate_secret(visit: Visit) -> Response:
    app = await visit.app()
    endpoint = await visit.run(
        visit.engine.endpoints.rotate_secret, visit.request.path_params["endpoint_id"], app.app_id
    )
    await visit.audit("endpoint.secret_rotated", app.app_id, endpoint_id=endpoint.endpoint_id)
    return await _endpoints(visit, new_secret=endpoint)


@change
async def remove_endpoint(visit: Visit) -> Response:
    app = await visit.app()
    endpoint = await visit.run(
        visit.engine.endpoints.delete, visit.request.path_params["endpoint_id"], app.app_id
    )
    await visit.audit(
        "endpoint.removed", app.app_id, endpoint_id=endpoint.endpoint_id, url=endpoint.url
    )
    return RedirectResponse(f"{PREFIX}/apps/{app.app_id}/endpoints", status_code=303)


@page
async def deliveries(visit: Visit) -> Response:
    app = await visit.app()
    endpoint = await visit.run(
        visit.engine.endpoints.get, visit.request.path_params["endpoint_id"], app.app_id
    )
    log = await visit.run(visit.engine.deliveries.log, endpoint.endpoint_id, LOG_LIMIT)
    return visit.render(
        "endpoint.html",
        app=app,
        tab="events",
        endpoint=endpoint,
        overlap_until=_overlap_until(endpoint),
        deliveries=log,
        limit=LOG_LIMIT,
        redelivered=visit.request.query_params.get("redelivered"),
    )


@change
async def redeliver(visit: Visit) -> Response:
    app = await visit.app()
    endpoint = await visit.run(
        visit.engine.endpoints.get, visit.request.path_params["endpoint_id"], app.app_id
    )
    event_id = visit.form.get("event_id", "")
    queued = await visit.run(visit.engine.deliveries.redeliver, event_id, app.app_id)
    await visit.audit("event.redelivered", app.app_id, event_id=event_id, deliveries=len(queued))
    shown = urlencode({"redelivered": event_id})
    return RedirectResponse(
        f"{PREFIX}/apps/{app.app_id}/endpoints/{endpoint.endpoint_id}?{shown}", status_code=303
    )


def _overlap_until(endpoint: Endpoint) -> datetime | None:
    """Until when the secret before the last rotation still signs, if it does."""
    expires = endpoint.previous_secret_expires_at
    return expires if expires is not None and expires > datetime.now(UTC) else None


async def _endpoints(
    visit: Visit,
    *,
    new_secret: Endpoint | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    app = await visit.app()
    listed = await visit.run(visit.engine.endpoints.of_app, app.app_id)
    # What was typed and checked comes back only with the error it caused.
    checked = {kind for kind in EVENT_TYPES if visit.form.get(_CHECKBOX + kind) == "true"}
    return visit.render(
        "endpoints.html",
        status,
        app=app,
        tab="events",
        endpoints=[(endpoint, _overlap_until(endpoint)) for endpoint in listed],
        event_types=EVENT_TYPES,
        checkbox=_CHECKBOX,
        new_secret=new_secret,
        error=error,
        url=visit.form.get("url", "") if error else "",
        checked=checked if error else set(),
    )
