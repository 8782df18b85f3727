"""`Tally` and `AsyncTally`: the same surface over a sync or an async transport.

Each method only picks its call from `endpoints.py` and hands it to the transport, so what
is sent, retried and returned is defined once for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

from . import endpoints
from .holds import HoldHandle, PendingHold
from .models import (
    AddResult,
    Balance,
    BatchOperation,
    BatchResult,
    CaptureResult,
    DeductResult,
    HistoryPage,
    Hold,
    HoldList,
    RefundResult,
    ReleaseResult,
    Transaction,
)
from .retry import RetryPolicy
from .transport import AsyncTransport, Core, SyncTransport
from .webhooks import verify_webhook

Operations = Sequence[BatchOperation | Mapping[str, Any]]


def _core(
    api_key: str | None,
    base_url: str | None,
    timeout: float | httpx.Timeout,
    max_retries: int,
    backoff: float,
    max_backoff: float,
) -> Core:
    policy = RetryPolicy(max_retries=max_retries, backoff=backoff, max_backoff=max_backoff)
    return Core(api_key, base_url, timeout, policy)


class Credits:
    """`tally.credits`: Tally's own endpoints under their own names."""

    def __init__(self, transport: SyncTransport) -> None:
        self._transport = transport

    def add(
        self,
        user_id: str,
        amount: int,
        *,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        expires_at: datetime | str | None = None,
    ) -> AddResult:
        """With `expires_at` (a `datetime` with its time zone, or an ISO 8601 string such as
        "2027-01-31T00:00:00Z"; in the future, at most 10 years away) the credits are a grant:
        what is left of them then expires. Grants are spent before credits that never
        expire, the soonest to expire first."""
        call = endpoints.add(
            user_id, amount, description, reference_id, metadata, idempotency_key, expires_at
        )
        return self._transport.execute(call)

    def deduct(
        self,
        user_id: str,
        amount: int,
        *,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeductResult:
        """`.success` is False when the user has too few credits (HTTP 402)."""
        call = endpoints.deduct(
            user_id, amount, description, reference_id, metadata, idempotency_key
        )
        return self._transport.execute(call)

    def refund(
        self, ledger_id: str, *, description: str | None = None, idempotency_key: str | None = None
    ) -> RefundResult:
        return self._transport.execute(endpoints.refund(ledger_id, description, idempotency_key))

    def batch(self, operations: Operations) -> BatchResult:
        return self._transport.execute(endpoints.batch(operations))

    def balance(self, user_id: str) -> Balance:
        return self._transport.execute(endpoints.balance(user_id))

    def history(self, user_id: str, limit: int = 50, offset: int = 0) -> HistoryPage:
        return self._transport.execute(endpoints.history(user_id, limit, offset))

    def hold(
        self,
        user_id: str,
        amount: int,
        *,
        ttl_seconds: int | None = None,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> HoldHandle:
        """Reserve `amount` credits for `ttl_seconds` (1 to 86400, default 300), then capture
        what the work cost or release them. Raises InsufficientBalance (402) when fewer are
        available. The answer is a context manager: a block left without a capture or a
        release releases the hold (see `tally_credits.holds`)."""
        call = endpoints.hold(
            user_id, amount, ttl_seconds, description, reference_id, metadata, idempotency_key
        )
        return HoldHandle(self._transport, self._transport.execute(call))

    def capture_hold(
        self,
        hold_id: str,
        amount: int | None = None,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> CaptureResult:
        """Spend `amount` of the hold (all of it when None) and release the rest. APIError 400
        when `amount` is more than the hold, 409 when it is already settled or expired, 404
        for an unknown hold."""
        call = endpoints.capture_hold(hold_id, amount, description, idempotency_key)
        return self._transport.execute(call)

    def release_hold(
        self, hold_id: str, *, description: str | None = None, idempotency_key: str | None = None
    ) -> ReleaseResult:
        """Give the whole hold back. APIError 409 when it is already settled or expired."""
        call = endpoints.release_hold(hold_id, description, idempotency_key)
        return self._transport.execute(call)

    def get_hold(self, hold_id: str) -> Hold:
        """Any hold, active or not."""
        return self._transport.execute(endpoints.get_hold(hold_id))

    def list_holds(self, user_id: str) -> HoldList:
        """The user's active holds, soonest expiry first."""
        return self._transport.execute(endpoints.list_holds(user_id))


class AsyncCredits:
    """`AsyncTally.credits`: as `Credits`, awaited."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def add(
        self,
        user_id: str,
        amount: int,
        *,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        expires_at: datetime | str | None = None,
    ) -> AddResult:
        call = endpoints.add(
            user_id, amount, description, reference_id, metadata, idempotency_key, expires_at
        )
        return await self._transport.execute(call)

    async def deduct(
        self,
        user_id: str,
        amount: int,
        *,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeductResult:
        """`.success` is False when the user has too few credits (HTTP 402)."""
        call = endpoints.deduct(
            user_id, amount, description, reference_id, metadata, idempotency_key
        )
        return await self._transport.execute(call)

    async def refund(
        self, ledger_id: str, *, description: str | None = None, idempotency_key: str | None = None
    ) -> RefundResult:
        call = endpoints.refund(ledger_id, description, idempotency_key)
        return await self._transport.execute(call)

    async def batch(self, operations: Operations) -> BatchResult:
        return await self._transport.execute(endpoints.batch(operations))

    async def balance(self, user_id: str) -> Balance:
        return await self._transport.execute(endpoints.balance(user_id))

    async def history(self, user_id: str, limit: int = 50, offset: int = 0) -> HistoryPage:
        return await self._transport.execute(endpoints.history(user_id, limit, offset))

    def hold(
        self,
        user_id: str,
        amount: int,
        *,
        ttl_seconds: int | None = None,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> PendingHold:
        """As `Credits.hold`; not a coroutine: `await` the answer for an `AsyncHoldHandle`, or
        `async with tally.credits.hold(...) as h:`, which makes the hold on entry."""
        call = endpoints.hold(
            user_id, amount, ttl_seconds, description, reference_id, metadata, idempotency_key
        )
        return PendingHold(self._transport, call)

    async def capture_hold(
        self,
        hold_id: str,
        amount: int | None = None,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> CaptureResult:
        call = endpoints.capture_hold(hold_id, amount, description, idempotency_key)
        return await self._transport.execute(call)

    async def release_hold(
        self, hold_id: str, *, description: str | None = None, idempotency_key: str | None = None
    ) -> ReleaseResult:
        call = endpoints.release_hold(hold_id, description, idempotency_key)
        return await self._transport.execute(call)

    async def get_hold(self, hold_id: str) -> Hold:
        return await self._transport.execute(endpoints.get_hold(hold_id))

    async def list_holds(self, user_id: str) -> HoldList:
        return await self._transport.execute(endpoints.list_holds(user_id))


class Tally:
    """A Tally client.

    `api_key` defaults to `$TALLY_API_KEY`, `base_url` to `$TALLY_URL` or
    http://127.0.0.1:8000. Calls that got no answer, a 429 or a 503 are retried up to
    `max_retries` times (exponential backoff with full jitter from `backoff` seconds, at most
    `max_backoff`, or the answer's Retry-After), always with the same idempotency key.
    `http_client` lets you bring your own `httpx.Client` (event hooks, proxies, a transport);
    it is then yours to close.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        core = _core(api_key, base_url, timeout, max_retries, backoff, max_backoff)
        self._transport = SyncTransport(core, http_client)
        self.credits = Credits(self._transport)
        # Holds, here as well as on `credits`: `with tally.hold(user_id, amount) as h:`.
        self.hold = self.credits.hold
        self.capture_hold = self.credits.capture_hold
        self.release_hold = self.credits.release_hold
        self.get_hold = self.credits.get_hold
        self.list_holds = self.credits.list_holds

    # Needs no client: `Tally.verify_webhook(body, headers, secret)` works on the class too.
    verify_webhook = staticmethod(verify_webhook)

    # reauth's credits API, by its names.

    def charge(
        self, user_id: str, *, amount: int, request_uuid: str | None = None, note: str | None = None
    ) -> int:
        """Deduct `amount`; returns the new balance. Raises InsufficientBalance on 402.
        `request_uuid` is the Idempotency-Key, `note` the description."""
        return self._transport.execute(endpoints.charge(user_id, amount, request_uuid, note))

    def deposit(
        self, user_id: str, *, amount: int, request_uuid: str | None = None, note: str | None = None
    ) -> int:
        """Add `amount`; returns the new balance."""
        return self._transport.execute(endpoints.deposit(user_id, amount, request_uuid, note))

    def get_balance(self, user_id: str) -> int:
        return self._transport.execute(endpoints.get_balance(user_id))

    def get_transactions(self, user_id: str, limit: int = 50, offset: int = 0) -> list[Transaction]:
        """Newest first, each with `id, amount_delta, reason, balance_after, created_at`."""
        return self._transport.execute(endpoints.get_transactions(user_id, limit, offset))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Tally:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return self._transport.core.describe(type(self).__name__)


class AsyncTally:
    """As `Tally`, for asyncio; `http_client` is an `httpx.AsyncClient`."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        core = _core(api_key, base_url, timeout, max_retries, backoff, max_backoff)
        self._transport = AsyncTransport(core, http_client)
        self.credits = AsyncCredits(self._transport)
        # Holds, here as well as on `credits`: `async with tally.hold(user_id, amount) as h:`.
        self.hold = self.credits.hold
        self.capture_hold = self.credits.capture_hold
        self.release_hold = self.credits.release_hold
        self.get_hold = self.credits.get_hold
        self.list_holds = self.credits.list_holds

    # Not a coroutine: verifying does no I/O.
    verify_webhook = staticmethod(verify_webhook)

    async def charge(
        self, user_id: str, *, amount: int, request_uuid: str | None = None, note: str | None = None
    ) -> int:
        return await self._transport.execute(endpoints.charge(user_id, amount, request_uuid, note))

    async def deposit(
        self, user_id: str, *, amount: int, request_uuid: str | None = None, note: str | None = None
    ) -> int:
        return await self._transport.execute(endpoints.deposit(user_id, amount, request_uuid, note))

    async def get_balance(self, user_id: str) -> int:
        return await self._transport.execute(endpoints.get_balance(user_id))

    async def get_transactions(
        self, user_id: str, limit: int = 50, offset: int = 0
    ) -> list[Transaction]:
        return await self._transport.execute(endpoints.get_transactions(user_id, limit, offset))

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncTally:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return self._transport.core.describe(type(self).__name__)
