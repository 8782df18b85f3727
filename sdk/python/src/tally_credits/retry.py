"""When to try a request again and how long to wait first, for both clients.

The policy is written once, without I/O, as a generator (`RetryPolicy.attempts`): it yields
the request to send or the seconds to sleep, and is sent back what happened. The sync
transport drives it with `httpx.Client.send` and `time.sleep`, the async one with
`httpx.AsyncClient.send` and `asyncio.sleep`. Every attempt sends the very same request, so
the Idempotency-Key (and a batch's per-operation keys) never change between attempts.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Generator
from dataclasses import dataclass

import httpx

from .errors import ServiceUnavailable

log = logging.getLogger("tally_credits")

# Answers worth another attempt: Tally says try again (503 comes with Retry-After: 1).
RETRY_STATUSES = frozenset({429, 503})

# What an attempt came to: an answer, a transport failure, or (after a sleep) nothing.
Outcome = httpx.Response | httpx.TransportError | None
# What to do next: send this request, or sleep this many seconds.
Step = httpx.Request | float


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_retries` retries after the first attempt, on connection errors and
    timeouts (any `httpx.TransportError`), 429 and 503. The wait before retry n (0-based) is
    `Retry-After` when the answer has one (at most `max_retry_after`), otherwise uniformly
    random between 0 and min(`max_backoff`, `backoff` * 2**n): exponential backoff with full
    jitter."""

    max_retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("backoff times must be 0 or more")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return float(min(retry_after, self.max_retry_after))
        ceiling = min(self.max_backoff, self.backoff * 2.0**retry)
        return float(random.uniform(0.0, ceiling))

    def attempts(self, request: httpx.Request) -> Generator[Step, Outcome, httpx.Response]:
        """Yields `request` for each attempt and a float for each wait; returns the answer to
        keep. Raises ServiceUnavailable when no answer came on the last attempt."""
        retry = 0
        while True:
            outcome = yield request
            if isinstance(outcome, httpx.Response):
                if outcome.status_code not in RETRY_STATUSES or retry >= self.max_retries:
                    return outcome
                wait = self.delay(retry, parse_retry_after(outcome.headers.get("Retry-After")))
                rid = outcome.headers.get("X-Request-Id")
                reason = f"HTTP {outcome.status_code} (request id {rid})"
            elif isinstance(outcome, httpx.TransportError):
                # A URL httpx cannot send to is a mistake in the settings, not a network blip.
                if retry >= self.max_retries or isinstance(outcome, httpx.UnsupportedProtocol):
                    raise ServiceUnavailable(
                        f"could not reach Tally after {retry + 1} attempt(s): {describe(outcome)}"
                    ) from outcome
                wait = self.delay(retry)
                reason = describe(outcome)
            else:  # pragma: no cover - a driver bug
                raise TypeError(f"unexpected outcome {outcome!r}")
            retry += 1
            # The method and path only: no headers (the key), no query (user ids).
            log.warning(
                "tally: %s %s: %s; retry %d of %d in %.2fs",
                request.method,
                request.url.path,
                reason,
                retry,
                self.max_retries,
                wait,
            )
            yield wait


def describe(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (`1`) or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
