"""The errors the SDK raises: one family under `TallyError`, chosen by HTTP status.

No error holds the API key or a request's headers: what they carry is the status, the API's
own message and the request id that Tally's logs are keyed by.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TallyError(Exception):
    """Any failure of a call to Tally.

    `status` is the HTTP status (None when no answer came), `error` the API's message and
    `request_id` the `X-Request-Id` Tally answered with (None when no answer came), to quote
    when you look in Tally's logs. `body` is the whole JSON error body, for extra fields such as
    `refund_ledger_id` on a 409.
    """

    def __init__(
        self,
        error: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.request_id = request_id
        self.body: Mapping[str, Any] = dict(body) if body else {}

    def __str__(self) -> str:
        where = [f"HTTP {self.status}" if self.status is not None else "no response"]
        if self.request_id:
            where.append(f"request id {self.request_id}")
        return f"{self.error} ({', '.join(where)})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(error={self.error!r}, status={self.status!r}, "
            f"request_id={self.request_id!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable despite the keyword-only arguments (multiprocessing, task queues).
        return (type(self), (self.error,), self.__dict__)


class APIError(TallyError):
    """An error status with no class of its own: 400, 403, 404, 409, 413, 415, 500, 502...
    (409: a refund already made, a hold already settled or expired)."""


class AuthenticationError(TallyError):
    """401: the API key is missing, malformed, unknown or revoked."""


class InsufficientBalance(TallyError):
    """402: not enough credits. `balance` is what the user has, `available` that less what
    active holds reserve; with overdraft on, `floor` is how far the balance may go. Nothing
    was written."""

    @property
    def balance(self) -> int | None:
        value = self.body.get("balance")
        return value if isinstance(value, int) else None

    @property
    def available(self) -> int | None:
        value = self.body.get("available")
        return value if isinstance(value, int) else None

    @property
    def floor(self) -> int | None:
        value = self.body.get("floor")
        return value if isinstance(value, int) else None


class IdempotencyConflict(TallyError):
    """422: the Idempotency-Key was used before with a different request."""


class RateLimited(TallyError):
    """429, after the retries ran out."""


class ServiceUnavailable(TallyError):
    """503 (Redis or PostgreSQL unreachable), or no answer at all (`status` None), after the
    retries ran out. The outcome of a write is unknown: retry it with the same idempotency key
    and it applies at most once."""


class WebhookVerificationError(TallyError):
    """A webhook that did not verify (`verify_webhook`): a missing or malformed header, a
    timestamp outside the tolerance, no matching signature, a malformed secret or a body that
    is not a Tally event. No call was made, so `status` and `request_id` are None; answer the
    sender 400 and do not act on the body."""

    def __str__(self) -> str:
        return self.error


_BY_STATUS: dict[int, type[TallyError]] = {
    401: AuthenticationError,
    402: InsufficientBalance,
    422: IdempotencyConflict,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for_status(status: int) -> type[TallyError]:
    """The class raised for an answer with this status."""
    return _BY_STATUS.get(status, APIError)
