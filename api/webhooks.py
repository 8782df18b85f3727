"""POST /webhooks/{provider}/{app_id}: payment providers' events, answered at once."""

import logging

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.schemas import read_body
from api.state import engine_of, jobs_of
from api.views import WebhookReceipt
from engine.payments.defaults import MAX_WEBHOOK_BYTES

log = logging.getLogger(__name__)


async def receive(request: Request) -> Response:
    engine = engine_of(request)
    provider, app_id = request.path_params["provider"], request.path_params["app_id"]
    body = await read_body(request, MAX_WEBHOOK_BYTES)
    event, new = await engine.bridge.call(
        engine.webhooks.receive, provider, app_id, dict(request.headers), body
    )
    if new and event.status == "pending":
        try:
            await engine.bridge.call(jobs_of(request).apply_webhook_event, event.event_pk)
        except RedisError as exc:
            # Stored already: the worker's next sweep queues it instead.
            log.warning("webhook event %s not queued (%s); the sweep will", event.event_pk, exc)
            await engine.bridge.call(engine.webhooks.release, event.event_pk)
    receipt: WebhookReceipt = {
        "success": True,
        "event_id": event.event_id,
        "status": event.status if new else "duplicate",
        "reason": event.reason if new else f"event already received ({event.status})",
    }
    return JSONResponse(receipt)
