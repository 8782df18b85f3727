"""`Tally` and `AsyncTally`: the same surface over a sync or an async transport.

Each method only picks its call from `endpoints.py` and hands it to the transport, so what
is sent, retried and returned is defined once for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from . import endpoints
from .models import (
    AddResult,
    Balance,
    BatchOperation,
    BatchResult,
    DeductResult,
    HistoryPage,
    RefundResult,
    Transaction,
)
from .retry import RetryPolicy
from .transport import AsyncTransport, Core, SyncTransport

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
    ) -> AddResult:
        call = endpoints.add(user_id, amount, description, reference_id, metadata, idempotency_key)
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
    ) -> AddResult:
        call = endpoints.add(user_id, amount, description, reference_id, metadata, idempotency_key)
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
