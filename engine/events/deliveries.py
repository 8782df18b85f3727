"""Sending events: at least once, retried with exponential back-off for up to a day.

The worker's sweeper claims deliveries that are due (a claim lapses, so a worker that dies
mid-send leaves its delivery to another) and queues one RQ job per delivery on the events
queue, whose workers never hold up the ledger's flushes.
"""

import logging
import random
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from engine.errors import NotFoundError
from engine.events.repository import Delivery, EventRepository, Outgoing
from engine.events.signing import signature

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
_CLAIM_BATCH = 200
_RESPONSE_BYTES = 1_000


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect is the receiver's answer, not a place to send the event (and its signature).
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


class Deliveries:
    def __init__(self, repository: EventRepository, retry_base_seconds: float) -> None:
        self._repository = repository
        self._retry_base = retry_base_seconds

    def claim_due(self) -> list[tuple[int, str]]:
        return self._repository.claim_due(_CLAIM_BATCH)

    def deliver(self, delivery_id: int, claim: str) -> str:
        """One attempt: "delivered", "failed" (retried later), "gave_up", or "skipped" (not
        pending, not due, or claimed since by another job)."""
        outgoing = self._repository.outgoing(delivery_id, claim)
        if outgoing is None:
            return "skipped"
        code, error = _send(outgoing)
        if code is not None and 200 <= code < 300:
            self._repository.delivered(delivery_id, code)
            return "delivered"
        retry_at = self._retry_at(outgoing)
        self._repository.attempt_failed(delivery_id, code, error, retry_at)
        if retry_at is None:
            log.warning("event %s: giving up on %s: %s", outgoing.event_id, outgoing.url, error)
            return "gave_up"
        return "failed"

    def _retry_at(self, outgoing: Outgoing) -> datetime | None:
        """When to try again after attempt number attempts + 1 failed: the base, doubling each
        time, a quarter of jitter so that a receiver back from an outage is not hit all at once;
        None past the delivery's day (from the event, or from its redelivery)."""
        delay = self._retry_base * 2**outgoing.attempts * random.uniform(1.0, 1.25)
        retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        return None if retry_at > outgoing.give_up_at else retry_at

    def redeliver(self, event_id: str, app_id: str | None = None) -> list[int]:
        """Send an event again to each endpoint it was for, delivered or failed."""
        owner = self._repository.event_app(event_id)
        if owner is None or (app_id is not None and owner != app_id):
            raise NotFoundError(f"no event {event_id}")
        return self._repository.redeliver(event_id)

    def log(self, endpoint_id: str, limit: int = 100) -> list[Delivery]:
        return self._repository.deliveries(endpoint_id=endpoint_id, limit=limit)

    def of_event(self, event_id: str) -> list[Delivery]:
        return self._repository.deliveries(event_id=event_id)


def _send(outgoing: Outgoing) -> tuple[int | None, str]:
    """POST the event; (status code or None, what went wrong)."""
    timestamp = int(time.time())
    request = urllib.request.Request(
        outgoing.url,
        data=outgoing.body,
        method="POST",
        headers={
            "content-type": "application/json",
            "user-agent": "Tally-Webhooks/1",
            "webhook-id": outgoing.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(
                outgoing.secrets, outgoing.event_id, timestamp, outgoing.body
            ),
        },
    )
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            response.read(_RESPONSE_BYTES)
            return response.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except Exception as exc:
        # Whatever the receiver did (no HTTP at all, a malformed answer, too slow for the job's
        # time limit) is one failed attempt, recorded and retried like any other.
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"[:1000]
