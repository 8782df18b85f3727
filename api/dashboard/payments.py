"""An app's Webhooks tab: payment events received, why each ended as it did, and Retry."""

from starlette.responses import PlainTextResponse, RedirectResponse, Response

from api.dashboard.access import PREFIX, Visit, change, page
from engine.errors import NotFoundError
from engine.payments.repository import WebhookEvent
from workers.queue import Jobs

STATUSES = ("pending", "credited", "taken_back", "duplicate", "ignored", "failed")
LIMIT = 200


@page
async def events(visit: Visit) -> Response:
    app = await visit.app()
    status = visit.request.query_params.get("status") or None
    if status not in (None, *STATUSES):
        status = None
    listed = await visit.run(visit.engine.webhooks.list_events, app.app_id, status, LIMIT)
    return visit.render(
        "webhooks.html",
        app=app,
        tab="webhooks",
        events=listed,
        status=status,
        statuses=STATUSES,
        limit=LIMIT,
    )


@page
async def payload(visit: Visit) -> Response:
    event = await _event(visit)
    raw = await visit.run(visit.engine.webhooks.payload, event.event_pk)
    # Plain text, never HTML: the body is whatever the sender put in it.
    return PlainTextResponse(raw.decode("utf-8", "replace"))


@change
async def retry(visit: Visit) -> Response:
    event = await _event(visit)
    await visit.run(visit.engine.webhooks.reopen, event.event_pk)
    await visit.run(Jobs(visit.engine.raw_redis).apply_webhook_event, event.event_pk)
    await visit.audit("webhook.retried", event.app_id, event_id=event.event_pk)
    return RedirectResponse(f"{PREFIX}/apps/{event.app_id}/webhooks", status_code=303)


async def _event(visit: Visit) -> WebhookEvent:
    """The event in the path, if it is the app's: another app's is as missing as none."""
    app_id = visit.request.path_params["app_id"]
    event_pk = visit.request.path_params["event_pk"]
    event = await visit.run(visit.engine.webhooks.get, event_pk)
    if event is None or event.app_id != app_id:
        raise NotFoundError(f"no webhook event {event_pk} in app {app_id}")
    return event
