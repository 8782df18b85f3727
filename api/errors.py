"""The one place engine errors become HTTP responses."""

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api.rate_limits import rate_limit_headers
from api.responses import JSONResponse
from api.views import ErrorBody
from engine.errors import (
    AlreadyRefundedError,
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PaymentDeclinedError,
    PaymentProviderError,
    PlanLimitError,
    RateLimitedError,
    SecretKeyError,
    TallyError,
    TooManyRequestsError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger(__name__)

STATUS: dict[type[TallyError], int] = {
    InvalidRequestError: 400,
    AuthenticationError: 401,
    InsufficientCreditsError: 402,
    PaymentDeclinedError: 402,
    PlanLimitError: 402,
    ForbiddenError: 403,
    NotFoundError: 404,
    AlreadyRefundedError: 409,
    ConflictError: 409,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    IdempotencyConflictError: 422,
    TooManyRequestsError: 429,
    PaymentProviderError: 502,
    UnavailableError: 503,
    SecretKeyError: 500,  # the server's configuration, which only its operator can fix
}


def status_of(exc: TallyError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(exc: TallyError) -> ErrorBody:
    body: ErrorBody = {"success": False, "error": exc.message}
    if isinstance(exc, InsufficientCreditsError):
        body["balance"] = exc.balance
        if exc.available is not None:
            body["available"] = exc.available
        if exc.floor:
            # With overdraft the user may go below zero: say how far.
            body["floor"] = exc.floor
    elif isinstance(exc, PaymentDeclinedError):
        body["decline_code"] = exc.decline_code
        body["payment_intent_id"] = exc.payment_intent_id
    elif isinstance(exc, AlreadyRefundedError):
        body["refund_ledger_id"] = exc.refund_ledger_id
    elif isinstance(exc, PlanLimitError):
        body["limit"] = exc.limit
        body["used"] = exc.used
        body["allowed"] = exc.allowed
    return body


async def tally_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TallyError)
    log_unavailable(exc, request.method, request.url.path)
    return error_response(exc)


def log_unavailable(exc: TallyError, method: str, path: str) -> None:
    """The failures an operator must hear of: a dependency away, a misconfigured key."""
    if isinstance(exc, UnavailableError | SecretKeyError):
        log.warning("%s %s: %s", method, path, exc.message)


def error_response(exc: TallyError) -> Response:
    status = status_of(exc)
    body = error_body(exc)
    headers = {}
    if isinstance(exc, UnavailableError):
        headers["Retry-After"] = "1"
    elif isinstance(exc, TooManyRequestsError):
        headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, RateLimitedError):
            headers |= rate_limit_headers(exc.limit, 0, exc.reset)
    elif isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    if exc.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(body, status_code=status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"success": False, "error": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"success": False, "error": "Internal server error"}, status_code=500)


HANDLERS = {TallyError: tally_error, HTTPException: http_error, Exception: unexpected_error}
