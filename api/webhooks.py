"""POST /webhooks/{provider}/{app_id}: payment providers' events, answered at once."""

import asyncio
import logging

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from api.responses import JSONResponse
from api.schemas import read_body
from api.services import services
from workers.runner import enqueue_webhook

log = logging.getLogger(__name__)

# Provider events can be larger than API calls; anything past this is not a payment event.
MAX_WEBHOOK_BYTES = 1_048_576


async def receive(request: Request) -> Response:
    svc = services(request)
    provider, app_id = request.path_params["provider"], request.path_params["app_id"]
    body = await read_body(request, MAX_WEBHOOK_BYTES)
    event, new = await asyncio.to_thread(
        svc.webhooks.receive, provider, app_id, dict(request.headers), body
    )
    if new and event.status == "pending":
        try:
            await asyncio.to_thread(enqueue_webhook, svc.queue, event.event_pk)
        except RedisError as exc:
            # Stored already: the worker's next sweep queues it instead.
            log.warning("webhook event %s not queued (%s); the sweep will", event.event_pk, exc)
            await asyncio.to_thread(svc.webhooks.release, event.event_pk)
    return JSONResponse(
        {
            "success": True,
            "event_id": event.event_id,
            "status": event.status if new else "duplicate",
            "reason": event.reason if new else f"event already received ({event.status})",
        }
    )
