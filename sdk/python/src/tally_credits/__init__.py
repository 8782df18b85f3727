"""Python client for Tally, the self-hosted credits engine.

from tally_credits import Tally

with Tally(api_key="tally_...", base_url="http://127.0.0.1:8000") as tally:
    tally.credits.add("user_001", 100, description="Welcome credits")
    result = tally.credits.deduct("user_001", 10, description="AI generation")
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
)
from .models import (
    AddResult,
    Balance,
    BatchItem,
    BatchOperation,
    BatchResult,
    DeductResult,
    HistoryEntry,
    HistoryPage,
    RefundResult,
    Transaction,
)
from .retry import RetryPolicy
from .version import __version__

__all__ = [
    "APIError",
    "AddResult",
    "AsyncCredits",
    "AsyncTally",
    "AuthenticationError",
    "Balance",
    "BatchItem",
    "BatchOperation",
    "BatchResult",
    "Credits",
    "DeductResult",
    "HistoryEntry",
    "HistoryPage",
    "IdempotencyConflict",
    "InsufficientBalance",
    "RateLimited",
    "RefundResult",
    "RetryPolicy",
    "ServiceUnavailable",
    "Tally",
    "TallyError",
    "Transaction",
    "__version__",
]
