"""Python client for Tally, the self-hosted credits engine.

from tally_credits import Tally, verify_webhook

with Tally(api_key="tally_...", base_url="http://127.0.0.1:8000") as tally:
    tally.credits.add("user_001", 100, description="Welcome credits")
    result = tally.credits.deduct("user_001", 10, description="AI generation")
    with tally.hold("user_001", 50, description="AI generation") as h:
        h.capture(12)  # the other 38 are released

event = verify_webhook(raw_body, request_headers, secret="whsec_...")  # Tally's webhooks
"""

from .client import AsyncCredits, AsyncTally, Credits, Tally
from .errors import (
    APIError,
    AuthenticationError,
    IdempotencyConflict,
    InsufficientBalance,
    RateLimited,
    ServiceUnavailable,
    TallyError,
    WebhookVerificationError,
)
from .holds import AsyncHoldHandle, HoldHandle, PendingHold
from .models import (
    AddResult,
    Balance,
    BatchItem,
    BatchOperation,
    BatchResult,
    CaptureResult,
    DeductResult,
    Grant,
    GrantPart,
    HistoryEntry,
    HistoryPage,
    Hold,
    HoldCreated,
    HoldList,
    RefundResult,
    ReleaseResult,
    Transaction,
)
from .retry import RetryPolicy
from .version import __version__
from .webhooks import WebhookEvent, verify_webhook

__all__ = [
    "APIError",
    "AddResult",
    "AsyncCredits",
    "AsyncHoldHandle",
    "AsyncTally",
    "AuthenticationError",
    "Balance",
    "BatchItem",
    "BatchOperation",
    "BatchResult",
    "CaptureResult",
    "Credits",
    "DeductResult",
    "Grant",
    "GrantPart",
    "HistoryEntry",
    "HistoryPage",
    "Hold",
    "HoldCreated",
    "HoldHandle",
    "HoldList",
    "IdempotencyConflict",
    "InsufficientBalance",
    "PendingHold",
    "RateLimited",
    "RefundResult",
    "ReleaseResult",
    "RetryPolicy",
    "ServiceUnavailable",
    "Tally",
    "TallyError",
    "Transaction",
    "WebhookEvent",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
