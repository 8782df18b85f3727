"""One error family: each has a stable `code`; the API maps classes to HTTP in one place."""


class TallyError(Exception):
    code = "error"
    # Set when the error is the stored outcome of an earlier request with the same
    # idempotency key, answered again.
    replayed = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(TallyError):
    code = "invalid_request"


class PayloadTooLargeError(InvalidRequestError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(InvalidRequestError):
    code = "unsupported_media_type"


class AuthenticationError(TallyError):
    code = "unauthorized"


class ForbiddenError(TallyError):
    """Authenticated, but not allowed: a client token on a server route, a foreign origin."""

    code = "forbidden"


class ConflictError(TallyError):
    code = "conflict"


class PaymentDeclinedError(TallyError):
    """The payment provider refused the charge; `decline_code` is the provider's own."""

    code = "payment_declined"

    def __init__(self, message: str, decline_code: str, payment_intent_id: str | None) -> None:
        super().__init__(message)
        self.decline_code = decline_code
        self.payment_intent_id = payment_intent_id


class PaymentProviderError(TallyError):
    """The payment provider failed or refused the request for a reason other than the card."""

    code = "payment_provider_error"


class NotFoundError(TallyError):
    code = "not_found"


class AlreadyRefundedError(TallyError):
    code = "already_refunded"

    def __init__(self, ledger_id: str, refund_ledger_id: str) -> None:
        super().__init__(f"ledger entry {ledger_id} was already refunded by {refund_ledger_id}")
        self.refund_ledger_id = refund_ledger_id


class InsufficientCreditsError(TallyError):
    code = "insufficient_credits"

    def __init__(self, balance: int, floor: int, available: int | None = None) -> None:
        super().__init__("Insufficient credits")
        self.balance = balance
        self.floor = floor
        # balance - held: told when holds keep some of the balance (and always for a hold)
        self.available = available


class IdempotencyConflictError(TallyError):
    code = "idempotency_conflict"

    def __init__(self) -> None:
        super().__init__(
            "Idempotency-Key was already used with a different request; "
            "use a new key for a new request"
        )


class UnavailableError(TallyError):
    """A backing service (Redis or PostgreSQL) cannot be reached; the caller may retry."""

    code = "unavailable"

    def __init__(self, message: str, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service  # "redis", "postgresql", or None (another service, or unknown)


class SecretKeyError(TallyError):
    """TALLY_SECRET_KEY is missing, malformed, or not the key a stored secret was sealed with:
    the operator must fix the configuration; no retry helps."""

    code = "secret_key"


class SettingsError(InvalidRequestError):
    """App settings that break their rules: `problems` maps each setting to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(problems.values()))
        self.problems = problems


class TooManyRequestsError(TallyError):
    """Too many attempts in a window (sign-in failures); `retry_after` seconds until the next."""

    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(TooManyRequestsError):
    """Over an API key's or an end user's rate limit: `limit` is the burst, `reset` the seconds
    until all of it is back (the RateLimit-* headers)."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, limit: int, reset: int) -> None:
        super().__init__(message, retry_after)
        self.limit = limit
        self.reset = reset


class PlanLimitError(TallyError):
    """The app used what its plan allows (`tally apps update --plan-...`); reads still work."""

    code = "plan_limit"

    def __init__(self, limit: str, used: int, allowed: int, refused: frozenset[str] = frozenset()):
        super().__init__("Plan limit reached")
        self.limit = limit  # "monthly_operations" or "max_users"
        self.used = used
        self.allowed = allowed
        # The users a batch could not create (limit "max_users").
        self.refused = refused
